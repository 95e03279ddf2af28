"""The workspace inbox: the internal topic that carries, per partition and in order, accepted
usage events and commands to the worker that owns their workspaces.

Messages are compact JSON:

- ``{"kind": "rows", "origins": [...], "rows": [...]}``: accepted usage events of any number of
  workspaces whose partition this is, packed many to a record so the framework's per-message
  cost is paid once per record, not once per event. Each row is
  ``[workspace_id, event_id, metric, quantity, occurred_at, conversation_id, origin]`` where
  ``origin`` indexes ``origins``: ``[topic, partition, offset, key, received_ms]``, the message
  that carried the event (for dead letters and the event's "now"). A key is stored once per
  record, cut to what a dead letter keeps, never copied into every row.
- ``{"kind": "command", "received_ms": ..., "command": {...}}``, keyed by workspace.
- ``{"kind": "usage", "events": [...]}``, keyed by workspace: one workspace's events, the
  format of earlier versions, still read so that records in flight at an upgrade are counted.

A record holds at most ``EVENTS_PER_MESSAGE`` rows and about ``MAX_RECORD_BYTES``, well below the
broker's 1 MB default. An event's *position* is ``offset * POSITION_STRIDE + row index``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from ...models.outputs import MAX_DEAD_LETTER_BYTES

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
        self._records.append(orjson.dumps({"kind": ROWS, "origins": self._origins, "rows": self._rows}))
        self._origins, self._rows, self._bytes, self._origin_index = [], [], 0, -1

    def records(self) -> list[bytes]:
        if self._rows:
            self._seal()
        records, self._records = self._records, []
        return records

    def __len__(self) -> int:
        return len(self._rows) + len(self._records) * EVENTS_PER_MESSAGE


def legacy_rows(document: dict[str, Any], workspace_id: str) -> tuple[list[list[Any]], list[list[Any]]]:
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


def command_message(received_ms: int, command: dict[str, Any]) -> bytes:
    return orjson.dumps({"kind": COMMAND, "received_ms": received_ms, "command": command})
