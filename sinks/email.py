"""Sending alert mail over SMTP, retried in the background so counting never waits for it.

``SmtpMailer.send`` makes one attempt and says what happened to each recipient;
``MailOutbox`` owns the retries. Neither logs the password or a mail's body.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from typing import Any, Protocol

import aiosmtplib

from ..config.settings import Settings
from ..core.mail_retry import Backoff, GiveUp, RetryPolicy, after_failed_attempt
from .mail_text import one_line, sender_address

log = logging.getLogger(__name__)


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
