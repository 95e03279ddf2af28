"""Alert and Fin-limit mail (CONTRACT 5.6): composed from topic records, sent over SMTP, and
retried in the background so counting never waits for it.

Composition does no I/O. Each billing contact gets a mail of its own, addressed to that contact
only, so no contact sees another's address. Every record field may carry anything a producer put
there, so nothing reaches a header or the body unsanitised (``one_line``): control and
line-separator characters become spaces, format characters (bidi overrides, zero-width
characters) are removed, and length is bounded; addresses are validated and rebuilt as
``Address`` objects, and ids and addresses enter the Message-ID only as a hash.

``SmtpMailer.send`` makes one attempt and says what happened to each recipient; ``MailOutbox``
owns the retries. Neither logs the password or a mail's body.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import random
import ssl
import textwrap
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, getaddresses, parseaddr
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import aiosmtplib

from ..config.settings import Settings
from ..core.mail_retry import Backoff, GiveUp, RetryPolicy, after_failed_attempt
from ..core.metric_kinds import METRIC_KINDS
from ..models.common import valid_address

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Composition

_FIN_REASONS = {
    "limit_reached": "its resolutions this billing period reached the limit you set",
    "limit_lowered": "the limit was lowered to or below the resolutions already used this period",
}
_FIN_OTHER_REASON = "its resolutions this billing period are at or above the limit you set"
_FIN = "fin_resolutions"
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


# ---------------------------------------------------------------------------------------------
# Sending


@dataclass(frozen=True)
class SendResult:
    """The outcome of one attempt. Reasons are the server's reply, e.g. ``550 no such user``."""

    accepted: tuple[str, ...] = ()
    refused: Mapping[str, str] = field(default_factory=dict)  # 5xx to RCPT: never retried
    deferred: Mapping[str, str] = field(default_factory=dict)  # 4xx to RCPT: retry these only
    transient_error: str | None = None  # the attempt failed as a whole and may succeed later
    permanent_error: str | None = None  # this message can never be sent

    @property
    def needs_retry(self) -> bool:
        return self.permanent_error is None and (self.transient_error is not None or bool(self.deferred))


class MailSender(Protocol):
    async def send(self, message: EmailMessage, recipients: Sequence[str] | None = None) -> SendResult: ...


# The longest one SMTP transaction may take, from connecting to the server's answer to the mail;
# past it the attempt has failed for now and is retried. A rebalance waits this long for the
# transactions under way (streams/pipeline/mailing.py), so none is still running once its mail's
# partition has a new owner.
SMTP_TRANSACTION_SECONDS = 20.0


class SmtpMailer:
    """One connection per send: alert mail is rare, and a fresh connection has no stale state."""

    def __init__(
        self,
        settings: Settings,
        *,
        timeout: float = SMTP_TRANSACTION_SECONDS,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if not settings.smtp_host:
            raise ValueError("METERWATCH_SMTP_HOST is not set: email is off")
        self.host, self.port, self.starttls = settings.smtp_host, settings.smtp_port, settings.smtp_starttls
        self.tls = settings.smtp_tls  # implicit TLS from the first byte (port 465)
        self._username = settings.smtp_username
        self._password = settings.smtp_password  # a SecretStr, revealed only to the SMTP client
        self._sender = sender_address(settings.smtp_from).addr_spec
        self._timeout = timeout  # per SMTP command and for the whole transaction
        # For a private CA (METERWATCH_SMTP_CA_FILE); None trusts the system's CAs.
        self._tls_context = tls_context if tls_context is not None else smtp_tls_context(settings)

    def __repr__(self) -> str:
        return (
            f"SmtpMailer({self.host}:{self.port}, tls={self.tls}, starttls={self.starttls}, "
            f"login={self._username is not None})"
        )

    async def send(self, message: EmailMessage, recipients: Sequence[str] | None = None) -> SendResult:
        """One attempt to deliver ``message`` to ``recipients`` (default: its To)."""
        to = list(recipients if recipients is not None else (a for _, a in getaddresses(message.get_all("To", []))))
        if not to:
            return SendResult(permanent_error="the message has no recipients")
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self._timeout,
            use_tls=self.tls,
            start_tls=self.starttls,  # False means plain SMTP, never an opportunistic upgrade
            tls_context=self._tls_context,
            username=self._username,
            password=self._password.get_secret_value() if self._password else None,
        )
        try:
            async with asyncio.timeout(self._timeout):
                await client.connect()  # connects, upgrades with STARTTLS and logs in, as configured
                sender = parseaddr(str(message.get("From", "")))[1] or self._sender
                errors, _ = await client.send_message(message, sender=sender, recipients=to)
        except aiosmtplib.SMTPRecipientsRefused as refusal:
            return _per_recipient(to, {r.recipient: _reply(r.code, r.message) for r in refusal.recipients})
        except aiosmtplib.SMTPResponseException as error:
            return _whole_message_reply(error)
        except ValueError as error:  # an address or message aiosmtplib cannot put on the wire
            return SendResult(permanent_error=one_line(error, 200))
        except (OSError, aiosmtplib.SMTPException) as error:  # OSError covers TimeoutError
            # Refused or reset connections, timeouts, TLS failures, no STARTTLS: the server or
            # the network, not the mail; a later attempt can succeed.
            return SendResult(transient_error=f"{type(error).__name__}: {one_line(error, 200)}")
        except asyncio.CancelledError:
            client.close()  # shutting down: no waiting for a polite QUIT
            raise
        finally:
            await _quit_quietly(client)
        return _per_recipient(to, {address: _reply(*reply) for address, reply in errors.items()})


