"""The alert and Fin-limit emails (CONTRACT 5.6), composed from topic records; no I/O.

Each billing contact gets a mail of its own, addressed to that contact only, so no contact
sees another's address. Every record field may carry anything a producer put there, so
nothing reaches a header or the body unsanitised (``one_line``): control and line-separator
characters become spaces, format characters (bidi overrides, zero-width characters) are
removed, and length is bounded; addresses are validated and rebuilt as ``Address`` objects, and ids and addresses
enter the Message-ID only as a hash.
"""

from __future__ import annotations

import hashlib
import logging
import re
import textwrap
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from typing import Any
from zoneinfo import ZoneInfo

from ..core.metric_kinds import METRIC_KINDS

log = logging.getLogger(__name__)

_FIN_REASONS = {
    "limit_reached": "its resolutions this billing period reached the limit you set",
    "limit_lowered": "the limit was lowered to or below the resolutions already used this period",
}
_FIN_OTHER_REASON = "its resolutions this billing period are at or above the limit you set"
_FIN = "fin_resolutions"
# Addresses are rebuilt from these parts, so a comma, quote or bracket can never add a recipient.
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_DOMAIN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_MAX_ADDRESS = 254  # RFC 5321 path limit
_MAX_FIELD = 120  # keeps a hostile id from turning the subject into a wall of text
_MAX_ID = 256


class MailCompositionError(ValueError):
    """The record cannot become a mail (a required field is missing, or nobody to send to)."""


class NoValidRecipients(MailCompositionError):
    def __init__(self, record_id: str, invalid: tuple[str, ...]) -> None:
        super().__init__(f"{record_id}: no valid recipient address ({len(invalid)} invalid)")
        self.invalid = invalid


@dataclass(frozen=True)
class RecipientCheck:
    valid: tuple[str, ...]  # in first-seen order, each address once (compared case-insensitively)
    invalid: tuple[str, ...]  # as given: repr them before logging, they may hold control characters


# Replaced by a space: control characters (CR, LF, NUL, ESC, NEL…) and line or paragraph separators.
_BREAKING = frozenset(("Cc", "Zl", "Zp"))
# Removed: format characters (bidi overrides and isolates, zero-width spaces and joiners, BOM),
# which could disguise what a subject says; lone surrogates, which cannot be encoded; private-use
# and unassigned code points, which render as nothing anyone can read.
_INVISIBLE = frozenset(("Cf", "Cs", "Co", "Cn"))


def one_line(value: Any, limit: int = _MAX_FIELD) -> str:
    """``value`` as text safe for a header or a line of the body: one line, at most ``limit``
    characters (cut with "…"), no control, format, surrogate, private-use, unassigned or
    line-separator characters, runs of white space as one space."""
    kept = []
    for char in "" if value is None else str(value):
        category = unicodedata.category(char)
        if category in _BREAKING:
            kept.append(" ")
        elif category not in _INVISIBLE:
            kept.append(char)
    text = " ".join("".join(kept).split())
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def valid_address(address: Any) -> bool:
    if not isinstance(address, str) or len(address) > _MAX_ADDRESS or address.count("@") != 1:
        return False
    local, domain = address.split("@")
    return bool(_LOCAL_PART.match(local) and _DOMAIN.match(domain))


def mail_recipients(record_id: str, addresses: Any) -> tuple[str, ...]:
    """The valid addresses among ``addresses``, each once: one mail goes to each. Invalid ones
    are logged (as repr, one line) and dropped; raises ``NoValidRecipients`` if none is left."""
    check = check_recipients(addresses)
    if check.invalid:
        log.warning("%r: dropped invalid recipients %r", one_line(record_id), check.invalid)
    if not check.valid:
        raise NoValidRecipients(one_line(record_id), check.invalid)
    return check.valid


