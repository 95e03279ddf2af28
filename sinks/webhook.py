"""Webhooks: the sink that asks for each alert, Fin transition and notification to be posted,
and the HTTP sender that makes one signed POST of it.

``WebhookRequestSink`` publishes, beside each such output, a request on the internal
webhook-requests topic carrying the record's bytes exactly as they go to its topic; the webhook
agent (``streams/pipeline/webhooks.py``) posts them. ``WebhookSender.send`` makes one attempt and
says what happened in a ``SendResult``, so the mail outbox (``sinks/email.py``) runs its retries.
Neither logs the secret, an endpoint's URL or a body.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import orjson

from ..config.settings import Settings
from ..core.webhooks import Answer, classify, event_and_id, signature
from ..models.common import dumps
from ..models.outputs import Kind, Output
from .email import SendResult, ca_file_context, one_line

if TYPE_CHECKING:
    from .outputs import KafkaSink

log = logging.getLogger(__name__)

# The longest one POST may take, from connecting to the receiver's status line; past it the
# attempt failed for now and is retried. A rebalance waits this long for the POSTs under way.
WEBHOOK_ATTEMPT_SECONDS = 10.0

_DELIVERED_KINDS = frozenset({Kind.ALERT, Kind.FIN_TRANSITION, Kind.NOTIFICATION})


class WebhookRequestSink:
    """For each alert, Fin transition and notification, a webhook request published through
    ``kafka`` (the batch's Kafka sink, which flushes it with the output itself)."""

    def __init__(self, kafka: KafkaSink) -> None:
        self._kafka = kafka

    async def publish(self, output: Output) -> None:
        if output.kind not in _DELIVERED_KINDS:
            return
        record = output.record
        body = record if isinstance(record, bytes) else dumps(record)
        event, record_id = event_and_id(output.kind.value, orjson.loads(body) if isinstance(record, bytes) else record)
        await self._kafka.publish(Output(Kind.WEBHOOK_REQUEST, record_id, webhook_request(event, record_id, body)))

    async def flush(self) -> None:
        pass  # the Kafka sink flushes what this published


def webhook_request(event: str, record_id: str, body: bytes) -> bytes:
    """A webhook-requests record: the event name, the id and the body to post, as text."""
    return orjson.dumps({"event": event, "id": record_id, "body": body.decode()})


@dataclass(frozen=True)
class Delivery:
    """One record to one endpoint."""

    url: str
    event: str
    record_id: str
    body: bytes

    def __repr__(self) -> str:  # no URL (it may carry a token), no body
        return f"Delivery({self.event} {self.record_id!r})"


class WebhookSender:
    """One connection per POST (webhooks are as rare as alerts, and a fresh connection has no
    stale state); each ``send`` is one signed POST, never following a redirect."""

    def __init__(
        self,
        secret: bytes,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = WEBHOOK_ATTEMPT_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret, self._ssl, self._clock = secret, ssl_context, clock
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def __repr__(self) -> str:
        return "WebhookSender()"

    async def send(self, delivery: Delivery, recipients: Sequence[str] | None = None) -> SendResult:
        """One POST of ``delivery``; ``recipients`` is the mail outbox's and unused."""
        headers = {
            "Content-Type": "application/json",
            "X-Meterwatch-Id": delivery.record_id,
            "X-Meterwatch-Event": delivery.event,
            "X-Meterwatch-Signature": signature(self._secret, int(self._clock()), delivery.body),
        }
        try:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True, force_close=True)
            async with (
                aiohttp.ClientSession(connector=connector, timeout=self._timeout) as session,
                session.post(delivery.url, data=delivery.body, headers=headers, allow_redirects=False) as response,
            ):
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as error:  # OSError covers TLS failures
            return SendResult(transient_error=f"{type(error).__name__}: {one_line(error, 200)}")
        answer = classify(status)
        if answer is Answer.DELIVERED:
            return SendResult(accepted=("endpoint",))
        reason = f"HTTP {status}"
        return SendResult(permanent_error=reason) if answer is Answer.REFUSED else SendResult(transient_error=reason)


def webhook_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context trusting the CAs in ``METERWATCH_WEBHOOK_CA_FILE``, or None for the system's."""
    return ca_file_context("METERWATCH_WEBHOOK_CA_FILE", settings.webhook_ca_file)
