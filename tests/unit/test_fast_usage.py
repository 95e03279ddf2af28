"""The fast decoder either declines a message or gives exactly what ``parse_usage_message`` accepts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meterwatch.models.usage_event import fast_rows, parse_usage_message, utc_isoformat

METRICS = ["messages_sent", "phone", "sms", "whatsapp", "email", "fin_resolutions", "seats"]
MAX_Q = 2**53 - 1


def slow_rows(raw: bytes | None) -> tuple[list[tuple], list[Any]]:
    accepted, rejected = parse_usage_message(raw)
    rows = [
        (e.workspace_id, e.event_id, e.metric.value, e.quantity, e.occurred_at.isoformat(), e.conversation_id)
        for e in accepted
    ]
    return rows, rejected


def assert_agrees(raw: bytes | None) -> list[tuple] | None:
    fast = fast_rows(raw)
    if fast is not None:
        rows, rejected = slow_rows(raw)
        assert rejected == [], f"fast path accepted what the slow path rejects: {raw!r:.300}"
        assert fast == rows
        for row in fast:
            # The same instant, in UTC, written as pydantic's Timestamp writes it.
            assert row[4].endswith("+00:00")
            assert datetime.fromisoformat(row[4]).tzinfo is UTC
    return fast


# --- generated messages ---------------------------------------------------------------------

odd_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from("\x00\x1f\x7f\x85\x9f\u2028 "),
    max_size=300,
)
plain_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=40)
not_a_string = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
    st.just({}),
)
identifier = st.one_of(plain_text, odd_text, not_a_string, st.text(min_size=250, max_size=260))
unicode_id = st.text(st.characters(codec="utf-8", categories=("L", "N", "S", "Zs")), min_size=1, max_size=256)
FIELDS = ["event_id", "workspace_id", "metric", "quantity", "occurred_at", "conversation_id", "missing"]

quantity = st.one_of(
    st.integers(-3, 3),
    st.integers(-(2**70), 2**70),
    st.sampled_from([MAX_Q, MAX_Q + 1, -MAX_Q, -MAX_Q - 1, 2**63, 2**64, -(2**63) - 1, 10**30]),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1.0, -1.0, 3.0, 1e20, 2.0**60]),
    st.text(max_size=5),
    st.none(),
)


@st.composite
def timestamps(draw: st.DrawFn, odd: bool) -> Any:
    if odd and draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(odd_text, not_a_string))

    def part(common: list[str], unusual: list[str]) -> str:
        return draw(st.sampled_from(common + unusual if odd else common))

    year = part(["2026", "2024", "1970", "9999", "0001"], ["0000", "20260", "٢٠٢٦"])
    month = part(["01", "02", "11", "12"], ["13", "00", "1"])
    day = part(["01", "28", "29", "30", "31"], ["32", "00"])
    sep = part(["T"], ["t", " ", "_"])
    hour = part(["00", "09", "23"], ["24", "25"])
    minute = part(["00", "59"], ["60"])
    second = part(["00", "59"], ["60", "61"])
    digits = draw(st.integers(0, 10 if odd else 6))
    fraction = "." + draw(st.text(alphabet="0123456789", min_size=digits, max_size=digits)) if digits else ""
    if odd and draw(st.integers(0, 20)) == 0:
        fraction = "."
    sign = draw(st.sampled_from("+-"))
    offset_hour = part(["00", "01", "05", "12", "14", "23"], ["24", "99"])
    offset_minute = part(["00", "30", "45", "59"], ["60", "75"])
    offset = draw(st.sampled_from(["Z", f"{sign}{offset_hour}:{offset_minute}"]))
    if odd and draw(st.integers(0, 5)) == 0:
        offset = draw(st.sampled_from(["z", "", "+0100", "+01", "UTC", "-00:00"]))
    return f"{year}-{month}-{day}{sep}{hour}:{minute}:{second}{fraction}{offset}"


@st.composite
def items(draw: st.DrawFn) -> Any:
    """Mostly valid events, each with a few fields (often none) drawn from hostile values."""
    if draw(st.integers(0, 30)) == 0:
        return draw(st.one_of(not_a_string, odd_text))
    odd = set(draw(st.lists(st.sampled_from(FIELDS), max_size=3)))

    def field(name: str, common: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> Any:
        return draw(hostile if name in odd else common)

    metric = field(
        "metric", st.sampled_from(METRICS), st.one_of(st.sampled_from(["SMS", "sms ", "pigeons", ""]), not_a_string)
    )
    item: dict[str, Any] = {
        "event_id": field("event_id", plain_text, identifier),
        "workspace_id": field("workspace_id", st.one_of(plain_text, unicode_id), identifier),
        "metric": metric,
        "quantity": field("quantity", st.sampled_from([1, -1, 2, 0, 7, MAX_Q, -MAX_Q]), quantity),
        "occurred_at": draw(timestamps("occurred_at" in odd)),
    }
    conversation = field(
        "conversation_id", st.one_of(st.just("missing"), st.none(), plain_text), st.one_of(st.none(), identifier)
    )
    if conversation != "missing":
        item["conversation_id"] = conversation
    if "missing" in odd:
        for name in draw(st.lists(st.sampled_from(sorted(item)), min_size=1, max_size=2)):
            item.pop(name, None)
    if draw(st.booleans()):
        item[draw(plain_text)] = draw(st.one_of(not_a_string, odd_text))
    return item


@st.composite
def messages(draw: st.DrawFn) -> bytes | None:
    shape = draw(st.integers(0, 20))
    if shape == 0:
        return draw(st.one_of(st.none(), st.binary(max_size=50)))
    document: Any = draw(items()) if shape < 12 else draw(st.lists(items(), max_size=6))
    if shape == 1:
        document = [document] * draw(st.sampled_from([1001, 1000]))
    text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_fast_path_never_disagrees_with_the_slow_path(raw: bytes | None) -> None:
    assert_agrees(raw)


@st.composite
def valid_items(draw: st.DrawFn) -> dict[str, Any]:
    metric = draw(st.sampled_from(METRICS))
    if metric == "fin_resolutions":
        q = draw(st.sampled_from([1, -1]))
    elif metric == "seats":
        q = draw(st.integers(0, MAX_Q))
    else:
        q = draw(st.integers(-MAX_Q, MAX_Q).filter(bool))
    fraction = draw(st.sampled_from(["", ".5", ".123456", ".000001"]))
    offset = draw(st.sampled_from(["Z", "+00:00", "+05:30", "-08:00", "+23:59", "-00:00"]))
    at = draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
    item: dict[str, Any] = {
        "event_id": draw(plain_text),
        "workspace_id": draw(st.one_of(plain_text, unicode_id)),
        "metric": metric,
        "quantity": q,
        "occurred_at": at.strftime("%Y-%m-%dT%H:%M:%S") + fraction + offset,
        "conversation_id": draw(plain_text) if metric == "fin_resolutions" else draw(st.one_of(st.none(), plain_text)),
    }
    if draw(st.booleans()):
        item["extra"] = {"nested": [1, 2.5, None]}
    return item


@settings(max_examples=500, deadline=None)
@given(st.one_of(valid_items(), st.lists(valid_items(), min_size=1, max_size=20)))
def test_plainly_valid_messages_take_the_fast_path(document: Any) -> None:
    rows = assert_agrees(orjson.dumps(document))
    assert rows is not None
    assert len(rows) == (len(document) if isinstance(document, list) else 1)


# --- edge cases, one by one -------------------------------------------------------------------

BASE = {
    "event_id": "e-1",
    "workspace_id": "ws_1",
    "metric": "sms",
    "quantity": 3,
    "occurred_at": "2026-11-24T09:00:00Z",
    "conversation_id": None,
}


def variant(**changes: Any) -> dict[str, Any]:
    item = {**BASE, **changes}
    return {k: v for k, v in item.items() if v is not ...}


FAST = "fast"
SLOW = "slow"
CASES: list[tuple[str, Any, str]] = [
    ("plain event", variant(), FAST),
    ("batch of one", [variant()], FAST),
    ("batch of 1000", [variant(event_id=f"e{i}") for i in range(1000)], FAST),
    ("batch of 1001", [variant()] * 1001, SLOW),
    ("empty batch", [], SLOW),
    ("batch with a non-object", [variant(), 3], SLOW),
    ("batch with one bad event", [variant(), variant(quantity=0)], SLOW),
    ("no conversation field", variant(conversation_id=...), FAST),
    ("extra fields", variant(extra={"a": [1]}, another=None), FAST),
    ("offset", variant(occurred_at="2026-11-24T10:30:00+01:30"), FAST),
    ("negative offset crossing a day", variant(occurred_at="2026-11-24T23:30:00-05:00"), FAST),
    ("microseconds", variant(occurred_at="2026-11-24T09:00:00.123456Z"), FAST),
    ("one fractional digit", variant(occurred_at="2026-11-24T09:00:00.1Z"), FAST),
    ("seven fractional digits", variant(occurred_at="2026-11-24T09:00:00.1234567Z"), SLOW),
    ("nine fractional digits", variant(occurred_at="2026-11-24T09:00:00.123456789Z"), SLOW),
    ("lower-case t", variant(occurred_at="2026-11-24t09:00:00Z"), SLOW),
    ("space separator", variant(occurred_at="2026-11-24 09:00:00Z"), SLOW),
    ("lower-case z", variant(occurred_at="2026-11-24T09:00:00z"), SLOW),
    ("no offset", variant(occurred_at="2026-11-24T09:00:00"), SLOW),
    ("February 30", variant(occurred_at="2026-02-30T09:00:00Z"), SLOW),
    ("leap second", variant(occurred_at="2026-12-31T23:59:60Z"), SLOW),
    ("hour 24", variant(occurred_at="2026-11-24T24:00:00Z"), SLOW),
    ("offset minutes 60", variant(occurred_at="2026-11-24T09:00:00+01:60"), SLOW),
    ("past year 9999 in UTC", variant(occurred_at="9999-12-31T23:59:59-01:00"), SLOW),
    ("before year 1 in UTC", variant(occurred_at="0001-01-01T00:00:00+01:00"), SLOW),
    ("Arabic-Indic digits", variant(occurred_at="٢٠٢٦-11-24T09:00:00Z"), SLOW),
    ("epoch number", variant(occurred_at=1764000000), SLOW),
    ("quantity true", variant(quantity=True), SLOW),
    ("quantity float", variant(quantity=3.0), SLOW),
    ("quantity string", variant(quantity="3"), SLOW),
    ("quantity 0", variant(quantity=0), SLOW),
    ("quantity at the bound", variant(quantity=MAX_Q), FAST),
    ("quantity past the bound", variant(quantity=MAX_Q + 1), SLOW),
    ("negative correction", variant(quantity=-5), FAST),
    ("seats 0", variant(metric="seats", quantity=0), FAST),
    ("seats negative", variant(metric="seats", quantity=-1), SLOW),
    ("fin +1", variant(metric="fin_resolutions", quantity=1, conversation_id="c1"), FAST),
    ("fin -1", variant(metric="fin_resolutions", quantity=-1, conversation_id="c1"), FAST),
    ("fin 2", variant(metric="fin_resolutions", quantity=2, conversation_id="c1"), SLOW),
    ("fin without conversation", variant(metric="fin_resolutions", quantity=1), SLOW),
    ("unknown metric", variant(metric="pigeons"), SLOW),
    ("metric in capitals", variant(metric="SMS"), SLOW),
    ("empty event id", variant(event_id=""), SLOW),
    ("event id of 128", variant(event_id="e" * 128), FAST),
    ("event id of 129", variant(event_id="e" * 129), SLOW),
    ("workspace of 256", variant(workspace_id="w" * 256), FAST),
    ("workspace of 257", variant(workspace_id="w" * 257), SLOW),
    ("workspace with a newline", variant(workspace_id="ws\n1"), SLOW),
    ("workspace with DEL", variant(workspace_id="ws\x7f"), SLOW),
    ("workspace with a C1 control", variant(workspace_id="ws\x85"), SLOW),
    ("workspace with a line separator", variant(workspace_id="ws\u20281"), FAST),
    ("workspace with emoji", variant(workspace_id="ws-\U0001f469\u200d\U0001f469"), FAST),
    ("workspace a number", variant(workspace_id=42), SLOW),
    ("conversation empty", variant(conversation_id=""), SLOW),
    ("conversation a number", variant(conversation_id=7), SLOW),
    ("missing workspace", variant(workspace_id=...), SLOW),
    ("missing occurred_at", variant(occurred_at=...), SLOW),
    ("a string", "sms", SLOW),
    ("a number", 5, SLOW),
    ("null", None, SLOW),
]


@pytest.mark.parametrize(("name", "document", "path"), CASES, ids=[case[0] for case in CASES])
def test_edge_cases(name: str, document: Any, path: str) -> None:
    rows = assert_agrees(orjson.dumps(document))
    assert (rows is not None) == (path == FAST)


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"{", b"\xff\xfe", b'{"a": NaN}', b"\xef\xbb\xbf{}", b'"\\ud800"', b"[" * 2000 + b"]" * 2000],
)
def test_unreadable_values_go_the_slow_way(raw: bytes | None) -> None:
    assert assert_agrees(raw) is None


def test_rows_carry_the_utc_instant() -> None:
    rows = fast_rows(orjson.dumps(variant(occurred_at="2026-11-24T23:30:00.25-05:00")))
    assert rows == [("ws_1", "e-1", "sms", 3, "2026-11-25T04:30:00.250000+00:00", None)]
    assert utc_isoformat("2026-11-24T09:00:00Z") == "2026-11-24T09:00:00+00:00"
    assert utc_isoformat("2026-11-24 09:00:00Z") is None
