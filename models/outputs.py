"""What meterwatch publishes (CONTRACT section 5): each record built here, as a plain dict for
orjson, and ``RecordedOutputs``, the one interface through which a step publishes them.

A step never sends anything itself: it records its outputs, in order, with one method per kind
(alert, Fin transition, notification, dead letter, command result, mail request, and the two
internal messages). The stage then hands the recording to its sinks (``sinks/outputs.py``); the
unit tests of the steps read it.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterator
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

import orjson

from ..core.alerts import FORECAST_SCOPE, WORKSPACE_SCOPE, LevelReached, alert_id
from ..core.cost_alerts import CostLevelReached, amount_shown, cost_alert_id
from ..core.costs import money
from ..core.fin_limit import Transition, should_notify
from ..core.forecast import ForecastWarning
from ..core.metric_kinds import FIN_RESOLUTIONS, METRIC_KINDS
from .common import iso


class Kind(StrEnum):
    """What an output is; the value names its topic's attribute in ``streams/topics.py``."""

    ALERT = "alerts"
    FIN_TRANSITION = "limits"
    NOTIFICATION = "notifications"
    DEAD_LETTER = "dead_letter"
    COMMAND_RESULT = "command_results"
    MAIL_REQUEST = "mail_requests"
    WEBHOOK_REQUEST = "webhook_requests"
    # Internal: a workspace's usage report or contacts to its contract's owner, and a command
    # (a contract's terms, the others' usage, a period tick) to a workspace's inbox.
    CONTRACT_MESSAGE = "contract_inbox"
    WORKSPACE_MESSAGE = "workspace_inbox"


class Output(NamedTuple):
    kind: Kind
    key: str | None
    record: Any  # a dict for orjson, or bytes already encoded


class RecordedOutputs:
    """A step's outputs in the order it made them."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[Output] = []

    def alert(self, key: str, record: dict[str, Any]) -> None:
        self.items.append(Output(Kind.ALERT, key, record))

    def fin_transition(self, key: str, record: dict[str, Any]) -> None:
        """A ``usage.limits`` record, keyed by ``limit_key``."""
        self.items.append(Output(Kind.FIN_TRANSITION, key, record))

    def notification(self, workspace_id: str, record: dict[str, Any]) -> None:
        self.items.append(Output(Kind.NOTIFICATION, workspace_id, record))

    def dead_letter(self, key: str | None, record: dict[str, Any]) -> None:
        self.items.append(Output(Kind.DEAD_LETTER, key, record))

    def command_result(self, key: str | None, record: dict[str, Any]) -> None:
        self.items.append(Output(Kind.COMMAND_RESULT, key, record))

    def mail_request(
        self, kind: str, record: dict[str, Any], recipients: list[str], held_back: str | None = None
    ) -> None:
        request = mail_request(kind, record, recipients, held_back)
        self.items.append(Output(Kind.MAIL_REQUEST, mail_id(kind, record), request))

    def contract_message(self, contract_id: str, message: bytes) -> None:
        self.items.append(Output(Kind.CONTRACT_MESSAGE, contract_id, message))

    def workspace_message(self, workspace_id: str, message: bytes) -> None:
        self.items.append(Output(Kind.WORKSPACE_MESSAGE, workspace_id, message))

    def of(self, kind: Kind) -> list[Any]:
        """The records of one kind, in order."""
        return [output.record for output in self.items if output.kind is kind]

    def truncate(self, length: int) -> None:
        """Forget every output made after the first ``length`` (a step that failed)."""
        del self.items[length:]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Output]:
        return iter(self.items)


# What a mail request asks for: an alert's mail, or the mail that Fin was disabled.
ALERT = "alert"
FIN_DISABLED = "fin_disabled"


def mail_request(kind: str, record: dict[str, Any], recipients: list[str], held_back: str | None = None) -> bytes:
    """A mail-requests record: the output to mail, and to whom; with ``held_back`` (why), a
    request not to be mailed but dead-lettered, so that what is held back is never lost silently."""
    request: dict[str, Any] = {"kind": kind, "record": record, "recipients": recipients}
    if held_back is not None:
        request["held_back"] = held_back
    return orjson.dumps(request)


def mail_id(kind: str, record: dict[str, Any]) -> str:
    """A mail request's key: the id of the output it reports."""
    return record["alert_id"] if kind == ALERT else record["transition_id"]


