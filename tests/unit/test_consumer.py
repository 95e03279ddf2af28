"""After a rebalance, a partition with no committed offset is read from its beginning."""

from __future__ import annotations

from aiokafka import TopicPartition
from meterwatch.streams.consumer import seek_to_committed_or_beginning

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
