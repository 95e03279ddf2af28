"""What meterwatch publishes (CONTRACT section 5), built as plain dicts for orjson."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

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
        "key": _text(key)[0],
        "error": {"code": code, "message": message},
        "at": iso(at),
    }
    text, encoding = _text(value)
    record["value"] = text
    if encoding:
        record["value_encoding"] = encoding
    return record


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
