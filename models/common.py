"""Vocabulary shared by every message: metrics, identifiers, JSON codecs."""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, StringConstraints
from pydantic_core import PydanticCustomError

from ..core import metric_kinds


class Metric(str, enum.Enum):
    """The metrics of ``core.metric_kinds``, as the wire's vocabulary."""

    MESSAGES_SENT = metric_kinds.MESSAGES_SENT
    PHONE = metric_kinds.PHONE
    SMS = metric_kinds.SMS
    WHATSAPP = metric_kinds.WHATSAPP
    EMAIL = metric_kinds.EMAIL
    FIN_RESOLUTIONS = metric_kinds.FIN_RESOLUTIONS
    SEATS = metric_kinds.SEATS


METRIC_NAMES: frozenset[str] = frozenset(metric_kinds.METRIC_KINDS)

# The limits every validator of the wire applies: the pydantic models (usage_event.py,
# commands.py) and the usage events' fast path (usage_event.py), which must agree with them.
# Usage, quantities, thresholds and limits are counts that must survive JSON consumers that read
# numbers as doubles.
MAX_AMOUNT = 2**53 - 1
MAX_BATCH = 1_000  # events in one usage.events message
MAX_EVENT_ID = 128
MAX_IDENTIFIER = 256  # workspace, conversation, contract and command ids
# Identifiers reach mail headers and topic keys: printable, no control characters.
CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f"
_IDENTIFIER = f"^[^{CONTROL_CHARACTERS}]+$"
EventId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_EVENT_ID, pattern=_IDENTIFIER)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=MAX_IDENTIFIER, pattern=_IDENTIFIER)]


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


# Mail addresses: a recipient is rebuilt from these parts, so a comma, quote or bracket can never
# add one. The billing-contact commands and the mailer check the same way.
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_DOMAIN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_MAX_ADDRESS = 254  # RFC 5321 path limit


def valid_address(address: Any) -> bool:
    if not isinstance(address, str) or len(address) > _MAX_ADDRESS or address.count("@") != 1:
        return False
    local, domain = address.split("@")
    return bool(_LOCAL_PART.match(local) and _DOMAIN.match(domain))


def _rfc3339_text(value: Any) -> Any:
    # pydantic would also take epoch numbers and partial forms; the contract says RFC 3339.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise PydanticCustomError("rfc3339", "must be an RFC 3339 timestamp with an offset")
    return value


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-23:59 lies past year 9999 in UTC
        raise PydanticCustomError("rfc3339", "timestamp out of range once converted to UTC") from None


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text), AfterValidator(_utc)]


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
