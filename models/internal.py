"""Internal message formats, declared once: the workspace inbox, the internal commands it
carries, and the contract inbox. Each format has a ``TypedDict`` naming its keys, the builder
that writes it and, where one is needed, the reader.

The workspace inbox is the internal topic that carries, per partition and in order, accepted
usage events and commands to the worker that owns their workspaces. Its messages are compact JSON:

- ``{"kind": "rows", "origins": [...], "rows": [...]}``: accepted usage events of any number of
  workspaces whose partition this is, packed many to a record so the framework's per-message
  cost is paid once per record, not once per event. Each row is
  ``[workspace_id, event_id, metric, quantity, occurred_at, conversation_id, origin]`` where
  ``origin`` indexes ``origins``: ``[topic, partition, offset, key, received_ms]``, the message
  that carried the event (for dead letters and the event's "now"). A key is stored once per
  record, cut to what a dead letter keeps, never copied into every row.
- ``{"kind": "command", "received_ms": ..., "command": {...}}``, keyed by workspace: a
  ``usage.control`` command as validated (``models/commands.py``), or an internal one (a
  contract's terms or its leaving, the others' usage of a contract, a period tick).
- ``{"kind": "usage", "events": [...]}``, keyed by workspace: one workspace's events, the
  format of earlier versions, still read so that records in flight at an upgrade are counted.

A record holds at most ``EVENTS_PER_MESSAGE`` rows and about ``MAX_RECORD_BYTES``, well below the
broker's 1 MB default. An event's *position* is ``offset * POSITION_STRIDE + row index``.

The contract inbox carries, keyed by contract, the ``usage.control`` commands about a contract
(``subscription``, ``contract_alert_settings``), each member's usage reports and billing contacts
to the partition that owns the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict

import orjson

from ..core.contract_usage import WorkspaceReport
from ..core.periods import BillingPeriod
from .outputs import MAX_DEAD_LETTER_BYTES

ROWS = "rows"
USAGE = "usage"
COMMAND = "command"
# Positions number events inside an inbox message; a message holds fewer than this.
EVENTS_PER_MESSAGE = 1000
POSITION_STRIDE = 1024
MAX_RECORD_BYTES = 512 * 1024
# A row's JSON beyond the lengths of its strings: brackets, quotes, commas, numbers, timestamp.
_ROW_OVERHEAD = 96
_ORIGIN_OVERHEAD = 64

# Row fields, by index.
WORKSPACE, EVENT_ID, METRIC, QUANTITY, OCCURRED_AT, CONVERSATION, ORIGIN = range(7)
# Origin fields, by index.
O_TOPIC, O_PARTITION, O_OFFSET, O_KEY, O_RECEIVED_MS = range(5)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an event was first published, for dead-letter records."""

    topic: str
    partition: int
    offset: int
    key: bytes | None


def origin_key_text(key: bytes | None) -> str | None:
    """The key as carried in the inbox: text, at most what a dead letter keeps of it."""
    if key is None:
        return None
    return key[:MAX_DEAD_LETTER_BYTES].decode("utf-8", "replace")


