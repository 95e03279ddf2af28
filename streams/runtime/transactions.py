"""Exactly-once sends for meterwatch's repartitioning pipeline.

Faust picks the transaction of a send by the *destination* partition, which is only right when a
record goes to the same partition number it came from. meterwatch re-keys (usage.events to the
workspace inbox) and writes to topics it does not consume (alerts, dead letters), so a send here
joins the transaction of the *source* partition being processed, the one whose offset commit
makes it visible. The agents name that partition with ``partition_context.acting_for``.
"""

from __future__ import annotations

import asyncio
import logging
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
from .consumer import HANDOVER_COMMIT_SECONDS, CommittedOrBeginningConsumer, CommittedOrBeginningConsumerThread
from .fencing import is_lost_commit

log = logging.getLogger(__name__)


class SourcePartitionTransactions(TransactionManager):
    logger = FAUST_SERVICES_LOG
    commit_gate: CommitGate  # set by install()

    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        # Copied from faust-streaming 0.15.3, faust/transport/consumer.py, TransactionManager.commit.
        # Changed: a transaction ends only between batches (streams/runtime/commit_gate.py), and a
        # fenced producer, or a commit that raced a fence, shuts the gate instead of crashing the
        # worker (streams/runtime/fencing.py).
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
                if not is_lost_commit(error):
                    raise
                self.commit_gate.lose_transactions(error)
                return False
            return True

    async def end_open_transactions(self) -> None:
        """Commit every transaction that still holds sends, without offsets; called at a revoke
        once the streams are empty and the revoke's own commit has run.

        Every input whose work is in such a transaction is acknowledged by then, and replaying
        one is judged by the state committed with its outputs, so committing them without their
        offsets never counts or publishes anything twice. A transaction left open instead would
        be invisible to the next recovery of this very worker (``streams/runtime/consumer.py``).
        """
        driver = self.producer
        async with self.commit_gate.commit():
            if self.commit_gate.shut:
                return  # lost work: streams/runtime/fencing.py gives it up
            holding = [tid for tid, producer in driver._transaction_producers.items() if holds_sends(producer)]  # noqa: SLF001
            try:
                for transactional_id in holding:
                    async with driver._trn_locks[transactional_id]:  # noqa: SLF001
                        producer = driver._transaction_producers.get(transactional_id)  # noqa: SLF001
                        if producer is not None:
                            await asyncio.wait_for(producer.commit_transaction(), HANDOVER_COMMIT_SECONDS)
            except Exception as error:
                # Fenced, refused or too slow: what the transaction held is not ours to keep.
                self.commit_gate.lose_transactions(error)
                return
        if holding:
            log.info("rebalance: committed %d transaction(s) still open at the revoke", len(holding))

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


def holds_sends(producer: Any) -> bool:
    """Whether an aiokafka transactional producer is in a transaction that has sent something."""
    txn = producer._txn_manager  # noqa: SLF001
    return txn is not None and txn.is_in_transaction() and bool(txn.txn_partitions or txn.partitions_to_add())


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
