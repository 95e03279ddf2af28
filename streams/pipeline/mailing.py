"""Email to billing contacts, in its own agent, decoupled from counting (CONTRACT 4, 5.6).

Counting publishes a mail request (the alert or transition record plus its recipients) to an
internal topic; this agent makes one mail of it for each recipient, addressed to that recipient
only, and hands each to an outbox that sends every mail in a task of its own, retrying SMTP
failures with backoff and jitter, so a mail that keeps failing (or a recipient whose server
defers it) holds up no other. A mail still failing ``METERWATCH_MAIL_GIVE_UP_AFTER`` after it
was requested is given up: dead-lettered (``mail_given_up``) and counted. A ledger table keyed
by the alert or transition id and the recipient (``recipient_mail_id``) remembers which mails
were settled (sent, failed or given up), so after a restart or a rebalance a settled mail is
not sent again and an unsettled one is. A ledger entry under the bare alert or transition id
settles every recipient of that request: a failed composition is recorded so.

A request's offset is acknowledged only once the mails to all its recipients are settled and
their ledger entries written, so the committed position never passes a mail still being sent. Every rebalance stops every
send on this worker before the partitions are given up, and forgets them: the requests are
delivered again from the committed offsets, to whichever worker owns them next.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import faust
import orjson
from faust.types import EventT

from ...core.mail_retry import RetryPolicy
from ...core.rejections import RejectCode
from ...models.outputs import ALERT, Kind, Output, dead_letter, mail_id, recipient_mail_id
from ...sinks.email import (
    EVERY_RECIPIENT_REFUSED,
    SMTP_TRANSACTION_SECONDS,
    MailOutbox,
    SmtpMailer,
    smtp_tls_context,
)
from ...sinks.mail_text import (
    MailCompositionError,
    compose_alert_mail,
    compose_fin_disabled_mail,
    mail_recipients,
    one_line,
)
from ...sinks.outputs import Sinks, compose
from ..runtime.batches import by_source_partition, finish
from ..runtime.commit_gate import acknowledge
from ..runtime.consumer import before_handover
from ..runtime.partition_context import acting_for
from .dead_letters import dead_letter_failure

if TYPE_CHECKING:
    from email.message import EmailMessage

    from ..app import Meterwatch

log = logging.getLogger(__name__)

# Mails being sent at once on one worker; the agent waits for room beyond that, so a long
# outage costs bounded memory (lag on the mail-requests topic grows instead).
MAX_PENDING_MAILS = 1000
# At a rebalance, how long the SMTP transactions under way are waited for before the hand-over:
# longer than one may take, so each has ended, and settled if its mail went through.
HANDOVER_MAIL_SECONDS = SMTP_TRANSACTION_SECONDS + 1.0


def requested_at(event: EventT) -> datetime:
    """When the mail was requested: its request's Kafka timestamp, the same for every worker."""
    timestamp = event.message.timestamp
    return datetime.fromtimestamp(timestamp, UTC) if timestamp and timestamp > 0 else datetime.now(UTC)


