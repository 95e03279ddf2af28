"""The stream consumer: a seek to the committed offsets that also moves partitions with none.

Faust re-reads from the committed offsets after every rebalance (``perform_seek``), trusting
aiokafka's ``seek_to_committed``, which leaves a partition whose committed offset is missing or 0
where its fetch position happens to be. A message fetched and then dropped (a stream queue
emptied, a delivery cancelled by a rebalance) was then never fetched again, and once a later
offset was acknowledged Faust committed past it: the three-worker kill test lost the first mail
request of a partition (offset 0, nothing committed yet) that way. Nothing committed means nothing
processed: read such a partition from its beginning, as ``auto_offset_reset=earliest`` says.

A partition so moved has no position until its next fetch, and Faust's livelock detector reads
every assigned partition's position, which aiokafka asserts is set: the worker crashed with a bare
``AssertionError`` (a three-worker kill test run, seconds after a rebalance). Such a partition is
left out of that check until it has a position again.

**Finished work is committed before a partition is given up.** Faust forgets what was
acknowledged on a revoked partition and commits nothing then ("processed again eventually"):
under exactly_once the open transaction is dropped with its producer, and the next owner redoes
the work since the last commit. For counting that is only repeated effort, but a mail the SMTP
server already took was sent again (the kill test's duplicate mails, on rebalances caused by
another worker's restart). So what was acknowledged is committed first, while it is still ours,
and again once the streams are empty (Faust would forget those acknowledgements before that last
commit).

**No transaction stays open across a rebalance.** Under exactly_once a transaction holding a
batch's sends that was not committed at the revoke stayed open into the next assignment when the
worker kept the partition. Table recovery reads changelogs read_committed, so it restored the
values from before that batch, the input was read again from the last commit, and the batch's
alerts and Fin transitions went into the same open transaction a second time: committed later,
each was published twice with the same id. Whatever a transaction still holds once the streams
are empty is committed then (``transactions.SourcePartitionTransactions.end_open_transactions``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer, credentials_to_aiokafka_auth
from faust.types import TP

from ...logs import FAUST_SERVICES_LOG
from .applied_marks import Rewinder

log = logging.getLogger(__name__)

# A commit normally takes milliseconds; one held up by a broker outage must not hold up the rebalance.
HANDOVER_COMMIT_SECONDS = 10.0
# How long the broker may hold a fetch that finds nothing new (aiokafka's default is 500 ms).
FETCH_MAX_WAIT_MS = 100


async def seek_to_committed_or_beginning(
    consumer: AIOKafkaConsumer, changelog_topics: set[str], rewinder: Rewinder | None = None
) -> Mapping[TP, int | None]:
    committed = await consumer.seek_to_committed()
    # Changelogs are never committed by the group: recovery places them itself.
    unread = [tp for tp, offset in committed.items() if not offset and tp.topic not in changelog_topics]
    if unread:
        await consumer.seek_to_beginning(*unread)
    if rewinder is not None:
        # Synchronously, with no await between the seek and Faust taking the offsets as read.
        return rewinder.rewind(consumer, committed)
    return committed


# Reading past a reported end: rounds of fetches, each held at most this long by the broker; the
# whole probe, start and stop of its consumer included, is given up after END_PROBE_SECONDS.
END_PROBE_ROUNDS = 8
END_PROBE_WAIT_MS = 20
END_PROBE_SECONDS = 10.0


async def records_end(bootstrap: Any, ends: Mapping[TP, int], auth: Mapping[str, Any] | None = None) -> dict[TP, int]:
    """``ends`` moved past any record found at or after them: one past the last record read.

    Where the broker's answer is the true end (Apache Kafka) the first fetch finds nothing. A
    partition still being written (a standby's) may grow meanwhile; reading stops after
    ``END_PROBE_ROUNDS`` rounds, as any end of a moving partition is a snapshot. If the probe
    fails or takes too long, the broker's answer stands."""
    try:
        found = await asyncio.wait_for(_read_past(bootstrap, ends, auth or {}), END_PROBE_SECONDS)
    except Exception as error:  # the probe is a correction, never a new way to fail recovery
        log.warning(
            "recovery: could not read past the changelogs' reported ends (%s: %s); reading to them",
            type(error).__name__,
            error,
        )
        return dict(ends)
    moved = {tp: (ends[tp], end) for tp, end in found.items() if end != ends[tp]}
    if moved:
        log.info(
            "recovery: %d changelog partition(s) end past where the broker said: %s",
            len(moved),
            ", ".join(f"{tp.topic}[{tp.partition}] {was}->{now}" for tp, (was, now) in sorted(moved.items())[:8]),
        )
    return found


async def _read_past(bootstrap: Any, ends: Mapping[TP, int], auth: Mapping[str, Any]) -> dict[TP, int]:
    found = dict(ends)
    probe = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=END_PROBE_WAIT_MS,
        max_partition_fetch_bytes=64 * 1024,
        **auth,
    )
    await probe.start()
    try:
        partitions = {TopicPartition(tp.topic, tp.partition): tp for tp in ends}
        probe.assign(list(partitions))
        for partition, tp in partitions.items():
            probe.seek(partition, ends[tp])
        for _ in range(END_PROBE_ROUNDS):
            fetched = await probe.getmany(timeout_ms=END_PROBE_WAIT_MS * 5)
            if not fetched:
                break
            for partition, records in fetched.items():
                if records:
                    tp = partitions[partition]
                    found[tp] = max(found[tp], records[-1].offset + 1)
    finally:
        try:
            await probe.stop()
        except asyncio.CancelledError:
            # aiokafka's stop can raise the cancellation of its own group-less coordinator's
            # task; only a cancellation of this task goes on.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
    return found


