"""The stream consumer: a seek to the committed offsets that also moves partitions with none.

Faust re-reads from the committed offsets after every rebalance (``perform_seek``), trusting
aiokafka's ``seek_to_committed``, which leaves a partition whose committed offset is missing or 0
where its fetch position happens to be. A message fetched and then dropped (a stream queue
emptied, a delivery cancelled by a rebalance) was then never fetched again, and once a later
offset was acknowledged Faust committed past it: the three-worker kill test lost the first mail
request of a partition (offset 0, nothing committed yet) that way. Nothing committed means nothing
processed: read such a partition from its beginning, as ``auto_offset_reset=earliest`` says.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer
from faust.types import TP

from ..logs import FAUST_SERVICES_LOG


async def seek_to_committed_or_beginning(
    consumer: AIOKafkaConsumer, changelog_topics: set[str]
) -> Mapping[TP, int | None]:
    committed = await consumer.seek_to_committed()
    # Changelogs are never committed by the group: recovery places them itself.
    unread = [tp for tp, offset in committed.items() if not offset and tp.topic not in changelog_topics]
    if unread:
        await consumer.seek_to_beginning(*unread)
    return committed


class CommittedOrBeginningConsumerThread(AIOKafkaConsumerThread):
    logger = FAUST_SERVICES_LOG

    async def seek_to_committed(self) -> Mapping[TP, int]:
        changelogs = set(self.consumer.app.tables.changelog_topics)
        return await self.call_thread(seek_to_committed_or_beginning, self._ensure_consumer(), changelogs)


class CommittedOrBeginningConsumer(Consumer):
    logger = FAUST_SERVICES_LOG

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return CommittedOrBeginningConsumerThread(self, loop=self.loop, beacon=self.beacon)
