"""Vocabulary shared by every message: metrics, identifiers, JSON codecs."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, AwareDatetime, StringConstraints


class Metric(str, enum.Enum):
    MESSAGES_SENT = "messages_sent"
    PHONE = "phone"
    SMS = "sms"
    WHATSAPP = "whatsapp"
    EMAIL = "email"
    FIN_RESOLUTIONS = "fin_resolutions"
    SEATS = "seats"


METRIC_NAMES: frozenset[str] = frozenset(m.value for m in Metric)

# Identifiers reach mail headers and topic keys: printable, no control characters.
_IDENTIFIER = r"^[^\x00-\x1f\x7f]+$"
EventId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_IDENTIFIER)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=_IDENTIFIER)]


def _utc(value: datetime) -> datetime:
    from datetime import timezone

    return value.astimezone(timezone.utc)


Timestamp = Annotated[AwareDatetime, AfterValidator(_utc)]


def iso(value: datetime) -> str:
    """RFC 3339 with an offset, as every timestamp on the wire."""
    return value.isoformat().replace("+00:00", "Z")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default)


def _default(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"cannot encode {type(value).__name__}")


loads = orjson.loads
