"""``usage.events`` (CONTRACT 3.1): one usage event, or a batch of up to 1,000, read two ways.

``parse_usage_message`` is the validator: pydantic models that give the accepted events and the
exact rejection (code and message) of every dead letter.

``fast_rows`` is the fast path for the common, well-formed message. It accepts only messages
whose every event is beyond doubt valid, and gives each as a tuple of plain values, without
building a model per event. Anything else, however slightly unusual, is ``None``: the caller then
runs ``parse_usage_message``. The fast path is therefore never the one that rejects, and it may
only accept what ``parse_usage_message`` accepts, with the same values
(tests/unit/test_fast_usage.py proves it with generated messages).

Where the two could disagree, the fast path is the narrower: timestamps are the one common form
(``T``, upper-case ``Z``, at most six fractional digits, ASCII digits, hours, minutes and offsets
in range); pydantic's wider forms (``t``, a space, ``z``, seven to nine digits, which it
truncates) go the slow way.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, StrictInt, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from ..core.metric_kinds import SEATS
from ..core.rejections import RejectCode
from .common import (
    CONTROL_CHARACTERS,
    MAX_AMOUNT,
    MAX_BATCH,
    MAX_EVENT_ID,
    MAX_IDENTIFIER,
    METRIC_NAMES,
    EventId,
    Identifier,
    Metric,
    Timestamp,
)

_OWN_CODES = {
    RejectCode.ZERO_QUANTITY,
    RejectCode.QUANTITY_OUT_OF_RANGE,
    RejectCode.MISSING_CONVERSATION,
    RejectCode.INVALID_FIN_QUANTITY,
    RejectCode.NEGATIVE_SEATS,
}


def _huge_integral_is_out_of_range(value: Any) -> Any:
    # orjson reads integers beyond 64 bits as floats; they are integers, just far too large.
    if isinstance(value, float) and value.is_integer() and abs(value) > MAX_AMOUNT:
        raise PydanticCustomError(RejectCode.QUANTITY_OUT_OF_RANGE, "quantity must be within ±(2**53 - 1)")
    return value


class UsageEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: EventId
    workspace_id: Identifier
    metric: Metric
    quantity: Annotated[StrictInt, BeforeValidator(_huge_integral_is_out_of_range)]
    occurred_at: Timestamp
    conversation_id: Identifier | None = None

    @model_validator(mode="after")
    def _quantity_fits_metric(self) -> UsageEvent:
        q = self.quantity
        if abs(q) > MAX_AMOUNT:
            raise PydanticCustomError(RejectCode.QUANTITY_OUT_OF_RANGE, "quantity must be within ±(2**53 - 1)")
        if self.metric is Metric.SEATS:
            if q < 0:
                raise PydanticCustomError(RejectCode.NEGATIVE_SEATS, "seats must be 0 or more")
            return self
        if q == 0:
            raise PydanticCustomError(RejectCode.ZERO_QUANTITY, "quantity must not be 0")
        if self.metric is Metric.FIN_RESOLUTIONS:
            if self.conversation_id is None:
                raise PydanticCustomError(
                    RejectCode.MISSING_CONVERSATION, "fin_resolutions events need a conversation_id"
                )
            if q not in (1, -1):
                raise PydanticCustomError(RejectCode.INVALID_FIN_QUANTITY, "fin_resolutions quantity must be +1 or -1")
        return self


class Rejection(BaseModel):
    """Why one event (or a whole message) could not be accepted."""

    model_config = ConfigDict(frozen=True)

    code: str
    message: str
    # The rejected event alone, as JSON text; None when the whole message is rejected.
    value: bytes | None = None
    workspace_id: str | None = None


def parse_usage_message(raw: bytes | None) -> tuple[list[UsageEvent], list[Rejection]]:
    """Decode one ``usage.events`` message into accepted events and per-event rejections.

    A batch keeps its good events; each bad one is rejected on its own.
    """
    if raw is None:
        return [], [Rejection(code=RejectCode.INVALID_JSON, message="message has no value")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return [], [Rejection(code=RejectCode.INVALID_ENCODING, message=f"value is not UTF-8: {error.reason}")]
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        return [], [Rejection(code=RejectCode.INVALID_JSON, message=f"value is not JSON: {error.msg}")]
    if isinstance(document, list):
        if len(document) > MAX_BATCH:
            return [], [
                Rejection(
                    code=RejectCode.BATCH_TOO_LARGE,
                    message=f"a batch holds at most {MAX_BATCH} events, this one {len(document)}",
                )
            ]
        if not document:
            return [], [Rejection(code=RejectCode.EMPTY_BATCH, message="a batch must hold at least one event")]
        items = document
        whole = False
    else:
        items = [document]
        whole = True
    accepted: list[UsageEvent] = []
    rejected: list[Rejection] = []
    for item in items:
        try:
            accepted.append(UsageEvent.model_validate(item))
        except ValidationError as error:
            code, message = reject_reason(error)
            rejected.append(
                Rejection(
                    code=code,
                    message=message,
                    value=None if whole else _item_bytes(item),
                    workspace_id=_workspace_of(item),
                )
            )
        except (RecursionError, OverflowError, ValueError) as error:  # hostile shapes past pydantic's own checks
            rejected.append(
                Rejection(
                    code=RejectCode.INVALID_SCHEMA,
                    message=f"event cannot be read: {type(error).__name__}",
                    value=None if whole else _item_bytes(item),
                    workspace_id=_workspace_of(item),
                )
            )
    return accepted, rejected


def _item_bytes(item: Any) -> bytes | None:
    """One batch item as JSON for its dead letter; None (the whole message) if it cannot be
    re-encoded, e.g. nested deeper than orjson writes."""
    try:
        return orjson.dumps(item)
    except (orjson.JSONEncodeError, RecursionError):
        return None


def reject_reason(error: ValidationError) -> tuple[str, str]:
    first = error.errors(include_url=False)[0]
    kind = first["type"]
    where = ".".join(str(part) for part in first["loc"]) or "event"
    if kind in _OWN_CODES:
        return kind, first["msg"]
    if first["loc"] == ("metric",) and kind == "enum":
        return RejectCode.UNKNOWN_METRIC, f"unknown metric {first.get('input')!r:.80}"
    return RejectCode.INVALID_SCHEMA, f"{where}: {first['msg']}"


def _workspace_of(item: Any) -> str | None:
    if isinstance(item, dict):
        value = item.get("workspace_id")
        if isinstance(value, str) and 0 < len(value) <= MAX_IDENTIFIER:
            return value
    return None


# ---------------------------------------------------------------------------------------------
# The fast path

# workspace_id, event_id, metric, quantity, occurred_at (UTC, isoformat), conversation_id
Row = tuple[str, str, str, int, str, str | None]

_FIN = "fin_resolutions"

# Control characters (C0, DEL, C1), as the identifiers' pattern in models/common.py; and lone
# surrogates, which orjson never yields, so that a string that has one is never taken as plain.
_CONTROL = re.compile(rf"[{CONTROL_CHARACTERS}\ud800-\udfff]")
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.([0-9]{1,6}))?"
    r"(Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_timestamp_match = _TIMESTAMP.fullmatch
_control_search = _CONTROL.search
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError

# occurred_at texts accepted lately -> their UTC isoformat (producers stamp many events alike), and
# whether a YYYY-MM-DD is a real day. Each is cleared whole when full: bounded and cheap.
_UTC: dict[str, str] = {}
_DAYS: dict[str, bool] = {}
_CACHE_SIZE = 8192


def fast_rows(raw: bytes | None) -> list[Row] | None:
    """The message's events as rows if every one of them is plainly valid, else ``None``."""
    if raw is None:
        return None
    try:
        document = _loads(raw)
    except _JSONDecodeError:
        return None
    kind = type(document)
    if kind is dict:
        row = _row(document)
        return None if row is None else [row]
    if kind is not list or not 0 < len(document) <= MAX_BATCH:
        return None
    rows: list[Row] = []
    append = rows.append
    for item in document:
        if type(item) is not dict:
            return None
        row = _row(item)
        if row is None:
            return None
        append(row)
    return rows


