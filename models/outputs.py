"""What meterwatch publishes (CONTRACT section 5), built as plain dicts for orjson."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from ..core.alerts import LevelReached, alert_id
from .common import iso


def dead_letter(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    code: str,
    message: str,
    at: datetime,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "key": _text(_capped(key))[0],
        "error": {"code": code, "message": message},
        "at": iso(at),
    }
    text, encoding = _text(_capped(value))
    record["value"] = text
    if encoding:
        record["value_encoding"] = encoding
    if value is not None and len(value) > MAX_DEAD_LETTER_BYTES:
        # The record must fit the broker's message size (1 MB by default) even once escaped.
        record["value_truncated"] = True
        record["value_length"] = len(value)
    return record


# 64 KiB of control characters is 384 KiB of JSON escapes; key and value together stay under 1 MB.
MAX_DEAD_LETTER_BYTES = 64 * 1024


def _capped(raw: bytes | None) -> bytes | None:
    return raw if raw is None or len(raw) <= MAX_DEAD_LETTER_BYTES else raw[:MAX_DEAD_LETTER_BYTES]


def _text(raw: bytes | None) -> tuple[str | None, str | None]:
    if raw is None:
        return None, None
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def command_result(
    command_id: str | None, status: str, *, effective_from: datetime | None = None, reason: str | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = {"command_id": command_id, "status": status}
    if effective_from is not None:
        result["effective_from"] = iso(effective_from)
    if reason is not None:
        result["reason"] = reason
    return result


def alert_record(
    scope: str,
    owner_id: str,
    metric: str,
    reached: LevelReached,
    *,
    workspace_id: str | None,
    contract_id: str | None,
    estimated_cost: dict[str, str] | None,
    recipients: list[str],
    triggered_at: datetime,
    cause_event_id: str | None,
) -> dict[str, Any]:
    """A ``usage.alerts`` record (CONTRACT 5.1) for ``reached``, by the workspace or contract
    ``owner_id`` of ``scope``."""
    return {
        "alert_id": alert_id(scope, owner_id, metric, reached.period.start, reached.threshold, reached.level),
        "scope": scope,
        "workspace_id": workspace_id,
        "contract_id": contract_id,
        "metric": metric,
        "level": reached.level,
        "threshold": reached.threshold,
        "usage": reached.usage,
        "period_start": iso(reached.period.start),
        "period_end": iso(reached.period.end),
        "estimated_cost": estimated_cost,
        "recipients": recipients,
        "triggered_at": iso(triggered_at),
        "cause_event_id": cause_event_id,
    }
