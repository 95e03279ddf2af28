"""What a webhook delivery is, decided without I/O: the event name and id of each output, the
signature header, the ledger key of one record to one endpoint, and what an HTTP answer means.

The retry schedule is the mail's (``core/mail_retry.py``): full-jitter exponential backoff,
given up at an age counted from when the delivery was requested.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum
from typing import Any

# Output kind (``models.outputs.Kind`` value) -> the ``X-Meterwatch-Event`` name and the record
# field that carries its id (``X-Meterwatch-Id``, the receiver's idempotency key).
EVENTS: dict[str, tuple[str, str]] = {
    "alerts": ("alert", "alert_id"),
    "limits": ("limit", "transition_id"),
    "notifications": ("notification", "notification_id"),
}


def event_and_id(kind: str, record: dict[str, Any]) -> tuple[str, str]:
    """The event name and id of an output of ``kind``; KeyError for a kind not delivered."""
    event, id_field = EVENTS[kind]
    return event, str(record[id_field])


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Meterwatch-Signature`` value: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def delivery_key(record_id: str, url: str) -> str:
    """The ledger key of record ``record_id`` to the endpoint ``url``: each endpoint's delivery
    is settled on its own. The URL enters only as a hash, so keys, logs and dead letters carry
    no endpoint address (which may hold a token)."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return f"{record_id} to {digest}"


class Answer(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # failed for now: tried again with backoff until given up
    REFUSED = "refused"  # failed for good: never tried again


# Statuses that mean "not now": timeouts on the receiver's side, too early, too many requests.
_RETRIED_4XX = frozenset({408, 425, 429})


def classify(status: int) -> Answer:
    """What the receiver's HTTP status means for the delivery. 2xx delivered; 5xx, 408, 425 and
    429 retried; any other 4xx refused; anything else (1xx, a redirect, which is not followed)
    retried, so that a misconfigured endpoint receives the record once it is corrected."""
    if 200 <= status < 300:
        return Answer.DELIVERED
    if 400 <= status < 500 and status not in _RETRIED_4XX:
        return Answer.REFUSED
    return Answer.RETRY
