"""Recovery seeks a changelog partition it knows nothing about yet to the changelog's start, hands
the input partitions back in a safe order, and stands at its start offsets before publishing them."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from faust.types import TP
from meterwatch.streams.runtime.recovery import (
    NOTHING_READ,
    RebalanceSafeRecovery,
    seek_targets,
    seekable_offsets,
    start_offsets,
)

A, B, C, D = (TP("t-changelog", n) for n in range(4))


@pytest.mark.parametrize(
    ("known", "expected"),
    [
        ({A: None}, NOTHING_READ),  # added by a rebalance after offsets were resolved
        ({}, NOTHING_READ),  # not in the mapping at all
        ({A: -1}, NOTHING_READ),
        ({A: -7}, NOTHING_READ),
        ({A: 0}, 0),
        ({A: 41}, 41),
    ],
)
def test_seekable_offset(known: dict, expected: int) -> None:
    assert seekable_offsets({A}, known)[A] == expected


def test_only_the_partitions_asked_for_are_sought() -> None:
    assert seekable_offsets({A, B}, {A: 3, B: None, C: 9}) == Counter({A: 3, B: NOTHING_READ})


def test_standby_remaining_skips_partitions_not_read_yet() -> None:
    recovery = RebalanceSafeRecovery.__new__(RebalanceSafeRecovery)
    recovery.standby_offsets = Counter({A: 10, B: None, C: 5})
    recovery.standby_highwaters = Counter({A: 25, B: 40, C: 5, D: -1})
    assert recovery.standby_remaining() == Counter({A: 15})


class Calls:
    """Fakes of the consumer, flow control, fetcher and app that note the order they are used in."""

    def __init__(self) -> None:
        self.order: list[str] = []
        outer = self

        class Consumer:
            def assignment(self) -> set[TP]:
                return {TP("t.usage.events", 0), A}

            def stop_flow(self) -> None:
                outer.order.append("stop_flow")

            def resume_flow(self) -> None:
                outer.order.append("resume_flow")

            def resume_partitions(self, tps: set[TP]) -> None:
                outer.order.append(f"resume_partitions {sorted(tp.topic for tp in tps)}")

            async def perform_seek(self) -> None:
                outer.order.append("seek")

        class FlowControl:
            def resume(self) -> None:
                outer.order.append("empty_queues")

        class Signal:
            async def send(self) -> None: ...

        class Fetcher:
            async def maybe_start(self) -> None: ...

        class Assignor:
            def assigned_standbys(self) -> set[TP]:
                return set()

        class Tables:
            def values(self) -> list:
                return []

            def on_actives_ready(self) -> None: ...

            def on_standbys_ready(self) -> None: ...

        class Conf:
            broker_request_timeout = 5.0

        class App:
            consumer = Consumer()
            flow_control = FlowControl()
            on_rebalance_complete = Signal()
            _fetcher = Fetcher()
            assignor = Assignor()
            consumer_generation_id = 3
            conf = Conf()

            def on_rebalance_end(self) -> None: ...

        self.app = App()
        self.tables = Tables()


async def test_input_partitions_deliver_nothing_until_they_are_sought_and_nothing_after_is_thrown_away() -> None:
    # The fetcher delivers whenever the flow is on and a partition is resumed; emptying the
    # queues after that dropped messages already recorded as read (the kill test's lost offsets).
    calls = Calls()
    recovery = RebalanceSafeRecovery.__new__(RebalanceSafeRecovery)
    recovery.app = calls.app
    recovery.log = logging.getLogger("test_recovery")
    recovery.tables = calls.tables
    recovery.actives_for_table = {}
    recovery.standbys_for_table = {}
    recovery._set_recovery_ended = lambda: None
    recovery._is_changelog_tp = lambda tp: tp == A

    async def wait(coroutine, timeout=None):  # type: ignore[no-untyped-def]
        return await coroutine

    recovery._wait = wait

    class Completed:
        def set(self) -> None:
            calls.order.append("completed")

    recovery.completed = Completed()
    await recovery.on_recovery_completed(generation_id=3)
    assert calls.order == [
        "stop_flow",
        "empty_queues",
        "resume_partitions ['t.usage.events']",
        "seek",
        "completed",
        "resume_flow",
    ]


@pytest.mark.parametrize(
    ("known", "earliest", "expected"),
    [
        (None, 0, -1),  # nothing read: from the changelog's first offset
        (None, None, NOTHING_READ),  # nothing known at all
        (None, 40, 39),  # compacted or deleted up to 40
        (36, 0, 36),  # persisted (RocksDB) or read before: go on from there
        (36, 50, 49),  # what was read is gone from the changelog: from its first offset
        (-1, 0, -1),
    ],
)
def test_start_offsets_as_faust_decides_them(known: int | None, earliest: int | None, expected: int) -> None:
    assert start_offsets({A}, {A: known}, {A: earliest}) == {A: expected}


def test_seek_targets_reread_the_last_record_read_and_start_at_zero_when_nothing_was() -> None:
    assert seek_targets({A: -1, B: 0, C: 41}) == {A: 0, B: 0, C: 41}


async def test_active_start_offsets_are_published_only_once_the_consumer_stands_there() -> None:
    # Faust's changelog reader takes a partition whose consumer position has reached the end for
    # read through, and may look at any await: between publishing new start offsets and seeking
    # to them, a position left at the end by a superseded recovery marked every changelog read
    # and tables were restored empty.
    recovery = RebalanceSafeRecovery.__new__(RebalanceSafeRecovery)
    recovery.log = logging.getLogger("test_recovery")
    recovery.active_offsets = Counter({A: None, B: 36})
    recovery._start_offsets_logtable = lambda offsets, title: ""
    seen_when_seeking: list[dict] = []

    class Consumer:
        async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
            return dict.fromkeys(tps, 0)

        async def seek_wait(self, targets: dict[TP, int]) -> None:
            seen_when_seeking.append({"targets": targets, "published": dict(recovery.active_offsets)})

        def recovery_sought(self) -> None:
            seen_when_seeking.append({"sought": True})

    await recovery._build_offsets(Consumer(), {A, B}, recovery.active_offsets, "active")
    assert seen_when_seeking == [{"targets": {A: 0, B: 36}, "published": {A: None, B: 36}}, {"sought": True}]
    assert recovery.active_offsets == Counter({A: -1, B: 36})