def register(mw: Meterwatch) -> None:
    from ...worker import StartupError

    settings = mw.settings
    if not settings.smtp_host:
        return
    try:
        mailer = SmtpMailer(settings, tls_context=smtp_tls_context(settings))
    except ValueError as error:
        raise StartupError(str(error)) from None
    mailing = Mailing(mw, mailer)
    mw.app.sensors.add(StopMailAtRebalance(mailing))
    before_handover(mw.app, mailing.settle_before_handover)

    @mw.app.on_partitions_revoked.connect
    async def stop_mail_of_revoked_partitions(app: Any, revoked: Any, **kwargs: Any) -> None:
        await mailing.stop()

    @mw.app.agent(mw.channels.mail_requests, name=f"{settings.group_id}.mail_billing_contacts")
    async def mail_billing_contacts(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(50, within=0.1):
            await mailing.take(events)


class StopMailAtRebalance(faust.Sensor):
    """Faust calls ``on_rebalance_start`` before it commits and gives up any partition: from then
    on no SMTP transaction starts; those under way end, and settle, before the commit that
    precedes the hand-over (``Mailing.settle_before_handover``)."""

    def __init__(self, mailing: Mailing) -> None:
        super().__init__()
        self._mailing = mailing

    def on_rebalance_start(self, app: faust.App) -> dict:
        self._mailing.stop_now()
        return {}


class Mailing:
    """The mail agent's state on this worker: the outbox and the requests whose mail it sends."""

    def __init__(self, mw: Meterwatch, mailer: SmtpMailer) -> None:
        self.mw = mw
        metrics = mw.metrics
        self.outbox = MailOutbox(
            mailer,
            on_sent=self._sent,
            on_failed=self._failed,
            on_refused=self._refused,
            on_given_up=self._given_up,
            on_retry=lambda key, attempts, why: metrics.email_retries.inc(),
            policy=RetryPolicy(give_up_after=mw.settings.mail_give_up_after),
            max_pending=MAX_PENDING_MAILS,
            may_send=self._may_send,
        )
        metrics.mail_backlog.set_function(self.outbox.backlog)
        # ledger key of one recipient's mail -> the requests waiting for it (more than one when
        # it was requested again meanwhile); a request is acknowledged once every one of its
        # mails is settled.
        self._requests: dict[str, list[_Request]] = {}

    def _may_send(self) -> bool:
        """No send starts while a rebalance (with its table recovery) runs or after transactions
        were lost: the partitions may be another worker's by now."""
        return not self.mw.commit_gate.shut and not self.mw.app.rebalancing

    def _owns(self, event: EventT) -> bool:
        return self._may_send() and event.message.tp in self.mw.app.consumer.assignment()

    def stop_now(self) -> None:
        self.outbox.hold()

    async def settle_before_handover(self) -> None:
        """Let the SMTP transactions under way end and record what they sent, so that the commit
        before the hand-over covers them; whatever has not settled by then is left to the next
        owner (unacknowledged, it is read again from the committed offset)."""
        unsettled = await self.outbox.drain(HANDOVER_MAIL_SECONDS)
        self._requests.clear()
        if unsettled:
            log.info("rebalance: %d mail(s) not settled; they are sent by the partitions' next owner", len(unsettled))

    async def stop(self) -> None:
        stopped = await self.outbox.stopped()
        self._requests.clear()
        if stopped:
            log.info(
                "rebalance: %d mail(s) being sent stopped; they are sent by the partitions' next owner", len(stopped)
            )

    async def take(self, events: list[EventT]) -> None:
        mw = self.mw
        async with mw.commit_gate.outside_batches() as admitted:
            if admitted:
                sinks = compose(mw.channels)
                for _, part in by_source_partition(events):
                    for event in part:
                        if not self._owns(event):
                            # Delivered again after the rebalance, to this worker or another.
                            _keep_unacknowledged(event)
                            continue
                        try:
                            await self._take_one(event, sinks)
                        except Exception as error:
                            await dead_letter_failure(mw, sinks, "mail_billing_contacts", event, error)
                            acknowledge(mw.app, [event])
                await finish(mw, sinks)

    async def _take_one(self, event: EventT, sinks: Sinks) -> None:
        ledger = self.mw.tables.mails_sent
        request = orjson.loads(event.message.value)
        request_id = mail_id(request["kind"], request["record"])
        # Settled as a whole: a failed composition, or one mail to all its recipients recorded
        # under the bare id.
        if ledger.get(request_id) is not None:
            acknowledge(self.mw.app, [event])
            return
        if request.get("held_back") is not None:
            await self._hold_back(event, sinks, request_id, request)
            return
        try:
            mails = self._compose(request_id, request)
        except MailCompositionError as error:
            self.mw.metrics.emails_failed.labels("composition").inc()
            log.warning("mail not sent: %s", error)
            await ledger.write(request_id, b"failed: composition")
            acknowledge(self.mw.app, [event])
            return
        # Each recipient's mail settled before a restart or rebalance is not sent again.
        unsettled = {key: mail for key, mail in mails.items() if ledger.get(key) is None}
        if not unsettled:
            acknowledge(self.mw.app, [event])
            return
        await self.outbox.wait_for_room()
        if not self._owns(event):
            _keep_unacknowledged(event)
            return
        # One more reference: take_events' own acknowledgement of the batch is then not the
        # last, and the offset stays uncommitted until every one of its mails is settled.
        event.message.incref()
        waiting = _Request(event, set(unsettled))
        for key, message in unsettled.items():
            requests = self._requests.get(key)
            if requests is not None:  # requested again while being sent: settled with the first
                requests.append(waiting)
                continue
            self._requests[key] = [waiting]
            self.outbox.put(key, message, requested_at(event))

    async def _hold_back(self, event: EventT, sinks: Sinks, request_id: str, request: dict[str, Any]) -> None:
        """A request over its workspace's hourly cap (core/mail_cap.py): none of its mails is
        sent; it is dead-lettered (``mail_rate_limited``), counted, logged and recorded settled."""
        mails = len(request.get("recipients") or ())
        self.mw.metrics.emails_held_back.inc(mails)
        reason = one_line(request["held_back"], 300)
        log.warning("mail %r held back (%d mail(s)): %s", one_line(request_id), mails, reason)
        record = _mail_dead_letter(event, RejectCode.MAIL_RATE_LIMITED, f"mail {request_id} held back: {reason}")
        await sinks.publish((Output(Kind.DEAD_LETTER, _record_key(event), record),))
        await self.mw.tables.mails_sent.write(request_id, b"failed: held back")
        acknowledge(self.mw.app, [event])

    def _compose(self, request_id: str, request: dict[str, Any]) -> dict[str, EmailMessage]:
        """Ledger key -> the mail to one recipient only, for each valid recipient."""
        sender, record = self.mw.settings.smtp_from, request["record"]
        if request["kind"] == ALERT:
            recipients, compose = record.get("recipients"), compose_alert_mail
        else:
            recipients, compose = request["recipients"], compose_fin_disabled_mail
        return {
            recipient_mail_id(request_id, recipient): compose(record, recipient, sender=sender)
            for recipient in mail_recipients(request_id, recipients)
        }

    async def _sent(self, key: str) -> None:
        self.mw.metrics.emails_sent.inc()
        await self._settle(key, b"sent")

    async def _failed(self, key: str, reason: str) -> None:
        if not reason.startswith(EVERY_RECIPIENT_REFUSED):  # those are counted as `refused`
            self.mw.metrics.emails_failed.labels("permanent").inc()
        await self._settle(key, b"failed: permanent")

    def _refused(self, key: str, refused: Mapping[str, str]) -> None:
        self.mw.metrics.emails_failed.labels("refused").inc(len(refused))
        log.warning("SMTP server refused %d recipient(s) of mail %r; they are not retried", len(refused), key)

    async def _given_up(self, key: str, reason: str) -> None:
        self.mw.metrics.emails_failed.labels("given_up").inc()
        await self._settle(key, b"failed: given up", given_up=reason)

    async def _settle(self, key: str, outcome: bytes, given_up: str | None = None) -> None:
        """Record the outcome in the ledger (and dead-letter a mail given up), then acknowledge
        its requests: never the other way round, so a crash in between sends it again rather
        than forgetting it."""
        requests = self._requests.get(key)
        if not requests:
            return  # stopped by a rebalance meanwhile
        mw = self.mw
        async with mw.commit_gate.outside_batches() as admitted:
            if not admitted:
                return  # transactions lost: delivered again after the rebalance
            first = requests[0].event
            with acting_for(first):
                sinks = compose(mw.channels)
                if given_up is not None:
                    record = _mail_dead_letter(first, RejectCode.MAIL_GIVEN_UP, f"mail {key} given up: {given_up}")
                    await sinks.publish((Output(Kind.DEAD_LETTER, _record_key(first), record),))
                await mw.tables.mails_sent.write(key, outcome)
                await sinks.flush()
            if self._requests.get(key) is requests:
                del self._requests[key]
                acknowledge(mw.app, [request.event for request in requests if request.settled(key)])


@dataclass
class _Request:
    """A mail request being served: its event and the ledger keys of its mails not yet settled."""

    event: EventT
    unsettled: set[str] = field(default_factory=set)

    def settled(self, key: str) -> bool:
        """Note that the mail under ``key`` is settled; True once all of this request's are."""
        self.unsettled.discard(key)
        return not self.unsettled


def _keep_unacknowledged(event: EventT) -> None:
    """Hold ``event``'s offset back from the commit: ``take_events`` acknowledges every event of
    its batch when the batch ends, and an offset committed past a mail that was never sent would
    lose it. The rebalance under way reads it again from the committed offset."""
    event.message.incref()


def _record_key(event: EventT) -> str | None:
    """The dead letter's key, as for every output: the workspace (or, contract scope, the contract)."""
    try:
        record = orjson.loads(event.message.value)["record"]
        return record.get("workspace_id") or record.get("contract_id")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None


def _mail_dead_letter(event: EventT, code: str, text: str) -> dict[str, Any]:
    message = event.message
    return dead_letter(
        source_topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,  # the request (record and recipients); never the mail's body
        code=code,
        message=text,
        at=datetime.now(UTC),
    )
