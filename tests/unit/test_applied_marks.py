"""Applied-through marks: when a seek to the committed offsets reads the inbox again."""

from __future__ import annotations

import logging

import pytest
from aiokafka import TopicPartition
from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st
from meterwatch.streams.runtime.applied_marks import Rewinder, decode_mark, encode_mark, mark_key, rewinds
from meterwatch.streams.runtime.consumer import seek_to_committed_or_beginning

INBOX = "t.app-workspace-inbox"
EVENTS = "t.usage.events"
CHANGELOG = "t.app-workspaces-changelog"


@pytest.mark.parametrize(
    ("committed", "mark", "expected"),
    [
        (None, 4, None),  # nothing committed: read from the beginning, as always
        (5, None, None),  # no mark: never counted here, or by an earlier version
        (5, 4, None),  # committed just past the mark: where it should be
        (3, 4, None),  # committed behind the mark: read again from the commit anyway
        (0, 4, None),
        (6, 4, (6, 5)),  # committed past what the tables hold: read from the mark on
        (1_000, 0, (1_000, 1)),
    ],
)
def test_a_partition_is_read_again_only_when_committed_past_its_mark(
    committed: int | None, mark: int | None, expected: tuple[int, int] | None
) -> None:
    tp = TP(INBOX, 2)
    marks = {} if mark is None else {tp: mark}
    assert rewinds({tp: committed}, marks) == ({} if expected is None else {tp: expected})


@given(
    st.dictionaries(st.integers(0, 7), st.one_of(st.none(), st.integers(0, 10**6))),
    st.dictionaries(st.integers(0, 7), st.integers(0, 10**6)),
)
def test_the_offset_read_from_is_never_past_the_mark_nor_past_the_commit(
    committed: dict[int, int | None], marks: dict[int, int]
) -> None:
    found = rewinds({TP(INBOX, p): c for p, c in committed.items()}, {TP(INBOX, p): m for p, m in marks.items()})
    for p, offset in committed.items():
        tp = TP(INBOX, p)
        start = found[tp][1] if tp in found else offset
        if offset is not None and p in marks:
            assert start == min(offset, marks[p] + 1)
        else:
            assert start == offset


@pytest.mark.parametrize(
    ("raw", "offset"), [(encode_mark(0), 0), (encode_mark(123456), 123456), (None, None), (b"", None), (b"x", None)]
)
def test_marks_read_back_what_was_written_and_nothing_from_garbage(raw: bytes | None, offset: int | None) -> None:
    assert decode_mark(raw) == offset


class SeekingConsumer:
    """aiokafka's consumer as far as a seek goes: its committed offsets and positions."""

    def __init__(self, committed: dict[TopicPartition, int | None]) -> None:
        self.committed = committed
        self.positions: dict[TopicPartition, int | None] = dict.fromkeys(committed)
        self.calls: list[str] = []

    async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
        self.calls.append("seek_to_committed")
        for tp, offset in self.committed.items():
            if offset:
                self.positions[tp] = offset
        return dict(self.committed)

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self.positions[tp] = 0

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.calls.append(f"seek {tp.partition} {offset}")
        self.positions[tp] = offset


def rewinder(stored: dict[str, bytes], counted: list[int]) -> Rewinder:
    return Rewinder(INBOX, lambda: stored, lambda: counted.append(1))


ASSIGNED = [TP(INBOX, 0), TP(INBOX, 1), TP(INBOX, 2), TP(EVENTS, 0), TP(CHANGELOG, 1)]


async def test_the_seek_reads_again_from_the_marks_once_the_tables_are_restored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted: list[int] = []
    # Partition 0 committed past its mark; 1 where its mark says; 2 has no mark; the changelog's
    # partition 1 holds a key "0" that is no mark of the inbox's partition 0 table.
    stored = {mark_key(0): encode_mark(9), mark_key(1): encode_mark(19)}
    marks = rewinder(stored, counted)
    committed = {
        TopicPartition(INBOX, 0): 15,
        TopicPartition(INBOX, 1): 20,
        TopicPartition(INBOX, 2): 7,
        TopicPartition(EVENTS, 0): 30,
    }
    consumer = SeekingConsumer(committed)

    marks.capture(ASSIGNED)
    with caplog.at_level(logging.WARNING):
        returned = await seek_to_committed_or_beginning(consumer, {CHANGELOG}, marks)  # type: ignore[arg-type]

    assert consumer.calls == ["seek_to_committed", "seek 0 10"]
    assert consumer.positions[TopicPartition(INBOX, 0)] == 10
    assert returned == {**committed, TopicPartition(INBOX, 0): 10}
    assert counted == [1]
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.getMessage() == (
        f"rebalance: {INBOX}[0]: the tables hold what was applied through offset 9 but the group committed 15; "
        "reading from 10 again"
    )

    # Faust may seek again before the flow resumes: the same rewind, not reported twice.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = await seek_to_committed_or_beginning(consumer, {CHANGELOG}, marks)  # type: ignore[arg-type]
    assert again == returned
    assert counted == [1]
    assert not caplog.records


async def test_once_a_rebalance_begins_the_captured_marks_are_stale_and_unused() -> None:
    counted: list[int] = []
    marks = rewinder({mark_key(0): encode_mark(9)}, counted)
    marks.capture(ASSIGNED)
    marks.forget()  # counting went on to offset 40 and committed it
    consumer = SeekingConsumer({TopicPartition(INBOX, 0): 41})
    returned = await seek_to_committed_or_beginning(consumer, {CHANGELOG}, marks)  # type: ignore[arg-type]
    assert returned == {TopicPartition(INBOX, 0): 41}
    assert consumer.calls == ["seek_to_committed"]
    assert counted == []


async def test_a_later_recovery_that_finds_the_same_gap_reads_again_and_says_so_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted: list[int] = []
    marks = rewinder({mark_key(0): encode_mark(9)}, counted)
    for _ in range(2):  # a recovery, a rebalance before anything was counted, a recovery
        consumer = SeekingConsumer({TopicPartition(INBOX, 0): 15})
        marks.capture(ASSIGNED)
        with caplog.at_level(logging.WARNING):
            returned = await seek_to_committed_or_beginning(consumer, {CHANGELOG}, marks)  # type: ignore[arg-type]
        # The offsets Faust takes are keyed by aiokafka's own partitions, as it handed them over.
        assert returned == {TopicPartition(INBOX, 0): 10}
        assert [type(tp) for tp in returned] == [TopicPartition]
        marks.forget()
    assert counted == [1, 1]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


async def test_an_unreadable_mark_is_no_reason_to_read_again() -> None:
    counted: list[int] = []
    marks = rewinder({mark_key(0): b"not a number"}, counted)
    marks.capture(ASSIGNED)
    consumer = SeekingConsumer({TopicPartition(INBOX, 0): 41})
    assert await seek_to_committed_or_beginning(consumer, {CHANGELOG}, marks) == {TopicPartition(INBOX, 0): 41}  # type: ignore[arg-type]
    assert counted == []


async def test_without_a_rewinder_the_seek_is_the_committed_offsets() -> None:
    consumer = SeekingConsumer({TopicPartition(INBOX, 0): 41})
    assert await seek_to_committed_or_beginning(consumer, {CHANGELOG}) == {TopicPartition(INBOX, 0): 41}  # type: ignore[arg-type]
