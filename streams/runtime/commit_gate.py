"""Transactions that never end half-way through a batch.

Under ``exactly_once`` Faust commits every open transaction on a timer (``broker_commit_interval``),
whenever that timer fires. A batch sends its outputs (alerts, Fin transitions, forwarded events)
before it writes the table values that record it as applied, and it awaits between the two; a
commit landing there made the outputs visible while the state that says "applied" went into the
next transaction. A worker killed before that next commit came back from the older state,
applied the batch again, and published the same alert (or Fin transition) a second time, with
the same ``alert_id``.

The gate lets batches run side by side and a commit run alone: a commit waits until no batch is
in flight, and no batch starts while a commit waits. A batch acknowledges its input before it
leaves, so the commit that follows carries its offsets together with everything it produced.

The gate also shuts when this worker's transactions are lost (another worker fenced its producer,
streams/runtime/fencing.py) or a batch fails outside the per-message isolation (a table or output write
refused, say): from then until the tables are rebuilt no batch runs and nothing commits, and a
batch that was running when it happened is given up, unacknowledged. A failed batch may have
changed tables in memory that their changelogs never got, so the worker rebuilds them and reads
again from its last commit, as after lost transactions; a failure that persists is met again,
and the worker never moves past it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from enum import Enum

from faust.types import AppT, EventT

from .fencing import is_lost_transaction

log = logging.getLogger(__name__)


class Transactions(Enum):
    HELD = "held"
    LOST = "lost"  # fenced or a batch failed: waiting for the next rebalance to give up the work in hand
    GIVEN_UP = "given_up"  # local state dropped: waiting for the tables to be rebuilt


class CommitGate:
    def __init__(self) -> None:
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()
        self._commits = asyncio.Lock()
        self.transactions = Transactions.HELD
        # Called once when transactions are lost, or when a batch fails; the worker asks the
        # group for a rebalance.
        self.on_lost: Callable[[], None] = lambda: None
        self.on_failed: Callable[[], None] = lambda: None
        # The last batch failure, (stage, "ErrorType: message"), until a batch of that stage succeeds.
        self.failure: tuple[str, str] | None = None

    @property
    def batches_in_flight(self) -> int:
        return self._in_flight

    @property
    def lost(self) -> bool:
        return self.transactions is Transactions.LOST

    @property
    def shut(self) -> bool:
        return self.transactions is not Transactions.HELD

    def lose_transactions(self, error: BaseException) -> None:
        if self.transactions is Transactions.LOST:
            return
        log.warning(
            "transactions lost (%s: %s): another worker has taken over; giving up the work in hand and rejoining",
            type(error).__name__,
            error,
        )
        self.transactions = Transactions.LOST
        self.on_lost()

    def fail(self, stage: str, error: BaseException) -> None:
        """A batch of ``stage`` failed: give up the work in hand as if transactions were lost."""
        self.failure = (stage, f"{type(error).__name__}: {error}"[:500])
        if self.transactions is not Transactions.HELD:
            return
        log.error(
            "%s batch failed (%s: %s); giving up the work in hand: tables are rebuilt from their "
            "changelogs and input is read again from the last commit",
            stage,
            type(error).__name__,
            error,
            exc_info=error,
        )
        self.transactions = Transactions.LOST
        self.on_failed()

    def succeeded(self, stage: str) -> None:
        if self.failure is not None and self.failure[0] == stage:
            self.failure = None

    def give_up(self) -> bool:
        """At a rebalance: whether the work in hand is to be dropped now (transactions lost)."""
        if self.transactions is not Transactions.LOST:
            return False
        self.transactions = Transactions.GIVEN_UP
        return True

    def reopen(self) -> bool:
        """Once the tables are rebuilt: let batches run again if the work in hand was given up."""
        if self.transactions is not Transactions.GIVEN_UP:
            return False
        self.transactions = Transactions.HELD
        return True

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[bool]:
        """Around one batch: from its first output to its input's acknowledgement. Yields whether
        the batch may run; a batch whose transaction is lost part-way is given up quietly."""
        # A waiter woken by set() returns even if the gate was shut again before it ran: a commit
        # that started in between would then run beside this batch, and could carry its first
        # sends (the event ids) without the rest (the counts). So look again.
        while not self._open.is_set():
            await self._open.wait()
        if self.shut:
            yield False
            return
        self._in_flight += 1
        self._idle.clear()
        try:
            async with self._given_up_if_lost():
                yield True
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    @asynccontextmanager
    async def outside_batches(self) -> AsyncIterator[bool]:
        """Like ``batch`` for work that must not hold commits back (mail, which can wait on an
        SMTP server for minutes): shut out and given up the same way, but not waited for."""
        if self.shut:
            yield False
            return
        async with self._given_up_if_lost():
            yield True

    @asynccontextmanager
    async def _given_up_if_lost(self) -> AsyncIterator[None]:
        try:
            yield
        except Exception as error:
            if not is_lost_transaction(error):
                raise
            self.lose_transactions(error)

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
