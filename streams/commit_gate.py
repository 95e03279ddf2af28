"""Transactions that never end half-way through a batch.

Under ``exactly_once`` Faust commits every open transaction on a timer (``broker_commit_interval``),
whenever that timer fires. A batch sends its outputs (alerts, Fin transitions, forwarded events)
before it writes the table values that record it as applied, and it awaits between the two; a
commit landing there made the outputs visible while the state that says "applied" went into the
next transaction. A worker killed before that next commit came back from the older state,
applied the batch again, and published the same alert a second time (same ``alert_id``: the
three-worker kill test saw one duplicate alert and one repeated Fin transition in a run).

The gate lets batches run side by side and a commit run alone: a commit waits until no batch is
in flight, and no batch starts while a commit waits. A batch acknowledges its input before it
leaves, so the commit that follows carries its offsets together with everything it produced.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from faust.types import AppT, EventT


class CommitGate:
    def __init__(self) -> None:
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()
        self._commits = asyncio.Lock()

    @property
    def batches_in_flight(self) -> int:
        return self._in_flight

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Around one batch: from its first output to its input's acknowledgement."""
        await self._open.wait()
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    @asynccontextmanager
    async def commit(self) -> AsyncIterator[None]:
        """Around one commit: waits for the batches in flight, holds new ones back meanwhile."""
        async with self._commits:
            self._open.clear()
            try:
                await self._idle.wait()
                yield
            finally:
                self._open.set()


def acknowledge(app: AppT, events: Iterable[EventT]) -> None:
    """Mark a finished batch's input as processed now, inside the gate, rather than when the
    agent asks for its next batch (``take_events`` acknowledges then, which is a no-op for a
    message already acknowledged)."""
    consumer = app.consumer
    for event in events:
        message = event.message
        if message.ack(consumer):  # what Faust's Stream.ack does, minus the per-stream sensor
            app.sensors.on_message_out(message.tp, message.offset, message)
