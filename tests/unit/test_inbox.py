"""Packed inbox records: many workspaces' events to a record, bounded by rows and bytes."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from meterwatch.models.internal import EVENTS_PER_MESSAGE, MAX_RECORD_BYTES, ORIGIN, RowPacker, legacy_rows
from meterwatch.models.outputs import MAX_DEAD_LETTER_BYTES

BROKER_LIMIT = 1_000_000  # the broker's and producer's default record limit, less headroom

identifier = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=256) | st.just(
    "\U0001f600" * 256
)


def _unpacked(records: list[bytes]) -> list[tuple[list, list]]:
    """(row, its origin) in order, across records."""
    rows = []
    for record in records:
        document = orjson.loads(record)
        assert document["kind"] == "rows"
        rows += [(row, document["origins"][row[ORIGIN]]) for row in document["rows"]]
    return rows


def test_a_huge_key_is_stored_once_per_record_and_cut_to_what_a_dead_letter_keeps() -> None:
    packer = RowPacker()
    packer.add_origin("usage.events", 3, 17, b"k" * 900_000, 1_700_000_000_000)
    for i in range(100):
        packer.add_row("ws_big", f"e{i}", "sms", 1, "2026-12-02T10:00:00+00:00", None)
    for i in range(1000):
        packer.add_origin("usage.events", 3, 18 + i, f"ws_{i % 40}".encode(), 1_700_000_000_001)
        packer.add_row(f"ws_{i % 40}", f"f{i}", "sms", 1, "2026-12-02T10:00:00+00:00", None)
    records = packer.records()
    assert all(len(record) < BROKER_LIMIT for record in records)
    rows = _unpacked(records)
    assert [row[1] for row, _ in rows] == [f"e{i}" for i in range(100)] + [f"f{i}" for i in range(1000)]
    big_origin = rows[0][1]
    assert big_origin[:3] == ["usage.events", 3, 17]
    assert big_origin[3] == "k" * MAX_DEAD_LETTER_BYTES
    first = orjson.loads(records[0])
    assert sum(1 for origin in first["origins"] if origin[2] == 17) == 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.binary(max_size=200_000) | st.none(),
            st.lists(st.tuples(identifier, identifier, identifier | st.none()), min_size=1, max_size=60),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_records_keep_every_row_in_order_within_the_bounds(messages: list) -> None:
    packer = RowPacker()
    expected = []
    for offset, (key, events) in enumerate(messages):
        packer.add_origin("usage.events", 0, offset, key, offset)
        for workspace_id, event_id, conversation in events:
            packer.add_row(workspace_id, event_id, "fin_resolutions", 1, "2026-12-02T10:00:00+00:00", conversation)
            expected.append((workspace_id, event_id, conversation, offset))
    records = packer.records()
    for record in records:
        assert len(record) <= MAX_RECORD_BYTES
        assert len(orjson.loads(record)["rows"]) <= EVENTS_PER_MESSAGE
    rows = _unpacked(records)
    assert [(row[0], row[1], row[5], origin[2]) for row, origin in rows] == expected


def test_a_usage_record_of_earlier_versions_reads_as_rows() -> None:
    document = {
        "kind": "usage",
        "events": [
            ["e1", "sms", 2, "2026-12-02T10:00:00+00:00", None, "usage.events", 1, 5, "ws_1", 1_700_000_000_000]
        ],
    }
    rows, origins = legacy_rows(document, "ws_1")
    assert rows == [["ws_1", "e1", "sms", 2, "2026-12-02T10:00:00+00:00", None, 0]]
    assert origins == [["usage.events", 1, 5, "ws_1", 1_700_000_000_000]]