def _row(item: dict) -> Row | None:
    get = item.get
    quantity = get("quantity")
    if type(quantity) is not int or not -MAX_AMOUNT <= quantity <= MAX_AMOUNT:
        return None
    metric = get("metric")
    if type(metric) is not str or metric not in METRIC_NAMES:
        return None
    conversation_id = get("conversation_id")
    if metric == SEATS:
        if quantity < 0:
            return None
    elif quantity == 0:
        return None
    elif metric == _FIN and (conversation_id is None or (quantity != 1 and quantity != -1)):
        return None
    event_id = get("event_id")
    if type(event_id) is not str or not 0 < len(event_id) <= MAX_EVENT_ID:
        return None
    # For ASCII, printable is exactly "no C0 control and no DEL"; other text is searched.
    if not (event_id.isprintable() if event_id.isascii() else _control_search(event_id) is None):
        return None
    workspace_id = get("workspace_id")
    if type(workspace_id) is not str or not 0 < len(workspace_id) <= MAX_IDENTIFIER:
        return None
    if not (workspace_id.isprintable() if workspace_id.isascii() else _control_search(workspace_id) is None):
        return None
    if conversation_id is not None:
        if type(conversation_id) is not str or not 0 < len(conversation_id) <= MAX_IDENTIFIER:
            return None
        if not (
            conversation_id.isprintable() if conversation_id.isascii() else _control_search(conversation_id) is None
        ):
            return None
    occurred_at = get("occurred_at")
    if type(occurred_at) is not str:
        return None
    utc = _UTC.get(occurred_at)
    if utc is None:
        utc = utc_isoformat(occurred_at)
        if utc is None:
            return None
        if len(_UTC) >= _CACHE_SIZE:
            _UTC.clear()
        _UTC[occurred_at] = utc
    return (workspace_id, event_id, metric, quantity, utc, conversation_id)


def utc_isoformat(text: str) -> str | None:
    """``text`` (the common RFC 3339 form) as the isoformat of its UTC instant, or ``None``."""
    match = _timestamp_match(text)
    if match is None:
        return None
    fraction, offset = match.group(1, 2)
    if offset == "Z" or offset == "+00:00" or offset == "-00:00":
        # Already UTC: only the date can still be wrong (the pattern bounds the time of day).
        day = text[:10]
        valid = _DAYS.get(day)
        if valid is None:
            valid = _DAYS[day] = _is_date(day)
            if len(_DAYS) >= _CACHE_SIZE:
                _DAYS.clear()
        if not valid:
            return None
        # isoformat writes six fractional digits, or none for a whole second.
        if fraction is None or fraction.strip("0") == "":
            return text[:19] + "+00:00"
        return text[:19] + "." + fraction.ljust(6, "0") + "+00:00"
    try:
        return datetime.fromisoformat(text).astimezone(UTC).isoformat()
    except (ValueError, OverflowError):
        return None


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True
