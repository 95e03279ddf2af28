"""Webhooks: every alert, Fin transition and notification posted, signed, to each endpoint of
``METERWATCH_WEBHOOK_URLS`` (CONTRACT 5.7), in an agent of its own, decoupled from counting.

Where a request comes from: the stage that publishes an alert, transition or notification also
publishes, through the same sinks and in the same batch (under exactly_once, the same
transaction), a webhook request carrying the record's bytes to the internal webhook-requests
topic (``sinks/webhook.py``). The record and its request are therefore published together or not
at all: a record on its topic always has a request, and a batch given up and read again publishes
the same record under the same id, which the ledger below recognises.

How it is delivered: this agent makes one delivery of each request for each endpoint, under the
ledger key of the record's id and the endpoint (``core.webhooks.delivery_key``), and hands it to
an outbox (``sinks/email.MailOutbox`` with an HTTP sender) that posts each in a task of its own,
retrying connection errors, timeouts, 5xx, 408, 425 and 429 with backoff and jitter; so an
endpoint that is down or slow holds up no other endpoint and no other record. A 4xx other than
those is refused for good (``webhook_refused``); a delivery still failing for now
``METERWATCH_WEBHOOK_GIVE_UP_AFTER`` after it was requested is given up (``webhook_given_up``);
both are dead-lettered and counted.

Why nothing is lost or repeated once settled: the webhooks-sent ledger records each delivery
(sent, refused or given up) before its request's offset is acknowledged, and the offset is
committed only once every delivery of the request is settled (``deliveries.py``). A crash or a
rebalance before that leaves the request uncommitted: it is read again and only the deliveries
without a ledger entry are made, so an endpoint may receive a record again only if its attempt
was under way when the worker died (at-least-once; ``X-Meterwatch-Id`` is the receiver's
idempotency key). A settled delivery is never made again, by this worker or the next owner.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson
from faust.types import EventT

from ...core.rejections import RejectCode
from ...core.webhooks import delivery_key
from ...sinks.outputs import Sinks
from ...sinks.webhook import WEBHOOK_ATTEMPT_SECONDS, Delivery, WebhookSender, webhook_tls_context
from .deliveries import Deliveries, decoded, owner_key, register_agent

if TYPE_CHECKING:
    from ..app import Meterwatch

log = logging.getLogger(__name__)

# Deliveries being made at once on one worker; the agent waits for room beyond that, so a long
# outage costs bounded memory (lag on the webhook-requests topic grows instead).
MAX_PENDING_WEBHOOKS = 1000
# POSTs in flight at once: enough that endpoints timing out leave room for the others.
MAX_CONCURRENT_POSTS = 32
HANDOVER_WEBHOOK_SECONDS = WEBHOOK_ATTEMPT_SECONDS + 1.0


def register(mw: Meterwatch) -> None:
    from ...worker import StartupError

    settings = mw.settings
    if not settings.webhook_endpoints or settings.webhook_secret is None:
        return
    try:
        context = webhook_tls_context(settings)
    except ValueError as error:
        raise StartupError(str(error)) from None
    sender = WebhookSender(settings.webhook_secret.get_secret_value().encode(), ssl_context=context)
    register_agent(mw, Webhooks(mw, sender), mw.channels.webhook_requests, "post_webhooks")


class Webhooks(Deliveries):
    """The webhook agent's state on this worker: the outbox and the requests it posts."""

    what = "webhook"
    stage = "post_webhooks"

    def __init__(self, mw: Meterwatch, sender: WebhookSender) -> None:
        super().__init__(
            mw,
            mw.tables.webhooks_sent,
            sender,
            give_up_after=mw.settings.webhook_give_up_after,
            retries=mw.metrics.webhook_retries,
            backlog=mw.metrics.webhook_backlog,
            handover_seconds=HANDOVER_WEBHOOK_SECONDS,
            max_pending=MAX_PENDING_WEBHOOKS,
            max_concurrent_sends=MAX_CONCURRENT_POSTS,
        )

    async def take_one(self, event: EventT, sinks: Sinks) -> None:
        request = orjson.loads(event.message.value)
        event_name, record_id, body = request["event"], request["id"], request["body"].encode()
        await self.start(
            event,
            {
                delivery_key(record_id, url): Delivery(url, event_name, record_id, body)
                for url in self.mw.settings.webhook_endpoints
            },
        )

    async def _sent(self, key: str) -> None:
        self.mw.metrics.webhooks_sent.inc()
        await self.settle(key, b"sent")

    async def _failed(self, key: str, reason: str) -> None:
        self.mw.metrics.webhooks_failed.labels("refused").inc()
        await self.settle(key, b"failed: refused", (RejectCode.WEBHOOK_REFUSED, f"webhook {key} refused: {reason}"))

    async def _given_up(self, key: str, reason: str) -> None:
        self.mw.metrics.webhooks_failed.labels("given_up").inc()
        await self.settle(key, b"failed: given up", (RejectCode.WEBHOOK_GIVEN_UP, f"webhook {key} given up: {reason}"))

    def dead_letter_key(self, event: EventT) -> str | None:
        body = decoded(event.message.value, "body")
        return owner_key(orjson.loads(body)) if isinstance(body, str) else None
