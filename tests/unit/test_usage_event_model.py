"""Decoding ``usage.events`` messages (CONTRACT 3, 3.1, 5.4): what is accepted, what is rejected and why."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meterwatch.core.metric_kinds import METRIC_KINDS
from meterwatch.models.common import METRIC_NAMES, Metric
from meterwatch.models.usage_event import RejectCode, UsageEvent, parse_usage_message

ALL_CODES = {value for name, value in vars(RejectCode).items() if name.isupper()}


def event(**fields: Any) -> dict[str, Any]:
    """A valid sms event, with any field replaced (or removed when given as ...)."""
    base: dict[str, Any] = {
        "event_id": "9f1c0e2a-sms-1",
        "workspace_id": "ws_42",
        "metric": "sms",
        "quantity": 3,
        "occurred_at": "2026-11-24T09:00:00Z",
        "conversation_id": None,
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def fin(**fields: Any) -> dict[str, Any]:
    return event(
        **{"event_id": "fin-1", "metric": "fin_resolutions", "quantity": 1, "conversation_id": "conv_7", **fields}
    )


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


def rejected_code(raw: bytes) -> str:
    accepted, rejections = parse_usage_message(raw)
    assert accepted == [], accepted
    assert len(rejections) == 1, rejections
    return rejections[0].code


# --- accepted -----------------------------------------------------------------------------------


def test_the_contract_example_is_accepted() -> None:
    raw = (
        b'{"event_id": "9f1c", "workspace_id": "ws_42", "metric": "sms", "quantity": 3,'
        b' "occurred_at": "2026-11-24T09:00:00Z", "conversation_id": null}'
    )

    accepted, rejections = parse_usage_message(raw)

    assert rejections == []
    assert accepted == [
        UsageEvent(
            event_id="9f1c",
            workspace_id="ws_42",
            metric=Metric.SMS,
            quantity=3,
            occurred_at=datetime(2026, 11, 24, 9, tzinfo=UTC),
            conversation_id=None,
        )
    ]


@pytest.mark.parametrize(
    "document",
    [pytest.param(event(metric=m), id=m) for m in ["messages_sent", "phone", "sms", "whatsapp", "email"]]
    + [
        pytest.param(event(quantity=-3), id="negative-correction"),
        pytest.param(event(quantity=2**53 - 1), id="largest-quantity"),
        pytest.param(event(quantity=-(2**53 - 1)), id="largest-correction"),
        pytest.param(event(conversation_id=...), id="conversation-id-absent"),
        pytest.param(event(event_id="e" * 128), id="event-id-128-chars"),
        pytest.param(event(event_id="évènement-ünïcode-✓"), id="event-id-unicode"),
        pytest.param(fin(quantity=1), id="fin-resolve"),
        pytest.param(fin(quantity=-1), id="fin-retract"),
        pytest.param(event(metric="seats", quantity=0), id="seats-zero"),
        pytest.param(event(metric="seats", quantity=250), id="seats-250"),
        pytest.param(event(occurred_at="2026-11-24T10:00:00+01:00"), id="offset-timestamp"),
        pytest.param(event(occurred_at="2026-11-24T09:00:00.123456Z"), id="fractional-seconds"),
    ],
)
def test_valid_events_are_accepted(document: dict[str, Any]) -> None:
    accepted, rejections = parse_usage_message(encode(document))

    assert rejections == []
    assert len(accepted) == 1
    assert accepted[0].quantity == document["quantity"]


def test_occurred_at_with_an_offset_is_the_same_instant_in_utc() -> None:
    accepted, _ = parse_usage_message(encode(event(occurred_at="2026-11-24T10:30:00+01:30")))

    assert accepted[0].occurred_at == datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    assert accepted[0].occurred_at.utcoffset().total_seconds() == 0


def test_unknown_fields_are_ignored() -> None:
    document = event(source="billing-service", tags={"team": "a"}, schema_version=3)

    accepted, rejections = parse_usage_message(encode(document))

    assert rejections == []
    assert accepted[0].event_id == document["event_id"]


def test_a_batch_of_events_is_accepted_in_order() -> None:
    batch = [event(event_id=f"e{i}", quantity=i + 1) for i in range(5)]

    accepted, rejections = parse_usage_message(encode(batch))

    assert rejections == []
    assert [e.event_id for e in accepted] == ["e0", "e1", "e2", "e3", "e4"]


def test_a_batch_of_1000_events_is_accepted() -> None:
    batch = [event(event_id=f"e{i}") for i in range(1_000)]

    accepted, rejections = parse_usage_message(encode(batch))

    assert rejections == []
    assert len(accepted) == 1_000


# --- rejected, one code at a time -------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, code",
    [
        pytest.param(
            b'{"event_id": "e1", "workspace_id": "ws_\xff\xfe", "metric": "sms"}',
            RejectCode.INVALID_ENCODING,
            id="latin-1-bytes",
        ),
        pytest.param("café".encode("utf-16"), RejectCode.INVALID_ENCODING, id="utf-16"),
        pytest.param(
            b'{"event_id": "e1", "workspace_id": "ws_42", "metric": "sms", "quantity": 3',
            RejectCode.INVALID_JSON,
            id="truncated-json",
        ),
        pytest.param(b"event_id=e1&quantity=3", RejectCode.INVALID_JSON, id="form-encoded"),
        pytest.param(b"", RejectCode.INVALID_JSON, id="empty-value"),
        pytest.param(b"{'event_id': 'e1'}", RejectCode.INVALID_JSON, id="single-quotes"),
        pytest.param(b'{"quantity": NaN}', RejectCode.INVALID_JSON, id="nan"),
    ],
)
def test_messages_that_are_not_utf8_json_are_rejected(raw: bytes, code: str) -> None:
    assert rejected_code(raw) == code


def test_a_tombstone_is_rejected_not_raised() -> None:
    accepted, rejections = parse_usage_message(None)

    assert accepted == []
    assert [r.code for r in rejections] == [RejectCode.INVALID_JSON]


@pytest.mark.parametrize(
    "document, code",
    [
        pytest.param(event(event_id=...), RejectCode.INVALID_SCHEMA, id="missing-event_id"),
        pytest.param(event(workspace_id=...), RejectCode.INVALID_SCHEMA, id="missing-workspace_id"),
        pytest.param(event(metric=...), RejectCode.INVALID_SCHEMA, id="missing-metric"),
        pytest.param(event(quantity=...), RejectCode.INVALID_SCHEMA, id="missing-quantity"),
        pytest.param(event(occurred_at=...), RejectCode.INVALID_SCHEMA, id="missing-occurred_at"),
        pytest.param(event(quantity=True), RejectCode.INVALID_SCHEMA, id="quantity-true"),
        pytest.param(event(quantity=1.5), RejectCode.INVALID_SCHEMA, id="quantity-1.5"),
        pytest.param(event(quantity="3"), RejectCode.INVALID_SCHEMA, id="quantity-string"),
        pytest.param(event(quantity=None), RejectCode.INVALID_SCHEMA, id="quantity-null"),
        pytest.param(event(event_id=12345), RejectCode.INVALID_SCHEMA, id="event_id-number"),
        pytest.param(event(event_id=""), RejectCode.INVALID_SCHEMA, id="event_id-empty"),
        pytest.param(event(event_id="e" * 129), RejectCode.INVALID_SCHEMA, id="event_id-129-chars"),
        pytest.param(event(workspace_id=42), RejectCode.INVALID_SCHEMA, id="workspace_id-number"),
        pytest.param(event(occurred_at="yesterday"), RejectCode.INVALID_SCHEMA, id="occurred_at-words"),
        pytest.param(event(occurred_at="2026-11-24T09:00:00"), RejectCode.INVALID_SCHEMA, id="occurred_at-naive"),
        pytest.param(event(occurred_at="2026-11-24"), RejectCode.INVALID_SCHEMA, id="occurred_at-date-only"),
        # Timestamps are RFC 3339 strings with an offset (CONTRACT 3), not epoch seconds.
        pytest.param(event(occurred_at=1795510800), RejectCode.INVALID_SCHEMA, id="occurred_at-unix-seconds"),
        pytest.param(event(occurred_at="1795510800"), RejectCode.INVALID_SCHEMA, id="occurred_at-unix-seconds-string"),
        pytest.param(event(conversation_id=17), RejectCode.INVALID_SCHEMA, id="conversation_id-number"),
        pytest.param(event(metric="voice"), RejectCode.UNKNOWN_METRIC, id="unknown-metric"),
        pytest.param(event(metric="SMS"), RejectCode.UNKNOWN_METRIC, id="metric-wrong-case"),
        pytest.param(event(quantity=0), RejectCode.ZERO_QUANTITY, id="quantity-0"),
        pytest.param(event(quantity=2**53), RejectCode.QUANTITY_OUT_OF_RANGE, id="quantity-2**53"),
        pytest.param(event(quantity=-(2**53)), RejectCode.QUANTITY_OUT_OF_RANGE, id="quantity-minus-2**53"),
        pytest.param(event(quantity=2**63), RejectCode.QUANTITY_OUT_OF_RANGE, id="quantity-2**63"),
        pytest.param(event(quantity=10**20), RejectCode.QUANTITY_OUT_OF_RANGE, id="quantity-10**20"),
        pytest.param(fin(conversation_id=None), RejectCode.MISSING_CONVERSATION, id="fin-null-conversation"),
        pytest.param(fin(conversation_id=...), RejectCode.MISSING_CONVERSATION, id="fin-no-conversation"),
        pytest.param(fin(quantity=2), RejectCode.INVALID_FIN_QUANTITY, id="fin-quantity-2"),
        pytest.param(fin(quantity=-3), RejectCode.INVALID_FIN_QUANTITY, id="fin-quantity-minus-3"),
        pytest.param(event(metric="seats", quantity=-1), RejectCode.NEGATIVE_SEATS, id="negative-seats"),
    ],
)
def test_bad_events_are_rejected_with_their_code(document: Any, code: str) -> None:
    assert rejected_code(encode(document)) == code


@pytest.mark.parametrize(
    "document",
    [
        pytest.param([], id="list"),
        pytest.param("sms", id="string"),
        pytest.param(3, id="number"),
        pytest.param(None, id="null"),
        pytest.param(True, id="bool"),
    ],
)
def test_a_value_that_is_not_an_event_is_rejected(document: Any) -> None:
    accepted, rejections = parse_usage_message(encode(document))

    assert accepted == []
    assert len(rejections) == 1
    assert rejections[0].code in ALL_CODES


def test_a_batch_of_1001_events_is_rejected_whole() -> None:
    batch = [event(event_id=f"e{i}") for i in range(1_001)]

    assert rejected_code(encode(batch)) == RejectCode.BATCH_TOO_LARGE


def test_an_empty_batch_is_rejected() -> None:
    assert rejected_code(b"[]") == RejectCode.EMPTY_BATCH


@pytest.mark.parametrize(
    "event_id",
    ["evt\x00", "evt\nline", "evt\r\nX-Injected: 1", "\tevt", "evt\x1b[31m", "evt\x7f", "evt\x85", "evt\x9b31m"],
    ids=["nul", "newline", "crlf", "tab", "escape", "delete", "c1-next-line", "c1-csi"],
)
def test_control_characters_in_event_id_are_rejected(event_id: str) -> None:
    assert rejected_code(encode(event(event_id=event_id))) == RejectCode.INVALID_SCHEMA


@pytest.mark.parametrize("workspace_id", ["ws\n42", "ws\x00", ""])
def test_a_bad_workspace_id_is_rejected(workspace_id: str) -> None:
    assert rejected_code(encode(event(workspace_id=workspace_id))) == RejectCode.INVALID_SCHEMA


def test_a_rejection_says_what_is_wrong_and_for_which_workspace() -> None:
    accepted, rejections = parse_usage_message(encode(event(workspace_id="ws_9", quantity=0)))

    assert accepted == []
    (rejection,) = rejections
    assert rejection.code == RejectCode.ZERO_QUANTITY
    assert rejection.message
    assert rejection.workspace_id == "ws_9"
    # A single event is dead-lettered as the original message; no per-event value is needed.
    assert rejection.value is None


def test_a_whole_message_rejection_has_no_workspace_when_none_can_be_read() -> None:
    _, rejections = parse_usage_message(b"not json")

    assert rejections[0].workspace_id is None
    assert rejections[0].message


# --- batches keep their good events ------------------------------------------------------------


def test_a_batch_with_one_bad_event_keeps_the_others() -> None:
    bad = event(event_id="e-bad", workspace_id="ws_7", metric="fax", quantity=4)
    batch = [event(event_id="e1"), bad, event(event_id="e3", metric="email", quantity=2)]

    accepted, rejections = parse_usage_message(encode(batch))

    assert [e.event_id for e in accepted] == ["e1", "e3"]
    (rejection,) = rejections
    assert rejection.code == RejectCode.UNKNOWN_METRIC
    assert rejection.workspace_id == "ws_7"
    # The dead letter carries the bad event alone, not the whole batch.
    assert json.loads(rejection.value) == bad


def test_every_bad_event_in_a_batch_is_rejected_on_its_own() -> None:
    batch = [
        event(event_id="e1", quantity=0),
        event(event_id="e2"),
        "not an event",
        fin(event_id="e4", quantity=2, workspace_id="ws_fin"),
        event(event_id="e5", metric="seats", quantity=0),
    ]

    accepted, rejections = parse_usage_message(encode(batch))

    assert [e.event_id for e in accepted] == ["e2", "e5"]
    assert [r.code for r in rejections] == [
        RejectCode.ZERO_QUANTITY,
        RejectCode.INVALID_SCHEMA,
        RejectCode.INVALID_FIN_QUANTITY,
    ]
    assert [json.loads(r.value) for r in rejections] == [batch[0], batch[2], batch[3]]
    assert [r.workspace_id for r in rejections] == ["ws_42", None, "ws_fin"]


def test_one_huge_quantity_in_a_batch_does_not_take_the_other_events_with_it() -> None:
    raw = (
        b'[{"event_id": "e1", "workspace_id": "ws_42", "metric": "sms", "quantity": 1,'
        b' "occurred_at": "2026-11-24T09:00:00Z"},'
        b' {"event_id": "e2", "workspace_id": "ws_42", "metric": "sms",'
        b' "quantity": 123456789012345678901234567890, "occurred_at": "2026-11-24T09:00:00Z"}]'
    )

    accepted, rejections = parse_usage_message(raw)

    assert [e.event_id for e in accepted] == ["e1"]
    assert len(rejections) == 1


# --- never raises -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)

# Text without lone surrogates: json.dumps would write them as "\\ud800" escapes, which are not
# valid UTF-8 text, so the whole message is rightly rejected as invalid JSON.
valid_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=130)

near_events = st.fixed_dictionaries(
    {
        "event_id": st.one_of(valid_text, st.integers(), st.none()),
        "workspace_id": st.one_of(valid_text, st.integers(), st.none()),
        "metric": st.one_of(st.sampled_from(sorted(m.value for m in Metric)), valid_text, st.integers()),
        "quantity": st.one_of(
            st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), valid_text, st.none()
        ),
        "occurred_at": st.one_of(
            st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
            st.datetimes().map(lambda d: d.isoformat()),
            valid_text,
            st.integers(),
        ),
    },
    optional={"conversation_id": st.one_of(st.none(), valid_text, st.integers())},
)


def _check_outcome(raw: bytes) -> None:
    accepted, rejections = parse_usage_message(raw)
    assert all(isinstance(e, UsageEvent) for e in accepted)
    assert all(r.code in ALL_CODES and r.message for r in rejections)
    assert accepted or rejections


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_any_json_value_is_accepted_or_rejected_with_a_code(document: Any) -> None:
    raw = json.dumps(document).encode()

    _check_outcome(raw)

    if isinstance(document, dict):
        accepted, rejections = parse_usage_message(raw)
        assert len(accepted) + len(rejections) == 1


@settings(max_examples=300)
@given(st.one_of(near_events, st.lists(near_events, min_size=1, max_size=5)))
def test_any_almost_valid_event_or_batch_is_accepted_or_rejected_with_a_code(document: Any) -> None:
    raw = json.dumps(document).encode()

    accepted, rejections = parse_usage_message(raw)

    assert all(r.code in ALL_CODES for r in rejections)
    expected_total = len(document) if isinstance(document, list) else 1
    assert len(accepted) + len(rejections) == expected_total


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_bytes_are_accepted_or_rejected_with_a_code(raw: bytes) -> None:
    _check_outcome(raw)


@pytest.mark.parametrize("occurred_at", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"])
def test_a_timestamp_outside_years_1_to_9999_in_utc_is_a_schema_error(occurred_at: str) -> None:
    raw = orjson.dumps(
        {"event_id": "e1", "workspace_id": "ws", "metric": "sms", "quantity": 1, "occurred_at": occurred_at}
    )
    accepted, rejected = parse_usage_message(raw)
    assert accepted == [] and [r.code for r in rejected] == ["invalid_schema"]


def test_a_batch_item_too_deep_to_re_encode_is_dead_lettered_with_the_whole_message() -> None:
    good = {
        "event_id": "e1",
        "workspace_id": "ws",
        "metric": "sms",
        "quantity": 1,
        "occurred_at": "2026-11-24T00:00:00Z",
    }
    raw = b"[" + orjson.dumps(good) + b"," + b"[" * 600 + b"1" + b"]" * 600 + b"]"
    accepted, rejected = parse_usage_message(raw)
    assert [e.event_id for e in accepted] == ["e1"]
    assert [(r.code, r.value) for r in rejected] == [("invalid_schema", None)]  # None: the message as sent


def test_the_wire_knows_exactly_the_metrics_meterwatch_counts() -> None:
    assert {metric.value for metric in Metric} == set(METRIC_KINDS) == METRIC_NAMES
