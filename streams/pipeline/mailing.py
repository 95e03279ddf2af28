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
their ledger entries written, so the committed position never passes a mail still being sent.
Every rebalance stops every send on this worker before the partitions are given up, and forgets
them: the requests are delivered again from the committed offsets, to whichever worker owns them
next. The agent, ledger and rebalance handling are those of every delivery (``deliveries.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from faust.types import EventT

from ...core.rejections import RejectCode
from ...models.outputs import ALERT, mail_id, recipient_mail_id
from ...sinks.email import (
    EVERY_RECIPIENT_REFUSED,
    SMTP_TRANSACTION_SECONDS,
    MailCompositionError,
    SmtpMailer,
    compose_alert_mail,
    compose_fin_disabled_mail,
    mail_recipients,
    one_line,
    smtp_tls_context,
)
from ...sinks.outputs import Sinks
from ..runtime.commit_gate import acknowledge
from .deliveries import Deliveries, decoded, owner_key, publish_dead_letter, register_agent

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


def register(mw: Meterwatch) -> None:
    from ...worker import StartupError

    settings = mw.settings
    if not settings.smtp_host:
        return
    try:
        mailer = SmtpMailer(settings, tls_context=smtp_tls_context(settings))
    except ValueError as error:
        raise StartupError(str(error)) from None
    register_agent(mw, Mailing(mw, mailer), mw.channels.mail_requests, "mail_billing_contacts")


class Mailing(Deliveries):
    """The mail agent's state on this worker: the outbox and the requests whose mail it sends."""

    what = "mail"
    stage = "mail_billing_contacts"

    def __init__(self, mw: Meterwatch, mailer: SmtpMailer) -> None:
        super().__init__(
            mw,
            mw.tables.mails_sent,
            mailer,
            give_up_after=mw.settings.mail_give_up_after,
            retries=mw.metrics.email_retries,
            backlog=mw.metrics.mail_backlog,
            handover_seconds=HANDOVER_MAIL_SECONDS,
            max_pending=MAX_PENDING_MAILS,
        )

    async def take_one(self, event: EventT, sinks: Sinks) -> None:
        ledger = self.ledger
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
        await self.start(event, mails)

    async def _hold_back(self, event: EventT, sinks: Sinks, request_id: str, request: dict[str, Any]) -> None:
        """A request over its workspace's hourly cap (core/mail_cap.py): none of its mails is
        sent; it is dead-lettered (``mail_rate_limited``), counted, logged and recorded settled."""
        mails = len(request.get("recipients") or ())
        self.mw.metrics.emails_held_back.inc(mails)
        reason = one_line(request["held_back"], 300)
        log.warning("mail %r held back (%d mail(s)): %s", one_line(request_id), mails, reason)
        text = f"mail {request_id} held back: {reason}"
        await publish_dead_letter(sinks, event, RejectCode.MAIL_RATE_LIMITED, text, self.dead_letter_key(event))
        await self.ledger.write(request_id, b"failed: held back")
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
        await self.settle(key, b"sent")

    async def _failed(self, key: str, reason: str) -> None:
        if not reason.startswith(EVERY_RECIPIENT_REFUSED):  # those are counted as `refused`
            self.mw.metrics.emails_failed.labels("permanent").inc()
        await self.settle(key, b"failed: permanent")

    def _refused(self, key: str, refused: Mapping[str, str]) -> None:
        self.mw.metrics.emails_failed.labels("refused").inc(len(refused))
        log.warning("SMTP server refused %d recipient(s) of mail %r; they are not retried", len(refused), key)

    async def _given_up(self, key: str, reason: str) -> None:
        self.mw.metrics.emails_failed.labels("given_up").inc()
        await self.settle(key, b"failed: given up", (RejectCode.MAIL_GIVEN_UP, f"mail {key} given up: {reason}"))

    def dead_letter_key(self, event: EventT) -> str | None:
        return owner_key(decoded(event.message.value, "record"))
