"""``usage.events`` (CONTRACT 3.1): one usage event, or a batch of up to 1,000."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, StrictInt, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from ..core.rejections import RejectCode
from .common import MAX_AMOUNT, MAX_BATCH, MAX_IDENTIFIER, EventId, Identifier, Metric, Timestamp

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
