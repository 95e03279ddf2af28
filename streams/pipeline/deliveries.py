"""The machinery the mail and webhook agents share: a request topic read by an agent that hands
each delivery (one mail to one recipient, one record to one endpoint) to an outbox sending
every one in a task of its own, and a ledger table recording each delivery once settled.

A delivery settled (sent, failed or given up) before a restart or a rebalance is not made
again: its ledger entry says so. A request's offset is acknowledged only once all its deliveries
are settled and their ledger entries written, so the committed position never passes a delivery
still being made. Every rebalance stops every delivery on this worker before the partitions are
given up, and forgets them: the requests are read again from the committed offsets, by whichever
worker owns them next.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import faust
import orjson
from faust.types import EventT
from prometheus_client import Counter, Gauge

from ...core.mail_retry import RetryPolicy
from ...models.outputs import Kind, Output, dead_letter
from ...sinks.email import MailOutbox
from ...sinks.outputs import Sinks, compose
from ..runtime.batches import by_source_partition, finish
from ..runtime.commit_gate import acknowledge
from ..runtime.consumer import before_handover
from ..runtime.partition_context import acting_for
from .dead_letters import dead_letter_failure

if TYPE_CHECKING:
    from ..app import Meterwatch

log = logging.getLogger(__name__)


def requested_at(event: EventT) -> datetime:
    """When the delivery was requested: its request's Kafka timestamp, the same for every worker."""
    timestamp = event.message.timestamp
    return datetime.fromtimestamp(timestamp, UTC) if timestamp and timestamp > 0 else datetime.now(UTC)