def check_recipients(addresses: Any) -> RecipientCheck:
    # Anything but a collection is one (maybe invalid) address: a bare string is not a list of characters.
    if not isinstance(addresses, list | tuple | set | frozenset):
        addresses = [addresses] if addresses else []
    valid: dict[str, str] = {}
    invalid: list[str] = []
    for address in addresses:
        if valid_address(address):
            valid.setdefault(address.lower(), address)
        else:
            invalid.append(str(address))
    return RecipientCheck(tuple(valid.values()), tuple(invalid))


def sender_address(sender: str) -> Address:
    """``METERWATCH_SMTP_FROM`` as ``alerts@example.com`` or ``Meterwatch <alerts@example.com>``."""
    name, address = parseaddr(sender)
    # parseaddr skips what follows a line break; a sender with one is a broken setting, not a name.
    if not valid_address(address) or any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in sender):
        raise MailCompositionError(f"the sender address {one_line(sender)!r} is not a valid address")
    local, domain = address.split("@")
    return Address(display_name=one_line(name, 80), username=local, domain=domain)


def message_id(kind: str, record_id: str, recipient: str, sender: str) -> str:
    """The same record to the same recipient always gets the same Message-ID, so a resend is
    recognisably one mail; the mails of one record to different recipients differ. Addresses
    compare case-insensitively, as ``check_recipients`` does."""
    text = f"{kind}\0{record_id}\0{recipient.lower()}"
    digest = hashlib.sha256(text.encode(errors="surrogatepass")).hexdigest()[:32]  # any id, even unencodable
    return f"<{kind}.{digest}@{sender_address(sender).domain}>"


def compose_alert_mail(alert: Mapping[str, Any], recipient: str, *, sender: str) -> EmailMessage:
    """The mail for one ``usage.alerts`` record (CONTRACT 5.1) to one of its ``recipients``."""
    if alert.get("kind") == "forecast":
        return _compose_forecast_mail(alert, recipient, sender=sender)
    if alert.get("kind") == "cost":
        return _compose_cost_mail(alert, recipient, sender=sender)
    metric = metric_title(alert.get("metric"))
    level, threshold = _level(alert.get("level")), _count(alert.get("threshold"))
    if alert.get("scope") == "contract":
        contract = one_line(alert.get("contract_id"))
        subject = f"{level}% of included {metric} ({threshold}) used - contract {contract}"
        opening = f"The contract {contract} has used {level}% of its included {metric}, over all its workspaces."
        threshold_fact = ("Included quantity", threshold)
    else:
        workspace = one_line(alert.get("workspace_id"))
        subject = f"{level}% of your {metric} usage alert ({threshold}) reached - workspace {workspace}"
        opening = f"The workspace {workspace} has reached {level}% of the {metric} usage alert you set."
        threshold_fact = ("Usage alert", threshold)
    facts = [
        ("Metric", metric),
        ("Usage this period", _count(alert.get("usage"))),
        threshold_fact,
        ("Level reached", f"{level}%"),
        ("Billing period", _period(alert)),
        ("Estimated cost", money_text(alert.get("estimated_cost"))),
    ]
    closing = "Usage alerts only inform you: nothing has been disabled or blocked."
    return _alert_message("alert", alert, recipient, sender, subject, (opening, facts, closing))


def _compose_cost_mail(alert: Mapping[str, Any], recipient: str, *, sender: str) -> EmailMessage:
    """The mail for a cost alert: the workspace's estimated cost reached a level of an amount."""
    total = alert.get("metric") == "total"
    metric = "total" if total else metric_title(alert.get("metric"))
    level, threshold = _level(alert.get("level")), money_text(alert.get("cost_threshold"))
    workspace = one_line(alert.get("workspace_id"))
    what = "total estimated cost" if total else f"estimated {metric} cost"
    subject = f"{level}% of your {'total' if total else metric} cost alert ({threshold}) - workspace {workspace}"
    opening = f"The workspace {workspace} has reached {level}% of the {what} alert you set."
    facts = [
        ("Cost of", "all metrics" if total else metric),
        ("Estimated cost this period", money_text(alert.get("estimated_cost"))),
        ("Cost alert", threshold),
        ("Level reached", f"{level}%"),
        ("Billing period", _period(alert)),
    ]
    closing = "Cost alerts only inform you: nothing has been disabled or blocked."
    return _alert_message("alert", alert, recipient, sender, subject, (opening, facts, closing))


