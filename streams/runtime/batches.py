"""Handling a ``take_events`` batch one source partition at a time, and finishing it safely."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from faust.types import EventT

from ...sinks.outputs import Sinks
from .commit_gate import acknowledge
from .fencing import is_lost_transaction
from .partition_context import acting_for

if TYPE_CHECKING:
    from ..app import Meterwatch


async def handle_batch(
    mw: Meterwatch,
    stage: str,
    events: list[EventT],
    handler: Callable[[Meterwatch, list[EventT]], Awaitable[None]],
) -> None:
    """Run ``handler`` on a batch inside the commit gate and acknowledge the batch's input there.

    A batch not run (the gate is shut), or that fails, or whose transactions are lost while it
    runs, is held back, never acknowledged: it is delivered again after the rebalance that
    rebuilds the tables (streams/runtime/commit_gate.py, streams/runtime/fencing.py). A failure is logged with
    its traceback, counted in ``meterwatch_batch_failures_total`` and shown by ``/health``."""
    gate = mw.commit_gate
    done = False
    try:
        async with gate.batch() as admitted:
            if admitted:
                try:
                    await handler(mw, events)
                except Exception as error:
                    if is_lost_transaction(error):
                        raise  # the gate gives the work up
                    mw.metrics.batch_failures.labels(stage).inc()
                    gate.fail(stage, error)
                    return
                acknowledge(mw.app, events)
                done = True
    finally:
        if not done:
            hold_back(events)
    if done:
        gate.succeeded(stage)


def hold_back(events: Iterable[EventT]) -> None:
    """Keep Faust from acknowledging ``events`` when the agent asks for its next batch
    (``take_events`` acknowledges every event of the last one, whatever became of it): the
    consumer never commits past them, and they are read again after the next rebalance."""
    for event in events:
        event.message.acked = True


def source_parts(events: Iterable[EventT]) -> list[tuple[int, list[EventT]]]:
    """The batch split by source partition, each part in offset order."""
    parts: dict[tuple[str, int], list[EventT]] = defaultdict(list)
    for event in events:
        parts[(event.message.topic, event.message.partition)].append(event)
    return [(partition, part) for (_, partition), part in parts.items()]


def by_source_partition(events: Iterable[EventT]) -> Iterator[tuple[int, list[EventT]]]:
    """The batch's parts (``source_parts``), each handled acting for one of its events (so table
    writes and sends join that partition)."""
    for partition, part in source_parts(events):
        with acting_for(part[-1]):
            yield partition, part


async def finish(mw: Meterwatch, sinks: Sinks) -> None:
    """Wait until every record and table write of the batch is acknowledged, before the batch's
    input is acknowledged: input is never committed ahead of what it produced."""
    await sinks.flush()
    for table in mw.tables.all():
        await table.wait_for_writes()