class CommittedOrBeginningConsumerThread(AIOKafkaConsumerThread):
    logger = FAUST_SERVICES_LOG

    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Faust fixes 1.5 s. aiokafka leaves partitions with records still unread out of its next
        # fetch, and the broker holds that fetch up to this long when the others have nothing
        # new: records arriving meanwhile for the left-out ones waited for it. Read before
        # start(), which builds the fetcher.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # noqa: SLF001
        return consumer

    async def seek_to_committed(self) -> Mapping[TP, int]:
        app = self.consumer.app
        changelogs = set(app.tables.changelog_topics)
        return await self.call_thread(
            seek_to_committed_or_beginning, self._ensure_consumer(), changelogs, _REWINDERS.get(app)
        )

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        ends = await super()._highwaters(partitions)
        if self.consumer.in_transaction or not ends:
            return ends
        # Table recovery reads each changelog up to these ends. Some brokers (the embedded
        # Tansu) answer a partition's end as one past the first offset of its last record batch:
        # recovery would stop before that batch's other records and count on from stale values.
        client = self._ensure_consumer()._client  # noqa: SLF001 - where the consumer connects
        conf = self.consumer.app.conf
        auth = credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context)  # as the consumer's own
        return await records_end(client._bootstrap_servers, ends, auth)  # noqa: SLF001

    def verify_event_path(self, now: float, tp: TP) -> None:
        if has_position(self._ensure_consumer(), tp):
            super().verify_event_path(now, tp)

    async def request_rejoin(self) -> None:
        await self.call_thread(self._request_rejoin)

    async def _request_rejoin(self) -> None:
        self._ensure_consumer()._coordinator.request_rejoin()


def has_position(consumer: AIOKafkaConsumer, tp: TP) -> bool:
    """Whether aiokafka knows where ``tp`` is read from: false while a seek waits for its fetch."""
    subscription = consumer._fetcher._subscriptions.subscription
    assignment = subscription.assignment if subscription is not None else None
    if assignment is None:
        return False
    state = assignment.state_value(TopicPartition(tp.topic, tp.partition))
    return state is not None and state.has_valid_position