def _compose_forecast_mail(warning: Mapping[str, Any], recipient: str, *, sender: str) -> EmailMessage:
    """The mail for a forecast warning: the workspace's usage is projected to reach a level."""
    metric = metric_title(warning.get("metric"))
    level, threshold = _level(warning.get("level")), _count(warning.get("threshold"))
    workspace = one_line(warning.get("workspace_id"))
    on = _day(warning.get("projected_date"))
    subject = f"{metric} usage projected to reach {level}% of your alert ({threshold}) by {on} - workspace {workspace}"
    opening = (
        f"At its recent pace, the workspace {workspace} is projected to reach {level}% of the {metric} "
        f"usage alert you set by {on}, before this billing period ends."
    )
    facts = [
        ("Metric", metric),
        ("Usage this period", _count(warning.get("usage"))),
        ("Usage alert", threshold),
        ("Level projected", f"{level}%"),
        ("Projected by", on),
        ("Projected at period end", _count(warning.get("projected_usage"))),
        ("Billing period", _period(warning)),
        ("Estimated cost", money_text(warning.get("estimated_cost"))),
    ]
    closing = "This is a forecast from the daily usage so far; nothing has been disabled or blocked."
    return _alert_message("forecast", warning, recipient, sender, subject, (opening, facts, closing))


def _alert_message(
    kind: str,
    alert: Mapping[str, Any],
    recipient: str,
    sender: str,
    subject: str,
    text: tuple[str, list[tuple[str, str]], str],
) -> EmailMessage:
    """The mail of a ``usage.alerts`` record; ``text``: the opening, facts and closing of its body."""
    alert_id = _required_id(alert, "alert_id")
    body = _body(*text, f"Alert id: {one_line(alert_id, _MAX_ID)}")
    message = _message(kind, alert_id, recipient, sender, subject, body, alert.get("triggered_at"))
    message["X-Meterwatch-Alert-Id"] = one_line(alert_id, _MAX_ID)
    return message


def _day(value: Any) -> str:
    """An ISO date as "Dec 12"; anything else as sanitised text."""
    try:
        day = date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        day = None
    return f"{day:%b} {day.day}" if day is not None else (one_line(value, 20) or "?")


def compose_fin_disabled_mail(transition: Mapping[str, Any], recipient: str, *, sender: str) -> EmailMessage:
    """The mail for one ``usage.limits`` record (CONTRACT 5.2) that disabled Fin, or a metric
    with a hard limit, to one billing contact."""
    transition_id = _required_id(transition, "transition_id")
    if transition.get("state") != "disabled":
        raise MailCompositionError(f"{one_line(transition_id)}: only a 'disabled' transition is mailed")
    workspace, limit = one_line(transition.get("workspace_id")), _count(transition.get("limit"))
    limited = transition.get("metric", _FIN)
    metric = metric_title(limited)
    again = "billing period starts, when usage falls below the limit, or when you raise or turn off the limit."
    if limited == _FIN:
        kind = "fin-disabled"
        subject = f"Fin AI Agent disabled: {metric} limit ({limit}) reached - workspace {workspace}"
        opening = (
            f"Fin AI Agent has been disabled for the workspace {workspace} because "
            f"{_fin_reason(transition.get('reason'))}. It is enabled again when the next {again}"
        )
    else:
        kind = "limit-disabled"
        subject = f"{metric} disabled: {metric} limit ({limit}) reached - workspace {workspace}"
        opening = (
            f"{metric} has been disabled for the workspace {workspace} because its usage this billing "
            f"period is at or above the hard limit you set. It is enabled again when the next {again}"
        )
    facts = [
        ("Metric", metric),
        ("Usage this period", _count(transition.get("usage"))),
        ("Hard limit", limit),
        ("Billing period", _period(transition)),
    ]
    if "estimated_cost" in transition:  # not in the 5.2 record; shown when a caller adds it
        facts.append(("Estimated cost", money_text(transition.get("estimated_cost"))))
    body = _body(opening, facts, "", f"Transition id: {one_line(transition_id, _MAX_ID)}")
    message = _message(kind, transition_id, recipient, sender, subject, body, transition.get("at"))
    message["X-Meterwatch-Transition-Id"] = one_line(transition_id, _MAX_ID)
    return message