def smtp_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context trusting the CAs in ``METERWATCH_SMTP_CA_FILE``, or None for the system's."""
    return ca_file_context("METERWATCH_SMTP_CA_FILE", settings.smtp_ca_file)


def ca_file_context(variable: str, ca_file: str | None) -> ssl.SSLContext | None:
    """The TLS context trusting only the CAs in ``ca_file`` (the setting ``variable``), or None
    for the system's. Raises ValueError with one line when the file cannot be read as certificates."""
    if ca_file is None:
        return None
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"{variable}: cannot load {ca_file!r}: {one_line(error, 200)}") from None


def _reply(code: int, message: str) -> str:
    return f"{code} {one_line(message, 200)}"  # a server's text may echo what it was sent


def _per_recipient(to: list[str], refusals: Mapping[str, str]) -> SendResult:
    refused = {address: reply for address, reply in refusals.items() if reply.startswith("5")}
    deferred = {address: reply for address, reply in refusals.items() if not reply.startswith("5")}
    accepted = tuple(address for address in to if address not in refusals)
    return SendResult(accepted=accepted, refused=refused, deferred=deferred)


def _whole_message_reply(error: aiosmtplib.SMTPResponseException) -> SendResult:
    reason = f"{type(error).__name__}: {_reply(error.code, error.message)}"
    # A 5xx to DATA rejects this mail's content. A 5xx to AUTH, MAIL FROM or EHLO is the deployment's
    # problem (credentials, sender) that every mail meets alike: retry, so mail flows again once fixed.
    if isinstance(error, aiosmtplib.SMTPDataError) and error.code >= 500:
        return SendResult(permanent_error=reason)
    return SendResult(transient_error=reason)


async def _quit_quietly(client: aiosmtplib.SMTP) -> None:
    # The outcome is already decided; a failing QUIT must not turn a delivered mail into a retry.
    try:
        await client.quit()
    except (OSError, aiosmtplib.SMTPException):  # OSError covers TimeoutError
        pass
    finally:
        client.close()


EVERY_RECIPIENT_REFUSED = "every recipient refused"