def recipient_mail_id(request_id: str, recipient: str) -> str:
    """The ledger key of the mail of request ``request_id`` to ``recipient``: each billing
    contact's mail is settled on its own. The address enters only as a hash (compared
    case-insensitively), so ledger keys, logs and dead letters name no address."""
    digest = hashlib.sha256(recipient.lower().encode()).hexdigest()[:16]
    return f"{request_id} to {digest}"


def dead_letter(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    code: str,
    message: str,
    at: datetime,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "key": _text(_capped(key))[0],
        "error": {"code": code, "message": message},
        "at": iso(at),
    }
    text, encoding = _text(_capped(value))
    record["value"] = text
    if encoding:
        record["value_encoding"] = encoding
    if value is not None and len(value) > MAX_DEAD_LETTER_BYTES:
        # The record must fit the broker's message size (1 MB by default) even once escaped.
        record["value_truncated"] = True
        record["value_length"] = len(value)
    return record


# 64 KiB of control characters is 384 KiB of JSON escapes; key and value together stay under 1 MB.
MAX_DEAD_LETTER_BYTES = 64 * 1024


def _capped(raw: bytes | None) -> bytes | None:
    return raw if raw is None or len(raw) <= MAX_DEAD_LETTER_BYTES else raw[:MAX_DEAD_LETTER_BYTES]


