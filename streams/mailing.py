"""Email to billing contacts, in its own agent, decoupled from counting (CONTRACT 4, 5.6).

Counting publishes a mail request (the alert or transition record plus its recipients) to an
internal topic; this agent sends each one, retrying SMTP failures with backoff and jitter for as
long as it takes, without holding up counting. A ledger table keyed by the alert or transition id
remembers what was sent, so after a restart a sent mail is not sent again and an unsent one is.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson
from faust.types import EventT

from ..sinks.email import Backoff, SmtpMailer
from ..sinks.kafka import TopicPublisher
from ..sinks.mail_text import MailCompositionError, compose_alert_mail, compose_fin_disabled_mail
from .batches import by_source_partition, finish
from .commit_gate import acknowledge
from .poison import dead_letter_failure

if TYPE_CHECKING:
    from .app import Meterwatch

log = logging.getLogger(__name__)

ALERT = "alert"
FIN_DISABLED = "fin_disabled"


def mail_request(kind: str, record: dict[str, Any], recipients: list[str]) -> bytes:
    return orjson.dumps({"kind": kind, "record": record, "recipients": recipients})


def mail_id(kind: str, record: dict[str, Any]) -> str:
    return record["alert_id"] if kind == ALERT else record["transition_id"]


def register(mw: Meterwatch) -> None:
    settings = mw.settings
    if not settings.smtp_host:
        return
    mailer = SmtpMailer(settings)
    backoff = Backoff()

    @mw.app.agent(mw.channels.mail_requests, name=f"{settings.group_id}.mail_billing_contacts")
    async def mail_billing_contacts(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(50, within=0.1):
            await send_batch(mw, mailer, backoff, events)


async def send_batch(mw: Meterwatch, mailer: SmtpMailer, backoff: Backoff, events: list[EventT]) -> None:
    async with mw.commit_gate.outside_batches() as admitted:
        if admitted:
            publisher = TopicPublisher()
            await _send_mails(mw, mailer, backoff, events, publisher)
            await finish(mw, publisher)


async def _send_mails(
    mw: Meterwatch, mailer: SmtpMailer, backoff: Backoff, events: list[EventT], publisher: TopicPublisher
) -> None:
    ledger = mw.tables.mails_sent
    for _, part in by_source_partition(events):
        for event in part:
            if mw.commit_gate.shut:
                return  # the rest is delivered again after the rebalance (streams/fencing.py)
            try:
                request = orjson.loads(event.message.value)
                key = mail_id(request["kind"], request["record"])
                if ledger.get(key) is None:  # else sent (or given up) before a restart
                    ledger[key] = await deliver(mw, mailer, backoff, request)
                    await ledger.wait_for_writes()
            except Exception as error:
                await dead_letter_failure(mw, publisher, "mail_billing_contacts", event, error)
            # SMTP has no transactions: a mail is out once the server took it. Its ledger entry
            # and its request's offset go to the next commit together, each mail on its own:
            # held to the end of the batch, a worker killed part-way through sent them all again.
            acknowledge(mw.app, [event])


async def deliver(mw: Meterwatch, mailer: SmtpMailer, backoff: Backoff, request: dict[str, Any]) -> bytes:
    """Send one mail; return what the ledger records: ``sent`` or ``failed: reason``."""
    metrics = mw.metrics
    sender = mw.settings.smtp_from
    try:
        if request["kind"] == ALERT:
            message = compose_alert_mail(request["record"], sender=sender)
        else:
            message = compose_fin_disabled_mail(request["record"], request["recipients"], sender=sender)
    except MailCompositionError as error:
        metrics.emails_failed.labels("composition").inc()
        log.warning("mail not sent: %s", error)
        return b"failed: composition"
    attempt = 0
    recipients = None
    metrics.mail_backlog.inc()
    try:
        while True:
            result = await mailer.send(message, recipients)
            if result.refused:
                metrics.emails_failed.labels("refused").inc(len(result.refused))
                log.warning("SMTP server refused %d recipient(s) of a mail; they are not retried", len(result.refused))
            if result.permanent_error is not None:
                metrics.emails_failed.labels("permanent").inc()
                log.warning("mail could not be sent: %s", result.permanent_error)
                return b"failed: permanent"
            if not result.needs_retry:
                if result.accepted:
                    metrics.emails_sent.inc()
                return b"sent"
            recipients = list(result.deferred) or recipients
            metrics.email_retries.inc()
            delay = backoff.delay(attempt)
            attempt += 1
            if attempt in (1, 10) or attempt % 100 == 0:
                log.warning("SMTP trouble (%s); retrying, attempt %d", result.transient_error or "deferred", attempt)
            await asyncio.sleep(delay)
    finally:
        metrics.mail_backlog.dec()