class MailOutbox:
    """Sends each key's mail in the background, one task per mail, so a mail that keeps failing
    holds up no other; retries what fails for now until the policy gives it up.

    ``on_sent(key)`` once at least one recipient accepted it and nothing is left to retry;
    ``on_failed(key, reason)`` when nobody can get it; ``on_refused(key, {address: reply})``
    before either when the server refused some addresses for good; ``on_given_up(key, reason)``
    when it was still failing for now at the policy's age; ``on_retry(key, attempts, why)``
    after each attempt that will be tried again. Callbacks may be async.

    Webhooks use it too (``sinks/webhook.py``): their sender answers with the same ``SendResult``,
    one "recipient" (the endpoint) per delivery.

    The outbox forgets a key once it is settled: remembering what was sent is the caller's
    (the mail ledger's). A send stops without settling when the outbox is stopped or closed, or
    when ``may_send()`` says no before an attempt.
    """

    def __init__(
        self,
        mailer: MailSender,
        *,
        on_sent: Callable[[str], Any],
        on_failed: Callable[[str, str], Any],
        on_refused: Callable[[str, Mapping[str, str]], Any] | None = None,
        on_given_up: Callable[[str, str], Any] | None = None,
        on_retry: Callable[[str, int, str], Any] | None = None,
        policy: RetryPolicy | None = None,
        backoff: Backoff | None = None,
        max_concurrent_sends: int = 4,
        max_pending: int = 1000,
        may_send: Callable[[], bool] = lambda: True,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        what: str = "mail",
    ) -> None:
        policy = policy or RetryPolicy(give_up_after=timedelta(hours=24))
        self._policy = replace(policy, backoff=backoff) if backoff is not None else policy
        self._mailer, self._rng, self._clock, self._may_send = mailer, rng, clock, may_send
        self._on_sent, self._on_failed, self._on_refused = on_sent, on_failed, on_refused
        self._on_given_up, self._on_retry = on_given_up, on_retry
        self._connections = asyncio.Semaphore(max_concurrent_sends)  # a backlog must not flood the relay
        self._max_pending = max_pending
        self._room = asyncio.Event()
        self._room.set()
        self._pending: dict[str, _Send] = {}
        self._closed = False
        self._what = what  # what its log lines call one item: "mail", "webhook"

    def put(self, key: str, message: EmailMessage, requested_at: datetime | None = None) -> bool:
        """Start sending ``message`` under ``key``; False if that key is being sent already.
        Never waits. ``requested_at`` (default: now) is where the mail's age counts from."""
        if self._closed:
            raise RuntimeError("the mail outbox is closed")
        if key in self._pending:
            return False
        send = _Send(requested_at or self._clock())
        send.task = asyncio.get_running_loop().create_task(
            self._deliver(key, message, send), name=f"{self._what} {key!r}"
        )
        self._pending[key] = send
        if len(self._pending) >= self._max_pending:
            self._room.clear()
        return True

    def backlog(self) -> int:
        return len(self._pending)

    async def wait_for_room(self) -> None:
        """Wait while ``max_pending`` mails are being sent: memory stays bounded in a long outage."""
        await self._room.wait()

    def hold(self) -> None:
        """Start no SMTP transaction from now on: sends waiting (for a retry or a connection) end
        at once, unsettled; a send in the middle of one finishes it, and settles if it went
        through. Used at a rebalance, so a mail the server took is recorded before the hand-over."""
        for send in self._pending.values():
            send.stopped = True
            if not send.attempting:
                send.task.cancel()

    async def drain(self, timeout: float) -> list[str]:
        """``hold``, wait up to ``timeout`` seconds for the SMTP transactions under way to end,
        then cancel what is left. Returns the keys that did not settle."""
        pending = {key: send.task for key, send in self._pending.items()}
        self.hold()
        if pending:
            await asyncio.wait(pending.values(), timeout=timeout)
        for task in pending.values():
            task.cancel()
        ended = await asyncio.gather(*pending.values(), return_exceptions=True)
        return [key for key, settled in zip(pending, ended, strict=True) if settled is not True]

    def stop_sending(self) -> list[str]:
        """Cancel every mail being sent, at once (callable where nothing may be awaited); returns
        their keys. None of them is reported settled."""
        for send in self._pending.values():
            send.stopped = True
            send.task.cancel()
        return list(self._pending)

    async def stopped(self) -> list[str]:
        """``stop_sending`` and wait until those sends have ended; returns their keys."""
        pending = dict(self._pending)
        self.stop_sending()
        await asyncio.gather(*(send.task for send in pending.values()), return_exceptions=True)
        return list(pending)

    async def close(self, grace: float = 0.0) -> list[str]:
        """Stop, after waiting up to ``grace`` seconds for pending mail. Returns the keys never sent."""
        self._closed = True  # also ends a retry loop whose cancellation was lost (asyncio.wait_for on 3.11)
        pending = {key: send.task for key, send in self._pending.items()}
        if grace > 0 and pending:
            await asyncio.wait(pending.values(), timeout=grace)
        for task in pending.values():
            task.cancel()
        settled = await asyncio.gather(*pending.values(), return_exceptions=True)
        unsent = [key for key, done in zip(pending, settled, strict=True) if done is not True]
        if unsent:
            log.warning("%s outbox closed with %d unsent: %r", self._what, len(unsent), unsent)
        return unsent

    def _sending_stopped(self, send: _Send) -> bool:
        return send.stopped or self._closed or not self._may_send()

    async def _deliver(self, key: str, message: EmailMessage, send: _Send) -> bool:
        """True once the key is settled (sent, failed or given up, and reported); False if stopped first."""
        try:
            recipients: list[str] | None = None  # None: everyone the message is addressed to
            accepted: list[str] = []
            refused: dict[str, str] = {}
            attempts = 0
            while True:
                async with self._connections:
                    if self._sending_stopped(send):  # looked at again after waiting for a connection
                        return False
                    send.attempting = True
                    try:
                        result = await self._attempt(message, recipients)
                    finally:
                        send.attempting = False
                attempts += 1
                accepted += result.accepted
                refused.update(result.refused)
                if result.permanent_error and recipients is not None:
                    # Others already have their copy; those still waiting are refused, not dropped.
                    refused.update(dict.fromkeys(recipients, result.permanent_error))
                if not result.needs_retry:
                    break
                if self._sending_stopped(send):
                    return False
                if result.deferred and not result.transient_error:
                    recipients = list(result.deferred)  # the others have their copy already
                why = result.transient_error or _deferred(result.deferred)
                verdict = after_failed_attempt(send.requested_at, self._clock(), attempts, self._policy, self._rng())
                if isinstance(verdict, GiveUp):
                    if refused:
                        await _call(self._on_refused, key, refused)
                    had_it = f"{len(accepted)} recipient(s) had it; " if accepted else ""
                    reason = f"not delivered in {_age(verdict.age)} ({attempts} attempts; {had_it}last: {why})"
                    log.error("%s %r: given up: %s", self._what, key, reason)
                    await _call(self._on_given_up, key, reason)
                    return True
                if attempts in (1, 10) or attempts % 100 == 0:
                    log.warning(
                        "%s %r: attempt %d failed (%s); next in %.2fs", self._what, key, attempts, why, verdict.seconds
                    )
                await _call(self._on_retry, key, attempts, why)
                await asyncio.sleep(verdict.seconds)
            if refused:
                await _call(self._on_refused, key, refused)
            if accepted:
                log.info("%s %r: sent (%d accepted) in %d attempt(s)", self._what, key, len(accepted), attempts)
                await _call(self._on_sent, key)
            else:
                reason = result.permanent_error or f"{EVERY_RECIPIENT_REFUSED}: {refused}"
                log.error("%s %r: not sent: %s", self._what, key, reason)
                await _call(self._on_failed, key, reason)
            return True
        finally:
            if self._pending.get(key) is send:
                del self._pending[key]
                if len(self._pending) < self._max_pending:
                    self._room.set()

    async def _attempt(self, message: EmailMessage, recipients: list[str] | None) -> SendResult:
        try:
            return await self._mailer.send(message, recipients)
        except Exception as error:  # a mailer bug: retrying cannot fix it, so report it, don't spin
            log.exception("mail sender raised instead of returning a result")
            return SendResult(permanent_error=f"{type(error).__name__}: {one_line(error, 200)}")


@dataclass
class _Send:
    """One mail being sent: its task and whether it was told to stop."""

    requested_at: datetime
    task: asyncio.Task[bool] = field(init=False)
    stopped: bool = False
    attempting: bool = False  # in an SMTP transaction


def _deferred(deferred: Mapping[str, str]) -> str:
    # A count and a reply, no addresses: this text goes into logs and dead-letter records.
    return f"{len(deferred)} recipient(s) deferred: {next(iter(deferred.values()), '')}"


def _age(age: timedelta) -> str:
    seconds = age.total_seconds()
    return f"{seconds / 3600:.1f}h" if seconds >= 3600 else f"{seconds:.1f}s"


async def _call(callback: Callable[..., Any] | None, *args: Any) -> None:
    if callback is None:
        return
    try:
        outcome = callback(*args)
        if inspect.isawaitable(outcome):
            await outcome
    except Exception:  # the caller's bookkeeping failing must not kill the outbox
        log.exception("mail outbox callback %r failed", getattr(callback, "__name__", callback))
