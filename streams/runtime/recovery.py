"""Table recovery that hands the input partitions back without dropping their first messages,
and survives a rebalance arriving mid-recovery.

**First messages after a restart.** When the tables are restored, Faust resumes the input
partitions, seeks them to their committed offsets, and only then resumes flow control, which
empties every stream's queue. The consumer's flow is active during recovery (changelogs are read
through it), so in the wait for the seek the fetcher could already deliver the first messages after
the committed offset into a stream queue, and record them as read; the queue was then emptied,
and they were never processed nor fetched again. The offsets that followed were acknowledged, and
Faust commits the first unbroken run of acknowledged offsets, which started after the hole, so
the first messages after a restart could be lost. Here the flow is stopped and the stale queues emptied *before* the partitions are
resumed, and the flow resumes only after the seek: the first message delivered is the committed
one.

**Offsets of standby partitions.** Faust records a changelog partition it has just been given with offset ``None`` (nothing read,
nothing persisted) and resolves that to a real offset only for the partitions it knew when the
recovery began. When the group rebalanced again part-way (a worker killed while another was
restoring), standby partitions added by the new assignment still held ``None`` when Faust sought
them, and aiokafka's ``seek`` raised ``ValueError: Offset must be a positive integer``: the
Recovery service crashed and took the worker down. ``None`` means the same as Faust's own ``-1``: read the changelog from its beginning.

**Tables restored empty after back-to-back rebalances.** Under exactly_once a changelog read to
its end stops short of the broker's end (the last commit marker is no record), so Faust's
changelog reader, after two idle 5 s waits, takes any partition whose consumer *position* has
reached the end for fully read, and marks its offset so. That check also ran in the gap between
a new recovery publishing its start offsets and seeking the consumer to them, while positions
still stood at the end from the superseded recovery: every changelog partition was marked read
without a record being read, and counting went on from empty tables (Faust's own logs then show
"Aborted tx until highwater" 50 ms after "Reading Starts At", and "Recovery complete" with
nothing restored).
Here the consumer is sought to the start offsets *before* they are published.

**A partition taken for read while a rebalance dropped its records.** Under exactly_once the
same changelog reader, after two idle 5 s waits, sets a partition's offset to the recovery's end
offset once the consumer's position has reached it ("Aborted tx until highwater"), and a
recovery that follows starts there. When a rebalance begins the flow stops, and records already
fetched are dropped undelivered: the position is past records recovery never read. Were the
check made then, the next recovery would skip them and restore the table without its last
values while the input went on from its committed offset. The consumer answers that check with
-1 from a stop of the flow until recovery has sought its active partitions again
(``streams/runtime/consumer.py``, ``delivery_broken``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping

from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP

from ...logs import FAUST_SERVICES_LOG
from .consumer import capture_marks

NOTHING_READ = -1


def seekable_offsets(tps: set[TP], offsets: Mapping[TP, int | None]) -> Counter[TP]:
    """Offsets for ``tps`` with "nothing read yet" (``None``, or anything below zero) as ``-1``,
    which Faust seeks to the start of the changelog."""
    seekable: Counter[TP] = Counter()
    for tp in tps:
        offset = offsets.get(tp)
        seekable[tp] = offset if offset is not None and offset >= 0 else NOTHING_READ
    return seekable


def start_offsets(tps: set[TP], known: Mapping[TP, int | None], earliest: Mapping[TP, int | None]) -> dict[TP, int]:
    """Where recovery reads each partition from, as Faust decides it: the last offset read (or
    persisted), but never before the changelog's earliest offset, and -1 when neither is known."""
    start = {}
    for tp in tps:
        read = known.get(tp)
        first = earliest.get(tp)
        first_minus_one = first - 1 if first is not None else None
        if read is None and first_minus_one is None:
            start[tp] = NOTHING_READ
        elif read is None:
            start[tp] = first_minus_one
        elif first_minus_one is None:
            start[tp] = read
        else:
            start[tp] = max(read, first_minus_one)
    return start


def seek_targets(start: Mapping[TP, int]) -> dict[TP, int]:
    """The positions Faust seeks for those start offsets (it re-reads the last record read)."""
    return {tp: offset if offset >= 0 else 0 for tp, offset in start.items()}


class RebalanceSafeRecovery(Recovery):
    logger = FAUST_SERVICES_LOG

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        # Copied from faust-streaming 0.15.3, faust/tables/recovery.py, Recovery.on_recovery_completed.
        # Changed: the order, as the module docstring explains; nothing else.
        consumer = self.app.consumer
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning(
                f"Recovery rebalancing again app id {self.app.consumer_generation_id} param {generation_id}"
            )
            return
        consumer.stop_flow()
        self.app.flow_control.resume()  # empties the stream queues: nothing in them is still wanted
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        if assignment:
            capture_marks(self.app, assignment)
            await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
        self.completed.set()
        consumer.resume_flow()
        await self.app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")

    async def _seek_offsets(self, consumer, tps, offsets, title):  # type: ignore[no-untyped-def]
        await super()._seek_offsets(consumer, tps, seekable_offsets(tps, offsets), title)

    async def _build_offsets(self, consumer, tps, destination, title):  # type: ignore[no-untyped-def]
        # Copied from faust-streaming 0.15.3, faust/tables/recovery.py, Recovery._build_offsets.
        # Changed: for active partitions the consumer is sought to the start offsets before they
        # are published, and told so (module docstring).
        earliest = await consumer.earliest_offsets(*tps)
        start = start_offsets(tps, destination, earliest)
        if destination is self.active_offsets and start:
            await consumer.seek_wait(seek_targets(start))
            consumer.recovery_sought()
        for tp, offset in start.items():  # assigned: Counter.update would add
            destination[tp] = offset
        if destination:
            self.log.info(
                "%s offsets at start of reading:\n%s",
                title,
                self._start_offsets_logtable(destination, title=title),
            )

    def standby_remaining(self) -> Counter[TP]:
        # Faust compares each offset with 0, which raises TypeError on a partition still at None.
        offsets = self.standby_offsets
        return Counter(
            {
                tp: highwater - offsets[tp]
                for tp, highwater in self.standby_highwaters.items()
                if highwater is not None and highwater >= 0 and offsets.get(tp) is not None and offsets[tp] >= 0
            }
        )


class RebalanceSafeTableManager(TableManager):
    logger = FAUST_SERVICES_LOG

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = RebalanceSafeRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
