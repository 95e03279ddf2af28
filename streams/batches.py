"""Handling a ``take_events`` batch one source partition at a time, and finishing it safely."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from faust.types import EventT

from ..sinks.kafka import TopicPublisher
from .commit_gate import acknowledge
from .partition_context import acting_for

if TYPE_CHECKING:
    from .app import Meterwatch


async def handle_batch(
    mw: Meterwatch, events: list[EventT], handler: Callable[[Meterwatch, list[EventT]], Awaitable[None]]
) -> None:
    """Run ``handler`` on a batch inside the commit gate and acknowledge the batch's input there,
    unless the worker's transactions are lost: the batch is then left unacknowledged, to be
    delivered again after the rebalance (streams/commit_gate.py, streams/fencing.py)."""
    async with mw.commit_gate.batch() as admitted:
        if admitted:
            await handler(mw, events)
            acknowledge(mw.app, events)


def by_source_partition(events: Iterable[EventT]) -> Iterator[tuple[int, list[EventT]]]:
    """The batch split by source partition, each part in offset order, each handled acting for
    one of its events (so table writes and sends join that partition)."""
    parts: dict[tuple[str, int], list[EventT]] = defaultdict(list)
    for event in events:
        parts[(event.message.topic, event.message.partition)].append(event)
    for (_, partition), part in parts.items():
        with acting_for(part[-1]):
            yield partition, part


async def finish(mw: Meterwatch, publisher: TopicPublisher) -> None:
    """Wait until every record and table write of the batch is acknowledged, before the batch's
    input is acknowledged: input is never committed ahead of what it produced."""
    await publisher.flush()
    for table in mw.tables.all():
        await table.wait_for_writes()