class CommittedOrBeginningConsumer(Consumer):
    logger = FAUST_SERVICES_LOG
    # True from a stop of the flow (a rebalance begins) until table recovery seeks its active
    # changelog partitions again (streams/runtime/recovery.py). Records fetched while the flow stops are
    # dropped undelivered, past the consumer's position: meanwhile the position says nothing of
    # what recovery has read.
    delivery_broken = False

    def stop_flow(self) -> None:
        self.delivery_broken = True
        super().stop_flow()

    def recovery_sought(self) -> None:
        """Recovery has sought its active changelog partitions to the offsets it has read."""
        self.delivery_broken = False

    async def position(self, tp: TP) -> int | None:
        """The partition's position, or -1 while ``delivery_broken``.

        Only Faust's recovery asks (``Recovery._slurp_changelogs``): under exactly_once, after two
        idle 5 s waits it takes an active changelog partition whose position has reached the
        recovery's end offset for read to the end ("Aborted tx until highwater"), and the next
        recovery starts from there. Asked in a rebalance, with records dropped behind that
        position, that skipped them, and the restored table lacked its last values."""
        if self.delivery_broken:
            return -1
        return await super().position(tp)

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return CommittedOrBeginningConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        rewinder = _REWINDERS.get(self.app)
        if rewinder is not None:
            rewinder.forget()  # counting goes on past the marks it restored
        if revoked and not self.app.should_stop:  # stopping: Faust's own shutdown commits
            for settle in _BEFORE_HANDOVER.get(self.app, ()):
                await settle()
            await commit_before_handover(self)
        # Copied from faust-streaming 0.15.3, faust/transport/consumer.py,
        # Consumer.on_partitions_revoked. Changed: the revoked partitions' acknowledgements are
        # forgotten after the app's handler, whose last commit (once the streams are empty)
        # then carries them, rather than before it; tracing spans dropped.
        if self._active_partitions is not None:
            self._active_partitions.difference_update(revoked)
        self._paused_partitions.difference_update(revoked)
        await self._on_partitions_revoked(revoked)
        for tp in revoked:
            self._gap.pop(tp, None)
            self._acked.pop(tp, None)
            self._acked_index.pop(tp, None)
            self._read_offset.pop(tp, None)
            self._committed_offset.pop(tp, None)
        if revoked and self.in_transaction and not self.app.should_stop:
            await self.transactions.end_open_transactions()

    async def request_rejoin(self) -> None:
        """Ask the group for a rebalance (streams/runtime/fencing.py)."""
        await self._thread.request_rejoin()


_REWINDERS: weakref.WeakKeyDictionary[Any, Rewinder] = weakref.WeakKeyDictionary()


def rewind_to_marks(app: Any, rewinder: Rewinder) -> None:
    """Have every seek of ``app``'s consumer to the committed offsets read the inbox again from
    the marks ``rewinder`` captured, where the group committed past them (streams/runtime/applied_marks.py)."""
    _REWINDERS[app] = rewinder


def capture_marks(app: Any, assignment: Any) -> None:
    """The restored tables' marks of ``assignment``, for the seeks that follow; recovery calls it
    right before it seeks the consumer to the committed offsets."""
    rewinder = _REWINDERS.get(app)
    if rewinder is not None:
        rewinder.capture(assignment)


_BEFORE_HANDOVER: weakref.WeakKeyDictionary[Any, list[Callable[[], Awaitable[None]]]] = weakref.WeakKeyDictionary()


def before_handover(app: Any, settle: Callable[[], Awaitable[None]]) -> None:
    """Have ``settle`` run when partitions are revoked, before the commit that hands them over:
    work it finishes (and acknowledges) then is committed rather than done again by the next owner."""
    _BEFORE_HANDOVER.setdefault(app, []).append(settle)


async def commit_before_handover(consumer: Consumer) -> None:
    try:
        await asyncio.wait_for(consumer.commit(), HANDOVER_COMMIT_SECONDS)
    except Exception as error:
        log.warning(
            "rebalance: could not commit before giving partitions up (%s: %s); their next owner "
            "repeats the work since the last commit",
            type(error).__name__,
            error,
        )
