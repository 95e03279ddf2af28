"""The fast path for ``usage.events`` values: plain rows for the common, well-formed message.

``fast_rows`` accepts only messages whose every event is beyond doubt valid, and gives each as a
tuple of plain values, without building a pydantic model per event. Anything else, however
slightly unusual, is ``None``: the caller then runs ``parse_usage_message``, which gives the
accepted events and the exact rejections (code and message) of every dead letter. The fast path
is therefore never the one that rejects, and it may only accept what ``parse_usage_message``
accepts, with the same values (tests/unit/test_fast_usage.py proves it with generated messages).

Where the two parsers could disagree, the fast path is the narrower: timestamps are the one
common form (``T``, upper-case ``Z``, at most six fractional digits, ASCII digits, hours, minutes
and offsets in range); pydantic's wider forms (``t``, a space, ``z``, seven to nine digits, which
it truncates) go the slow way.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import orjson

from ..core.metric_kinds import SEATS
from .common import CONTROL_CHARACTERS, MAX_AMOUNT, MAX_BATCH, MAX_EVENT_ID, MAX_IDENTIFIER, METRIC_NAMES

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
