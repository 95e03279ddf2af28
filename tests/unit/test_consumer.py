"""The stream consumer around a rebalance: finished work is committed before partitions are given
up, partitions with no committed offset are read from their beginning, and one waiting for that
seek is not checked for a position it does not have yet."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer.fetcher import OffsetResetStrategy
from aiokafka.consumer.subscription_state import SubscriptionState
from meterwatch.streams.runtime import consumer as consumer_module
from meterwatch.streams.runtime.consumer import commit_before_handover, has_position, seek_to_committed_or_beginning

EVENTS = [TopicPartition("t.usage.events", n) for n in range(4)]
CHANGELOG = TopicPartition("t.app-workspaces-changelog", 0)


class FakeConsumer:
    """aiokafka's seek_to_committed: seeks only partitions committed past 0."""

    def __init__(self, committed: dict[TopicPartition, int | None], position: int) -> None:
        self.committed = committed
        self.positions = dict.fromkeys(committed, position)

    async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
        for tp, offset in self.committed.items():
            if offset and offset > 0:
                self.positions[tp] = offset
        return dict(self.committed)

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self.positions[tp] = 0


async def test_fetched_but_never_committed_partitions_are_read_again_from_the_start() -> None:
    # Each partition was fetched up to offset 7 and what was fetched was dropped.
    committed = {EVENTS[0]: None, EVENTS[1]: 0, EVENTS[2]: 5, EVENTS[3]: 7, CHANGELOG: None}
    consumer = FakeConsumer(committed, position=7)
    returned = await seek_to_committed_or_beginning(consumer, {CHANGELOG.topic})  # type: ignore[arg-type]
    assert returned == committed
    assert consumer.positions == {EVENTS[0]: 0, EVENTS[1]: 0, EVENTS[2]: 5, EVENTS[3]: 7, CHANGELOG: 7}


class ConsumerWith:
    """Just the part of an AIOKafkaConsumer that holds partition positions."""

    def __init__(self, subscriptions: SubscriptionState) -> None:
        self._fetcher = SimpleNamespace(_subscriptions=subscriptions)


async def test_a_partition_waiting_for_its_seek_has_no_position_to_check() -> None:
    subscriptions = SubscriptionState()
    consumer = ConsumerWith(subscriptions)
    assert not has_position(consumer, EVENTS[0])  # type: ignore[arg-type]  # nothing subscribed yet

    subscriptions.assign_from_user({EVENTS[0], EVENTS[1]})
    state = subscriptions.subscription.assignment.state_value(EVENTS[0])
    assert not has_position(consumer, EVENTS[0])  # type: ignore[arg-type]  # assigned, not yet sought
    state.seek(5)
    assert has_position(consumer, EVENTS[0])  # type: ignore[arg-type]
    state.await_reset(OffsetResetStrategy.EARLIEST)  # what seek_to_beginning does
    assert not has_position(consumer, EVENTS[0])  # type: ignore[arg-type]
    assert not has_position(consumer, EVENTS[2])  # type: ignore[arg-type]  # not assigned here


class CommittingConsumer:
    def __init__(self, commit_takes: float) -> None:
        self.commit_takes = commit_takes
        self.commits = 0

    async def commit(self) -> bool:
        await asyncio.sleep(self.commit_takes)
        self.commits += 1
        return True


async def test_finished_work_is_committed_before_partitions_are_given_up() -> None:
    consumer = CommittingConsumer(commit_takes=0)
    await commit_before_handover(consumer)  # type: ignore[arg-type]
    assert consumer.commits == 1


async def test_a_commit_held_up_does_not_hold_up_the_rebalance(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(consumer_module, "HANDOVER_COMMIT_SECONDS", 0.05)
    consumer = CommittingConsumer(commit_takes=60)
    async with asyncio.timeout(1):
        await commit_before_handover(consumer)  # type: ignore[arg-type]
    assert consumer.commits == 0
    assert "could not commit before giving partitions up" in caplog.text


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_the_broker_holds_an_empty_fetch_a_tenth_of_a_second_not_faust_s_one_and_a_half(guarantee: str) -> None:
    from meterwatch.config import ProcessingGuarantee, load_settings
    from meterwatch.streams.app import create_app
    from meterwatch.streams.pipeline.ingest_kafka import new_consumer

    mw = create_app(load_settings({"METERWATCH_AUTH": "off"}), "127.0.0.1:9092", ProcessingGuarantee(guarantee))
    thread = mw.app.consumer._thread
    faust_consumer = thread._create_worker_consumer(mw.app.transport)
    ingest_consumer = new_consumer(mw, "g", isolation_committed=False)
    assert faust_consumer._fetch_max_wait_ms == ingest_consumer._fetch_max_wait_ms == 100


async def test_from_a_stop_of_the_flow_until_recovery_seeks_again_the_position_is_not_taken_for_what_was_read() -> None:
    """A rebalance stops the flow and records fetched by then are dropped undelivered, behind the
    consumer's position. Faust's recovery takes a changelog partition whose position reached its
    end for read, so until recovery has sought its partitions again the position answers -1."""
    from meterwatch.config import ProcessingGuarantee, load_settings
    from meterwatch.streams.app import create_app

    mw = create_app(load_settings({"METERWATCH_AUTH": "off"}), "127.0.0.1:9092", ProcessingGuarantee("exactly_once"))
    consumer = mw.app.consumer
    tp = TopicPartition("mw-workspaces-changelog", 3)

    async def fetched_through(asked: TopicPartition) -> int:
        assert asked == tp
        return 120

    consumer._thread.position = fetched_through
    assert await consumer.position(tp) == 120
    consumer.stop_flow()
    assert await consumer.position(tp) == -1
    consumer.resume_flow()  # recovery resumes the flow only after its seek; resuming alone is not enough
    assert await consumer.position(tp) == -1
    consumer.recovery_sought()
    assert await consumer.position(tp) == 120