def _text(raw: bytes | None) -> tuple[str | None, str | None]:
    if raw is None:
        return None, None
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def command_result(
    command_id: str | None, status: str, *, effective_from: datetime | None = None, reason: str | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = {"command_id": command_id, "status": status}
    if effective_from is not None:
        result["effective_from"] = iso(effective_from)
    if reason is not None:
        result["reason"] = reason
    return result


def alert_record(
    scope: str,
    owner_id: str,
    metric: str,
    reached: LevelReached,
    *,
    workspace_id: str | None,
    contract_id: str | None,
    estimated_cost: dict[str, str] | None,
    recipients: list[str],
    triggered_at: datetime,
    cause_event_id: str | None,
) -> dict[str, Any]:
    """A ``usage.alerts`` record (CONTRACT 5.1) for ``reached``, by the workspace or contract
    ``owner_id`` of ``scope``."""
    return {
        "alert_id": alert_id(scope, owner_id, metric, reached.period.start, reached.threshold, reached.level),
        "scope": scope,
        "workspace_id": workspace_id,
        "contract_id": contract_id,
        "metric": metric,
        "level": reached.level,
        "threshold": reached.threshold,
        "usage": reached.usage,
        "period_start": iso(reached.period.start),
        "period_end": iso(reached.period.end),
        "estimated_cost": estimated_cost,
        "recipients": recipients,
        "triggered_at": iso(triggered_at),
        "cause_event_id": cause_event_id,
    }


def forecast_record(workspace_id: str, metric: str, warning: ForecastWarning, **addressed: Any) -> dict[str, Any]:
    """A ``usage.alerts`` record of ``kind`` "forecast" (CONTRACT 5.1, *Addition: forecast
    warnings*): the fields of the workspace's alert for the level (``addressed``: its
    ``contract_id``, ``estimated_cost``, ``recipients`` and ``triggered_at``), with an id of its
    own, no cause event, and where and when the forecast sees usage going."""
    reached = LevelReached(warning.level, warning.threshold, warning.usage, warning.period)
    record = alert_record(
        WORKSPACE_SCOPE, workspace_id, metric, reached, workspace_id=workspace_id, cause_event_id=None, **addressed
    )
    record["alert_id"] = alert_id(
        FORECAST_SCOPE, workspace_id, metric, warning.period.start, warning.threshold, warning.level
    )
    record["kind"] = "forecast"
    record["projected_usage"] = warning.projected_usage
    record["projected_date"] = warning.projected_date.isoformat()
    record["method"] = warning.method
    return record


def cost_alert_record(
    workspace_id: str,
    metric: str,
    reached: CostLevelReached,
    *,
    currency: str,
    contract_id: str | None,
    usage: int | None,
    recipients: list[str],
    triggered_at: datetime,
    cause_event_id: str,
) -> dict[str, Any]:
    """A ``usage.alerts`` record of ``kind`` "cost" (CONTRACT 5.1, *Addition: cost alerts*):
    the workspace's estimated cost of ``metric`` (or "total") reached ``reached.level`` percent
    of the threshold amount. ``threshold`` is null (no quantity was set); ``cost_threshold`` is
    the amount set and ``estimated_cost`` the cost the causing event brought, in cents."""
    return {
        "alert_id": cost_alert_id(workspace_id, metric, reached.period.start, reached.amount, reached.level),
        "kind": "cost",
        "scope": WORKSPACE_SCOPE,
        "workspace_id": workspace_id,
        "contract_id": contract_id,
        "metric": metric,
        "level": reached.level,
        "threshold": None,
        "usage": usage,
        "cost_threshold": {"amount": amount_shown(reached.amount), "currency": currency},
        "period_start": iso(reached.period.start),
        "period_end": iso(reached.period.end),
        "estimated_cost": {"amount": money(reached.cost), "currency": currency},
        "recipients": recipients,
        "triggered_at": iso(triggered_at),
        "cause_event_id": cause_event_id,
    }


# Between the workspace and the metric in a usage.limits key. Workspace ids may hold any
# printable character (a colon too) but no control character, so no other metric's key can
# equal a workspace id, which is Fin's key.
LIMIT_KEY_SEPARATOR = "\x1f"


def limit_key(workspace_id: str, metric: str = FIN_RESOLUTIONS) -> str:
    """The Kafka key of a ``usage.limits`` record (CONTRACT 5.2): the workspace for Fin, and
    ``<workspace_id>\\x1f<metric>`` for any other metric, so that compaction keeps the latest
    record of every limited metric, Fin's included."""
    return workspace_id if metric == FIN_RESOLUTIONS else f"{workspace_id}{LIMIT_KEY_SEPARATOR}{metric}"


def limit_record(workspace_id: str, transition: Transition, metric: str = FIN_RESOLUTIONS) -> dict[str, Any]:
    """A ``usage.limits`` record (CONTRACT 5.2)."""
    return {
        "transition_id": transition.transition_id,
        "workspace_id": workspace_id,
        "metric": metric,
        "state": transition.state,
        "reason": transition.reason,
        "limit": transition.limit,
        "usage": transition.usage,
        "period_start": iso(transition.period.start),
        "period_end": iso(transition.period.end),
        "at": iso(transition.at),
    }


def notification_record(
    workspace_id: str, transition: Transition, metric: str = FIN_RESOLUTIONS
) -> dict[str, Any] | None:
    """The ``usage.notifications`` record (CONTRACT 5.3) of a transition that tells the customer, else None."""
    if not should_notify(transition):
        return None
    if metric != FIN_RESOLUTIONS:
        return _limit_notification(workspace_id, transition, metric)
    return {
        "notification_id": str(uuid.uuid5(_NOTIFICATION_NAMESPACE, transition.transition_id)),
        "workspace_id": workspace_id,
        "kind": "fin_limit_reached",
        "title": "Fin AI Agent has been paused",
        "body": (
            f"Your workspace reached its limit of {transition.limit} Fin AI Agent resolutions for this billing "
            f"period ({transition.usage} so far). New and ongoing conversations go to your team until the "
            "limit is raised or turned off, or the next billing period starts."
        ),
        "transition_id": transition.transition_id,
        "at": iso(transition.at),
    }


_NOTIFICATION_NAMESPACE = uuid.UUID("6f1c2a57-3f0e-5d0b-9a51-4f3a9c2b7e10")


def _limit_notification(workspace_id: str, transition: Transition, metric: str) -> dict[str, Any]:
    """The in-app notice that a limit on a metric other than Fin's was reached."""
    kind = METRIC_KINDS.get(metric)
    title = kind.title if kind is not None else metric
    return {
        "notification_id": str(uuid.uuid5(_NOTIFICATION_NAMESPACE, transition.transition_id)),
        "workspace_id": workspace_id,
        "kind": "usage_limit_reached",
        "metric": metric,
        "title": f"{title} has been paused",
        "body": (
            f"Your workspace reached its limit of {transition.limit} {title} for this billing period "
            f"({transition.usage} so far). {title} stays paused until the limit is raised or turned off, "
            "usage falls below it, or the next billing period starts."
        ),
        "transition_id": transition.transition_id,
        "at": iso(transition.at),
    }