def register_agent(mw: Meterwatch, deliveries: Deliveries, channel: faust.TopicT, name: str) -> None:
    """Run ``deliveries`` as the agent of ``channel``, stopped and settled around every rebalance."""
    mw.app.sensors.add(StopAtRebalance(deliveries))
    before_handover(mw.app, deliveries.settle_before_handover)

    @mw.app.on_partitions_revoked.connect
    async def stop_deliveries_of_revoked_partitions(app: Any, revoked: Any, **kwargs: Any) -> None:
        await deliveries.stop()

    @mw.app.agent(channel, name=f"{mw.settings.group_id}.{name}")
    async def deliver(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(50, within=0.1):
            await deliveries.take(events)


class StopAtRebalance(faust.Sensor):
    """Faust calls ``on_rebalance_start`` before it commits and gives up any partition: from then
    on no attempt starts; those under way end, and settle, before the commit that precedes the
    hand-over (``Deliveries.settle_before_handover``)."""

    def __init__(self, deliveries: Deliveries) -> None:
        super().__init__()
        self._deliveries = deliveries

    def on_rebalance_start(self, app: faust.App) -> dict:
        self._deliveries.stop_now()
        return {}


class Deliveries:
    """One agent's state on this worker: its outbox, its ledger and the requests being served.
    A subclass reads each request (``take_one``) and starts its unsettled deliveries (``start``)."""

    what = "delivery"  # in log lines and dead letters: "mail", "webhook"
    stage = "deliveries"  # the stage named in an internal_error dead letter

    def __init__(
        self,
        mw: Meterwatch,
        ledger: faust.Table,
        sender: Any,
        *,
        give_up_after: timedelta,
        retries: Counter,
        backlog: Gauge,
        handover_seconds: float,
        max_pending: int,
        max_concurrent_sends: int = 4,
    ) -> None:
        """``sender`` makes one attempt of a delivery (``sinks.email.MailSender``'s shape);
        ``retries`` counts the attempts tried again and ``backlog`` shows the deliveries in hand."""
        self.mw, self.ledger = mw, ledger
        self.outbox = MailOutbox(
            sender,
            on_sent=self._sent,
            on_failed=self._failed,
            on_refused=self._refused,
            on_given_up=self._given_up,
            on_retry=lambda key, attempts, why: retries.inc(),
            policy=RetryPolicy(give_up_after=give_up_after),
            max_concurrent_sends=max_concurrent_sends,
            max_pending=max_pending,
            may_send=self.may_send,
            what=self.what,
        )
        backlog.set_function(self.outbox.backlog)
        self._handover_seconds = handover_seconds
        # ledger key of one delivery -> the requests waiting for it (more than one when it was
        # requested again meanwhile); a request is acknowledged once all its deliveries are settled.
        self._requests: dict[str, list[_Request]] = {}

    def may_send(self) -> bool:
        """No attempt starts while a rebalance (with its table recovery) runs or after transactions
        were lost: the partitions may be another worker's by now."""
        return not self.mw.commit_gate.shut and not self.mw.app.rebalancing

    def _owns(self, event: EventT) -> bool:
        return self.may_send() and event.message.tp in self.mw.app.consumer.assignment()

    def stop_now(self) -> None:
        self.outbox.hold()

    async def settle_before_handover(self) -> None:
        """Let the attempts under way end and record what they delivered, so that the commit
        before the hand-over covers them; whatever has not settled by then is left to the next
        owner (unacknowledged, it is read again from the committed offset)."""
        unsettled = await self.outbox.drain(self._handover_seconds)
        self._requests.clear()
        if unsettled:
            log.info(
                "rebalance: %d %s(s) not settled; the partitions' next owner makes them", len(unsettled), self.what
            )

    async def stop(self) -> None:
        stopped = await self.outbox.stopped()
        self._requests.clear()
        if stopped:
            log.info("rebalance: %d %s(s) stopped; the partitions' next owner makes them", len(stopped), self.what)

    async def take(self, events: list[EventT]) -> None:
        mw = self.mw
        async with mw.commit_gate.outside_batches() as admitted:
            if admitted:
                sinks = compose(mw.channels)
                for _, part in by_source_partition(events):
                    for event in part:
                        if not self._owns(event):
                            # Delivered again after the rebalance, to this worker or another.
                            keep_unacknowledged(event)
                            continue
                        try:
                            await self.take_one(event, sinks)
                        except Exception as error:
                            await dead_letter_failure(mw, sinks, self.stage, event, error)
                            acknowledge(mw.app, [event])
                await finish(mw, sinks)

    async def take_one(self, event: EventT, sinks: Sinks) -> None:
        raise NotImplementedError

    async def start(self, event: EventT, deliveries: dict[str, Any]) -> None:
        """Start every delivery (ledger key -> what the outbox sends) of the request ``event``
        not settled yet; acknowledge it at once when all are."""
        unsettled = {key: item for key, item in deliveries.items() if self.ledger.get(key) is None}
        if not unsettled:
            acknowledge(self.mw.app, [event])
            return
        await self.outbox.wait_for_room()
        if not self._owns(event):
            keep_unacknowledged(event)
            return
        # One more reference: take_events' own acknowledgement of the batch is then not the
        # last, and the offset stays uncommitted until every one of its deliveries is settled.
        event.message.incref()
        waiting = _Request(event, set(unsettled))
        for key, item in unsettled.items():
            requests = self._requests.get(key)
            if requests is not None:  # requested again while being made: settled with the first
                requests.append(waiting)
                continue
            self._requests[key] = [waiting]
            self.outbox.put(key, item, requested_at(event))

    async def settle(self, key: str, outcome: bytes, dead_letter_as: tuple[str, str] | None = None) -> None:
        """Record the outcome in the ledger (and publish the dead letter ``(code, message)``), then
        acknowledge its requests: never the other way round, so a crash in between makes the
        delivery again rather than forgetting it."""
        requests = self._requests.get(key)
        if not requests:
            return  # stopped by a rebalance meanwhile
        mw = self.mw
        async with mw.commit_gate.outside_batches() as admitted:
            if not admitted:
                return  # transactions lost: delivered again after the rebalance
            first = requests[0].event
            with acting_for(first):
                sinks = compose(mw.channels)
                if dead_letter_as is not None:
                    await publish_dead_letter(sinks, first, *dead_letter_as, self.dead_letter_key(first))
                await self.ledger.write(key, outcome)
                await sinks.flush()
            if self._requests.get(key) is requests:
                del self._requests[key]
                acknowledge(mw.app, [request.event for request in requests if request.settled(key)])

    async def _sent(self, key: str) -> None:
        raise NotImplementedError

    async def _failed(self, key: str, reason: str) -> None:
        """Failed for good: nobody can receive it."""
        raise NotImplementedError

    def _refused(self, key: str, refused: Mapping[str, str]) -> None:
        """Some recipients of a mail refused it for good (before ``_sent`` or ``_failed``)."""

    async def _given_up(self, key: str, reason: str) -> None:
        raise NotImplementedError

    def dead_letter_key(self, event: EventT) -> str | None:
        """The key of a dead letter about ``event``'s request, as for every output: the record's
        workspace (or, contract scope, its contract)."""
        raise NotImplementedError


async def publish_dead_letter(sinks: Sinks, event: EventT, code: str, text: str, key: str | None) -> None:
    message = event.message
    record = dead_letter(
        source_topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,  # the request; never a mail's body
        code=code,
        message=text,
        at=datetime.now(UTC),
    )
    await sinks.publish((Output(Kind.DEAD_LETTER, key, record),))


def owner_key(record: Any) -> str | None:
    """A record's workspace, else its contract; None when it is no such record."""
    try:
        return record.get("workspace_id") or record.get("contract_id")
    except AttributeError:
        return None


def decoded(value: bytes | None, *path: str) -> Any:
    """The JSON in ``value`` down ``path``, or None when it is not there."""
    try:
        found = orjson.loads(value or b"")
        for step in path:
            found = found[step]
        return found
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


@dataclass
class _Request:
    """A request being served: its event and the ledger keys of its deliveries not yet settled."""

    event: EventT
    unsettled: set[str] = field(default_factory=set)

    def settled(self, key: str) -> bool:
        """Note that the delivery under ``key`` is settled; True once all of this request's are."""
        self.unsettled.discard(key)
        return not self.unsettled


def keep_unacknowledged(event: EventT) -> None:
    """Hold ``event``'s offset back from the commit: ``take_events`` acknowledges every event of
    its batch when the batch ends, and an offset committed past a delivery never made would lose
    it. The rebalance under way reads it again from the committed offset."""
    event.message.incref()