class RowPacker:
    """Accepted events for one inbox partition, packed into records bounded by rows and bytes.

    ``add_origin`` once per source message, then ``add_row`` per accepted event of it; ``records``
    returns the encoded records in the order rows were added.
    """

    __slots__ = ("_records", "_origins", "_rows", "_bytes", "_origin_index", "_origin_row", "_origin_size")

    def __init__(self) -> None:
        self._records: list[bytes] = []
        self._origins: list[list[Any]] = []
        self._rows: list[list[Any]] = []
        self._bytes = 0
        self._origin_index = -1  # index of the current origin in this record, -1 if not in it yet
        self._origin_row: list[Any] | None = None
        self._origin_size = 0

    def add_origin(self, topic: str, partition: int, offset: int, key: bytes | None, received_ms: int) -> None:
        key_text = origin_key_text(key)
        self._origin_row = [topic, partition, offset, key_text, received_ms]
        self._origin_size = len(topic) + (len(key_text) * 6 if key_text else 0) + _ORIGIN_OVERHEAD
        self._origin_index = -1

    def add_row(
        self,
        workspace_id: str,
        event_id: str,
        metric: str,
        quantity: int,
        occurred_at: str,
        conversation_id: str | None,
    ) -> None:
        assert self._origin_row is not None, "add_origin() comes first"
        # Identifiers hold no control characters, so a character is at most 4 bytes of JSON.
        size = (len(workspace_id) + len(event_id) + (len(conversation_id) if conversation_id else 0)) * 4
        size += _ROW_OVERHEAD
        extra = size + (self._origin_size if self._origin_index < 0 else 0)
        if self._rows and (len(self._rows) >= EVENTS_PER_MESSAGE or self._bytes + extra > MAX_RECORD_BYTES):
            self._seal()
            extra = size + self._origin_size
        if self._origin_index < 0:
            self._origins.append(self._origin_row)
            self._origin_index = len(self._origins) - 1
        self._rows.append([workspace_id, event_id, metric, quantity, occurred_at, conversation_id, self._origin_index])
        self._bytes += extra

    def _seal(self) -> None:
        record: RowsRecord = {"kind": ROWS, "origins": self._origins, "rows": self._rows}
        self._records.append(orjson.dumps(record))
        self._origins, self._rows, self._bytes, self._origin_index = [], [], 0, -1

    def records(self) -> list[bytes]:
        if self._rows:
            self._seal()
        records, self._records = self._records, []
        return records

    def __len__(self) -> int:
        return len(self._rows) + len(self._records) * EVENTS_PER_MESSAGE


def legacy_rows(document: LegacyUsageRecord, workspace_id: str) -> tuple[list[list[Any]], list[list[Any]]]:
    """A ``usage`` record of earlier versions as (rows, origins) of the packed format."""
    rows: list[list[Any]] = []
    origins: list[list[Any]] = []
    for row in document["events"]:
        origins.append([row[5], row[6], row[7], row[8], row[9]])
        rows.append([workspace_id, row[0], row[1], row[2], row[3], row[4], len(origins) - 1])
    return rows, origins


def row_as_json(row: list[Any]) -> bytes:
    """One row as the usage event it was (for its dead letter)."""
    return orjson.dumps(
        {
            "event_id": row[EVENT_ID],
            "workspace_id": row[WORKSPACE],
            "metric": row[METRIC],
            "quantity": row[QUANTITY],
            "occurred_at": row[OCCURRED_AT],
            "conversation_id": row[CONVERSATION],
        }
    )


def origin_of(origin: list[Any]) -> Origin:
    key = origin[O_KEY]
    return Origin(origin[O_TOPIC], origin[O_PARTITION], origin[O_OFFSET], key.encode() if key is not None else None)


def received_at(origin: list[Any]) -> datetime:
    return datetime.fromtimestamp(origin[O_RECEIVED_MS] / 1000, tz=UTC)


def command_message(received_ms: int, command: Any) -> bytes:
    """A ``command`` record: ``command`` is a ``usage.control`` command or an internal one."""
    record: CommandRecord = {"kind": COMMAND, "received_ms": received_ms, "command": command}
    return orjson.dumps(record)


class RowsRecord(TypedDict):
    kind: Literal["rows"]
    origins: list[list[Any]]  # [topic, partition, offset, key, received_ms] (O_* indexes)
    rows: list[list[Any]]  # [workspace_id, event_id, metric, quantity, occurred_at, conversation_id, origin]


class CommandRecord(TypedDict):
    kind: Literal["command"]
    received_ms: int
    command: dict[str, Any]


class LegacyUsageRecord(TypedDict):
    kind: Literal["usage"]
    events: list[list[Any]]


InboxRecord = RowsRecord | CommandRecord | LegacyUsageRecord