def _fin_reason(reason: Any) -> str:
    return _FIN_REASONS.get(reason, _FIN_OTHER_REASON) if isinstance(reason, str) else _FIN_OTHER_REASON


def metric_title(metric: Any) -> str:
    if not isinstance(metric, str):
        return "usage"
    kind = METRIC_KINDS.get(metric)
    return kind.title if kind is not None else one_line(metric) or "usage"


def period_text(start: Any, end: Any, zone: Any = None) -> str:
    """Dates (end inclusive) when the period runs midnight to midnight, else the exact instants."""
    first, after = _instant(start, zone), _instant(end, zone)
    if first is None or after is None:
        return f"{one_line(start) or '?'} to {one_line(end) or '?'}"
    if first.time() == after.time() == datetime.min.time():
        return f"{first.date().isoformat()} to {(after - timedelta(days=1)).date().isoformat()}"
    # Periods are published in UTC; without the contract's zone, its midnight is not midnight here.
    return f"{first:%Y-%m-%d %H:%M %Z} to {after:%Y-%m-%d %H:%M %Z} (end not included)"


def money_text(cost: Any) -> str:
    if not isinstance(cost, Mapping):
        return "not available"
    try:
        amount = one_line(f"{Decimal(str(cost.get('amount'))):,}", 40)
    except (InvalidOperation, ValueError):
        amount = one_line(cost.get("amount"), 40)
    return f"{amount} {one_line(cost.get('currency'), 12)}".strip()


def _period(record: Mapping[str, Any]) -> str:
    # ``timezone`` is not in the topic records; a caller that knows the contract's zone may add it.
    return period_text(record.get("period_start"), record.get("period_end"), record.get("timezone"))


def _required_id(record: Mapping[str, Any], field: str) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not one_line(value):
        raise MailCompositionError(f"the record has no {field}")
    return value


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else (one_line(value, 40) or "?")


def _level(value: Any) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else (one_line(value, 8) or "?")


def _instant(value: Any, zone: Any) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
        if parsed is None or parsed.tzinfo is None:
            return None
        return parsed.astimezone(ZoneInfo(zone) if isinstance(zone, str) and zone else UTC)
    except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        return None


def _body(opening: str, facts: list[tuple[str, str]], closing: str, reference: str) -> str:
    width = max(len(label) for label, _ in facts) + 2
    lines = [textwrap.fill(opening, 72), ""] + [f"  {label + ':':<{width}}{value}" for label, value in facts]
    if closing:
        lines += ["", closing]
    return "\n".join(lines + ["", "You receive this email because you are a billing contact.", reference, ""])


def _message(kind: str, record_id: str, recipient: str, sender: str, subject: str, body: str, at: Any) -> EmailMessage:
    if not valid_address(recipient):
        raise NoValidRecipients(one_line(record_id), (str(recipient),))
    local, domain = recipient.split("@")
    message = EmailMessage(policy=SMTP)
    message["From"] = sender_address(sender)
    message["To"] = Address(username=local, domain=domain)
    message["Subject"] = one_line(subject, 250)
    message["Date"] = format_datetime(_instant(at, None) or datetime.now(UTC))
    message["Message-ID"] = message_id(kind, record_id, recipient, sender)
    message.set_content(body)
    return message
