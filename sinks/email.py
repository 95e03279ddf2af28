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
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from typing import Any, Protocol

import aiosmtplib

from ..config.settings import Settings
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


class SmtpMailer:
    """One connection per send: alert mail is rare, and a fresh connection has no stale state."""

    def __init__(self, settings: Settings, *, timeout: float = 30.0, tls_context: ssl.SSLContext | None = None) -> None:
        if not settings.smtp_host:
            raise ValueError("METERWATCH_SMTP_HOST is not set: email is off")
        self.host, self.port, self.starttls = settings.smtp_host, settings.smtp_port, settings.smtp_starttls
        self._username = settings.smtp_username
        self._password = settings.smtp_password  # a SecretStr, revealed only to the SMTP client
        self._sender = sender_address(settings.smtp_from).addr_spec
        self._timeout = timeout  # per SMTP command, so a stalled server cannot hold a send forever
        self._tls_context = tls_context  # for a private CA; None trusts the system's CAs

    def __repr__(self) -> str:
        return f"SmtpMailer({self.host}:{self.port}, starttls={self.starttls}, login={self._username is not None})"

    async def send(self, message: EmailMessage, recipients: Sequence[str] | None = None) -> SendResult:
        """One attempt to deliver ``message`` to ``recipients`` (default: its To)."""
        to = list(recipients if recipients is not None else (a for _, a in getaddresses(message.get_all("To", []))))
        if not to:
            return SendResult(permanent_error="the message has no recipients")
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self._timeout,
            start_tls=self.starttls,  # False means plain SMTP, never an opportunistic upgrade
            tls_context=self._tls_context,
            username=self._username,
            password=self._password.get_secret_value() if self._password else None,
        )
        try:
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


@dataclass(frozen=True)
class Backoff:
    base: float = 0.5
    cap: float = 60.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)), so retries never stampede."""
        return rng() * min(self.cap, self.base * 2 ** min(attempt, 64))


class MailOutbox:
    """Sends each key's mail once, in the background, retrying transient failures forever.

    ``on_sent(key)`` once at least one recipient accepted it and nothing is left to retry;
    ``on_failed(key, reason)`` when nobody can get it; ``on_refused(key, {address: reply})``
    before either when the server refused some addresses for good. Callbacks may be async.
    """

    def __init__(
        self,
        mailer: MailSender,
        *,
        on_sent: Callable[[str], Any],
        on_failed: Callable[[str, str], Any],
        on_refused: Callable[[str, Mapping[str, str]], Any] | None = None,
        backoff: Backoff | None = None,
        max_concurrent_sends: int = 4,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._mailer, self._backoff, self._rng = mailer, backoff or Backoff(), rng
        self._on_sent, self._on_failed, self._on_refused = on_sent, on_failed, on_refused
        self._connections = asyncio.Semaphore(max_concurrent_sends)  # a backlog must not flood the relay
        self._seen: set[str] = set()  # every key ever put: sent, pending or failed
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def put(self, key: str, message: EmailMessage) -> bool:
        """Queue ``message`` under ``key``; False if the key was put before. Never waits."""
        if self._closed:
            raise RuntimeError("the mail outbox is closed")
        if key in self._seen:
            return False
        self._seen.add(key)
        self._pending[key] = asyncio.get_running_loop().create_task(self._deliver(key, message), name=f"mail {key!r}")
        return True

    def backlog(self) -> int:
        return len(self._pending)

    async def close(self, grace: float = 0.0) -> list[str]:
        """Stop, after waiting up to ``grace`` seconds for pending mail. Returns the keys never sent."""
        self._closed = True  # also ends a retry loop whose cancellation was lost (asyncio.wait_for on 3.11)
        pending = dict(self._pending)
        if grace > 0 and pending:
            await asyncio.wait(pending.values(), timeout=grace)
        for task in pending.values():
            task.cancel()
        settled = await asyncio.gather(*pending.values(), return_exceptions=True)
        unsent = [key for key, done in zip(pending, settled, strict=True) if done is not True]
        if unsent:
            log.warning("mail outbox closed with %d unsent mail(s): %r", len(unsent), unsent)
        return unsent

    async def _deliver(self, key: str, message: EmailMessage) -> bool:
        """True once the key is settled (sent or failed, and reported); False if closed first."""
        try:
            recipients: list[str] | None = None  # None: everyone the message is addressed to
            accepted: list[str] = []
            refused: dict[str, str] = {}
            attempt = 0
            while True:
                async with self._connections:
                    result = await self._attempt(message, recipients)
                accepted += result.accepted
                refused.update(result.refused)
                if result.permanent_error and recipients is not None:
                    # Others already have their copy; those still waiting are refused, not dropped.
                    refused.update(dict.fromkeys(recipients, result.permanent_error))
                if not result.needs_retry:
                    break
                if self._closed:
                    return False
                if result.deferred and not result.transient_error:
                    recipients = list(result.deferred)  # the others have their copy already
                delay = self._backoff.delay(attempt, self._rng)
                attempt += 1
                why = result.transient_error or f"deferred {dict(result.deferred)}"
                log.warning("mail %r: attempt %d failed (%s); next in %.2fs", key, attempt, why, delay)
                await asyncio.sleep(delay)
            if refused:
                await _call(self._on_refused, key, refused)
            if accepted:
                log.info("mail %r: sent to %d recipient(s) in %d attempt(s)", key, len(accepted), attempt + 1)
                await _call(self._on_sent, key)
            else:
                reason = result.permanent_error or f"every recipient refused: {refused}"
                log.error("mail %r: not sent: %s", key, reason)
                await _call(self._on_failed, key, reason)
            return True
        finally:
            self._pending.pop(key, None)

    async def _attempt(self, message: EmailMessage, recipients: list[str] | None) -> SendResult:
        try:
            return await self._mailer.send(message, recipients)
        except Exception as error:  # a mailer bug: retrying cannot fix it, so report it, don't spin
            log.exception("mail sender raised instead of returning a result")
            return SendResult(permanent_error=f"{type(error).__name__}: {one_line(error, 200)}")


async def _call(callback: Callable[..., Any] | None, *args: Any) -> None:
    if callback is None:
        return
    try:
        outcome = callback(*args)
        if inspect.isawaitable(outcome):
            await outcome
    except Exception:  # the caller's bookkeeping failing must not kill the outbox
        log.exception("mail outbox callback %r failed", getattr(callback, "__name__", callback))