# ---------------------------------------------------------------------------------------------
# Internal commands, carried to a workspace by a ``command`` record (their ``type`` is none of
# ``usage.control``'s).

# "A billing period may have begun": sent by the period timer.
PERIOD_TICK = "period_tick"
# Sent by the contract's owner to each workspace that joins or leaves; the subscription itself
# is answered there, once.
CONTRACT_TERMS = "contract_terms"
CONTRACT_LEFT = "contract_left"
# Sent to each member when the contract's sums change: what the others have used.
CONTRACT_OTHERS = "contract_others"


class ContractLeft(TypedDict):
    type: Literal["contract_left"]
    contract_id: str
    command_id: str


class ContractOthersCommand(TypedDict):
    type: Literal["contract_others"]
    contract_id: str
    period: list[str]  # [start, end], isoformat
    usage: dict[str, int]  # metric -> the other members' usage


def period_tick(received_ms: int) -> bytes:
    return command_message(received_ms, {"type": PERIOD_TICK})


def contract_terms_command(subscription: dict[str, Any]) -> dict[str, Any]:
    """A subscription's terms, as each joining workspace receives them."""
    return {**subscription, "type": CONTRACT_TERMS}


def contract_left_command(contract_id: str, command_id: str) -> ContractLeft:
    return {"type": CONTRACT_LEFT, "contract_id": contract_id, "command_id": command_id}


def contract_others_command(contract_id: str, period: BillingPeriod, usage: dict[str, int]) -> ContractOthersCommand:
    return {
        "type": CONTRACT_OTHERS,
        "contract_id": contract_id,
        "period": [period.start.isoformat(), period.end.isoformat()],
        "usage": usage,
    }


# ---------------------------------------------------------------------------------------------
# The contract inbox

# A command about a contract travels as a message whose kind is the command's type.
SUBSCRIPTION = "subscription"
CONTRACT_ALERT_SETTINGS = "contract_alert_settings"
REPORT = "report"
CONTACTS = "contacts"


class SubscriptionMessage(TypedDict):
    kind: Literal["subscription"]
    command: dict[str, Any]  # the validated ``subscription`` command


class ContractAlertSettingsMessage(TypedDict):
    kind: Literal["contract_alert_settings"]
    command: dict[str, Any]  # the validated ``contract_alert_settings`` command


class ReportMessage(TypedDict):
    kind: Literal["report"]
    workspace_id: str
    metric: str
    period_start: str
    period_end: str
    usage: int
    position: int


class ContactsMessage(TypedDict):
    kind: Literal["contacts"]
    workspace_id: str
    emails: list[str]


ContractMessage = SubscriptionMessage | ContractAlertSettingsMessage | ReportMessage | ContactsMessage


def contacts_message(workspace_id: str, emails: tuple[str, ...]) -> bytes:
    message: ContactsMessage = {"kind": CONTACTS, "workspace_id": workspace_id, "emails": list(emails)}
    return orjson.dumps(message)


def contract_command_message(command: dict[str, Any]) -> bytes:
    """A validated command about a contract (``subscription``, ``contract_alert_settings``)."""
    return orjson.dumps({"kind": command["type"], "command": command})


def report_message(report: WorkspaceReport) -> bytes:
    message: ReportMessage = {
        "kind": REPORT,
        "workspace_id": report.workspace_id,
        "metric": report.metric,
        "period_start": report.period.start.isoformat(),
        "period_end": report.period.end.isoformat(),
        "usage": report.usage,
        "position": report.position,
    }
    return orjson.dumps(message)


def read_report(message: ReportMessage) -> WorkspaceReport:
    return WorkspaceReport(
        workspace_id=message["workspace_id"],
        metric=message["metric"],
        period=BillingPeriod(
            datetime.fromisoformat(message["period_start"]), datetime.fromisoformat(message["period_end"])
        ),
        usage=message["usage"],
        position=message["position"],
    )
