"""A workspace's alert history, decided without I/O: which alert and limit transition records it
keeps (those of its most recent billing periods, a bounded number of them), what was asked to
be delivered for each, and the delivery state of each read from the mail and webhook ledgers.

The history is kept where the records are made (the counting stage, in the workspace's
partition); the ledgers are written by the mail and webhook agents, keyed by the record's id,
and are read when the history is shown (``delivery_document``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from ..models.outputs import Kind, Output, recipient_mail_id
from .webhooks import delivery_key

# The billing periods kept per workspace (by the records' ``period_start``): the current one
# and the two before it.
KEPT_PERIODS = 3
# At most this many records per workspace in all, the oldest dropped first: a limit switched on
# and off all period long cannot grow the history without bound.
MAX_ENTRIES = 500

ALERT = "alert"
TRANSITION = "transition"

# Delivery states, as the history shows them.
SENT = "sent"
RETRYING = "retrying"  # requested, not settled yet: being sent, or failing for now and retried
REFUSED = "refused"  # the recipient's server or the endpoint refused it for good
GIVEN_UP = "given_up"  # still failing for now when the give-up age passed
HELD_BACK = "held_back"  # not mailed: the workspace's hourly mail cap
FAILED = "failed"  # not mailed: the mail could not be composed
NONE = "none"  # nothing was requested: no recipients, or no mail or webhooks configured

# A summary of several recipients' states is the first of these that any recipient has.
SUMMARY_ORDER = (RETRYING, GIVEN_UP, REFUSED, FAILED, HELD_BACK, SENT)


@dataclass(frozen=True)
class HistoryEntry:
    """One record as published, and what was asked for its delivery."""

    kind: str  # ALERT or TRANSITION
    record: Mapping[str, Any]
    recipients: tuple[str, ...] = ()  # whom a mail was requested for; () when none was
    held_back: bool = False  # the mail request was held back by the hourly cap
    webhooks: bool = False  # a webhook request was published beside the record

    @property
    def record_id(self) -> str:
        return str(self.record["alert_id"] if self.kind == ALERT else self.record["transition_id"])

    @property
    def at(self) -> str:
        return str(self.record.get("triggered_at") if self.kind == ALERT else self.record.get("at"))


def added(history: tuple[HistoryEntry, ...], new: Iterable[HistoryEntry]) -> tuple[HistoryEntry, ...]:
    """``history`` with ``new`` added, each id once (a record made again, as by a replay, keeps
    its first entry), ordered by time, bounded to ``KEPT_PERIODS`` periods and ``MAX_ENTRIES``."""
    seen = {entry.record_id for entry in history}
    entries = list(history)
    for entry in new:
        if entry.record_id not in seen:
            seen.add(entry.record_id)
            entries.append(entry)
    entries.sort(key=lambda entry: (entry.at, entry.record_id))
    starts = sorted({str(entry.record.get("period_start")) for entry in entries})[-KEPT_PERIODS:]
    kept = [entry for entry in entries if str(entry.record.get("period_start")) in starts]
    return tuple(kept[-MAX_ENTRIES:])


def entries_of(outputs: Iterable[Output], webhooks: bool) -> dict[str, list[HistoryEntry]]:
    """Workspace id -> the history entries of the workspace alerts and limit transitions among
    ``outputs`` (a step's, in order), each with the mail request published beside it, if any;
    ``webhooks``: whether a webhook request is published beside each record."""
    mail_requests: dict[str, dict[str, Any]] = {}
    for output in outputs:
        if output.kind is Kind.MAIL_REQUEST and output.key is not None:
            record = output.record
            mail_requests[output.key] = orjson.loads(record) if isinstance(record, bytes) else record
    found: dict[str, list[HistoryEntry]] = {}
    for output in outputs:
        if output.kind is Kind.ALERT:
            kind = ALERT
        elif output.kind is Kind.FIN_TRANSITION:
            kind = TRANSITION
        else:
            continue
        record = output.record if isinstance(output.record, dict) else orjson.loads(output.record)
        workspace_id = record.get("workspace_id")
        if not workspace_id or record.get("scope", "workspace") != "workspace":
            continue
        entry = HistoryEntry(kind, record, webhooks=webhooks)
        request = mail_requests.get(entry.record_id)
        if request is not None:
            entry = HistoryEntry(
                kind,
                record,
                recipients=tuple(request.get("recipients") or ()),
                held_back=request.get("held_back") is not None,
                webhooks=webhooks,
            )
        found.setdefault(workspace_id, []).append(entry)
    return found


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def asked_day(text: str) -> date | None:
    """The day ``YYYY-MM-DD`` names; None for anything else (other ISO forms included)."""
    if not _DAY.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def in_period(entries: Iterable[HistoryEntry], day: date, local_date: Any) -> list[HistoryEntry]:
    """The entries whose billing period holds ``day``; ``local_date`` turns an instant into the
    workspace's local date (``BillingCycle.local_date``)."""
    found = []
    for entry in entries:
        start, end = _instant(entry.record.get("period_start")), _instant(entry.record.get("period_end"))
        if start is not None and end is not None and local_date(start) <= day < local_date(end):
            found.append(entry)
    return found


def _instant(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# ledgers

# The mail ledger's ("mails-sent") values -> state.
_MAIL_STATES = {
    b"sent": SENT,
    b"failed: permanent": REFUSED,
    b"failed: given up": GIVEN_UP,
    b"failed: held back": HELD_BACK,
    b"failed: composition": FAILED,
}
# The webhook ledger's ("webhooks-sent") values -> state.
_WEBHOOK_STATES = {b"sent": SENT, b"failed: refused": REFUSED, b"failed: given up": GIVEN_UP}


def mail_state(value: bytes | None) -> str:
    """The state of one requested mail from its ledger entry (None: not settled yet)."""
    if value is None:
        return RETRYING
    return _MAIL_STATES.get(bytes(value), FAILED)


def webhook_state(value: bytes | None) -> str:
    """The state of one requested webhook delivery from its ledger entry (None: not settled yet)."""
    if value is None:
        return RETRYING
    return _WEBHOOK_STATES.get(bytes(value), FAILED)


def summary(states: Iterable[str]) -> str:
    """One state for several recipients: the first of ``SUMMARY_ORDER`` any has; ``none`` for none."""
    present = set(states)
    for state in SUMMARY_ORDER:
        if state in present:
            return state
    return NONE


def mail_keys(entry: HistoryEntry) -> list[str]:
    """The mail ledger keys that settle ``entry``'s mails: the bare id (settling every recipient)
    and one per recipient."""
    if not entry.recipients:
        return []
    return [entry.record_id, *(recipient_mail_id(entry.record_id, recipient) for recipient in entry.recipients)]


def webhook_keys(entry: HistoryEntry, endpoints: Iterable[str]) -> list[str]:
    return [delivery_key(entry.record_id, url) for url in endpoints] if entry.webhooks else []


def shown_url(url: str) -> str:
    """An endpoint as shown to a workspace's users: scheme, host, port and path, without any
    user, password, query or fragment (which may hold a credential)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def delivery_document(
    entry: HistoryEntry, mails: Mapping[str, bytes | None], webhooks: Mapping[str, bytes | None], endpoints: list[str]
) -> dict[str, Any]:
    """``entry``'s ``delivery``: the mail state (a summary and one per recipient) and one state
    per configured webhook endpoint, from the ledgers' entries ``mails`` and ``webhooks``."""
    if not entry.recipients:
        email, per_recipient = NONE, []
    else:
        whole = mails.get(entry.record_id)
        if entry.held_back:
            whole = whole or b"failed: held back"
        per_recipient = [
            {
                "recipient": recipient,
                "state": mail_state(
                    whole if whole is not None else mails.get(recipient_mail_id(entry.record_id, recipient))
                ),
            }
            for recipient in entry.recipients
        ]
        email = summary(item["state"] for item in per_recipient)
    hooks = (
        [
            {"url": shown_url(url), "state": webhook_state(webhooks.get(delivery_key(entry.record_id, url)))}
            for url in endpoints
        ]
        if entry.webhooks
        else []
    )
    return {"email": email, "email_recipients": per_recipient, "webhooks": hooks}


# ---------------------------------------------------------------------------------------------
# the table's value


def encode_history(entries: tuple[HistoryEntry, ...]) -> bytes:
    return orjson.dumps(
        {
            "entries": [
                {
                    "kind": entry.kind,
                    "record": dict(entry.record),
                    "recipients": list(entry.recipients),
                    "held_back": entry.held_back,
                    "webhooks": entry.webhooks,
                }
                for entry in entries
            ]
        }
    )


def decode_history(raw: bytes | None) -> tuple[HistoryEntry, ...]:
    if not raw:
        return ()
    document = orjson.loads(raw)
    return tuple(
        HistoryEntry(
            kind=item["kind"],
            record=item["record"],
            recipients=tuple(item.get("recipients") or ()),
            held_back=bool(item.get("held_back")),
            webhooks=bool(item.get("webhooks")),
        )
        for item in document.get("entries", ())
    )
