"""Exactly-once sends for meterwatch's repartitioning pipeline.

Faust picks the transaction of a send by the *destination* partition, which is only right when a
record goes to the same partition number it came from. meterwatch re-keys (usage.events to the
workspace inbox) and writes to topics it does not consume (alerts, dead letters), so a send here
joins the transaction of the *source* partition being processed, the one whose offset commit
makes it visible. The agents name that partition with ``partition_context.acting_for``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Mapping
from typing import Any

from faust.streams import current_event
from faust.transport.consumer import TransactionManager
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP, HeadersArg
from faust.types.tuples import RecordMetadata

from ...logs import FAUST_SERVICES_LOG
from .commit_gate import CommitGate
from .consumer import CommittedOrBeginningConsumer, CommittedOrBeginningConsumerThread
from .fencing import is_lost_transaction


class SourcePartitionTransactions(TransactionManager):
    logger = FAUST_SERVICES_LOG
    commit_gate: CommitGate  # set by install()

    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        # Copied from faust-streaming 0.15.3, faust/transport/consumer.py, TransactionManager.commit.
        # Changed: a transaction ends only between batches (streams/runtime/commit_gate.py), and a
        # fenced producer shuts the gate instead of crashing the worker (streams/runtime/fencing.py).
        async with self.commit_gate.commit():
            if self.commit_gate.shut or not offsets:
                return False
            group_id = self.app.conf.id
            by_transactional_id: dict[str, dict[TP, int]] = defaultdict(dict)
            for tp, offset in offsets.items():
                by_transactional_id[self.transactional_id_for(tp)][tp] = offset
            try:
                await self.producer.commit_transactions(
                    by_transactional_id, group_id, start_new_transaction=start_new_transaction
                )
            except Exception as error:
                if not is_lost_transaction(error):
                    raise
                self.commit_gate.lose_transactions(error)
                return False
            return True

    def transactional_id_for(self, source: TP) -> str:
        group = self.app.assignor.group_for_topic(source.topic)
        return f"{self.app.conf.id}-{group}-{source.partition}"

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: HeadersArg | None,
        *,
        transactional_id: str | None = None,
    ) -> Awaitable[RecordMetadata]:
        event = current_event()
        if event is None:
            return await super().send(
                topic, key, value, partition, timestamp, headers, transactional_id=transactional_id
            )
        return await self.producer.send(
            topic,
            key,
            value,
            self.consumer.key_partition(topic, key, partition),
            timestamp,
            headers,
            transactional_id=self.transactional_id_for(event.message.tp),
        )


class CommittedEndConsumerThread(CommittedOrBeginningConsumerThread):
    logger = FAUST_SERVICES_LOG

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        # Under exactly_once Faust reads a changelog's end from the last fetch response, which
        # holds nothing for a partition not fetched since it was assigned: recovery then took
        # the changelog for empty, skipped it, and counting went on from empty tables. Ask the
        # broker: for a read_committed
        # consumer the answer is the last stable offset.
        return await self._ensure_consumer().end_offsets(partitions)


class CommittedEndConsumer(CommittedOrBeginningConsumer):
    logger = FAUST_SERVICES_LOG

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return CommittedEndConsumerThread(self, loop=self.loop, beacon=self.beacon)


def install(app: Any, commit_gate: CommitGate) -> None:
    """Make the app's Kafka transport create our transaction manager (committing through
    ``commit_gate``) and consumer."""
    app.transport.TransactionManager = type(
        "GatedSourcePartitionTransactions", (SourcePartitionTransactions,), {"commit_gate": commit_gate}
    )
    app.transport.Consumer = CommittedEndConsumer
