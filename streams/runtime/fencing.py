"""A worker fenced off by another gives up its work in hand and rejoins, instead of exiting.

Under exactly_once every source partition has a transactional producer, named after the
partition. When a rebalance hands a partition to another worker while this one still works on
it (a worker stalled past its session timeout, or rebalances back to back while workers are
killed and restarted), the new owner's producer fences this one: its open transaction is
aborted, and every send or commit on it fails with ``ProducerFenced`` (and after that with
``IllegalOperation``). Faust's answer is to crash the worker (``TransactionManager.commit`` calls
``app.crash``), which the three-worker kill test provokes.

What was lost is exactly what the aborted transactions held: table writes, outputs and offsets
since the last commit. So the worker does what Kafka Streams does with a task that migrated:

1. the commit gate shuts (no batch runs, nothing commits) and the group is asked to rebalance;
2. when the partitions are revoked, every transactional producer is stopped (whoever opens the
   same transactional id next, another worker or this one, aborts what it held), the in-memory
   tables are emptied and table recovery forgets how far it had read;
3. the tables are rebuilt from their changelogs as on a restart, and the gate reopens.

The dedupe store on disk is kept: an entry an aborted batch wrote carries that batch's own
position, so replaying the batch counts it again instead of taking it for a repeat
(``core.dedupe.is_repeat``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiokafka.errors import IllegalOperation, ProducerFenced, UnknownError
from faust.exceptions import ProducerSendError
from faust.stores.memory import Store as MemoryStore

from ...sinks.outputs import retrieve_exception
from .seen_ids_store import SeenIdsStore

if TYPE_CHECKING:
    from ..app import Meterwatch

log = logging.getLogger(__name__)

# aiokafka refuses a fenced producer from then on ("not in the middle of a transaction"), and Faust
# wraps a send's error in ProducerSendError (or raises one of its own once the producer is gone).
_LOST = (ProducerFenced, IllegalOperation)


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from, outermost first."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__


def is_lost_transaction(error: BaseException) -> bool:
    """Whether ``error`` says this worker's transactional producer can no longer be used."""
    return any(
        isinstance(seen, _LOST) or (isinstance(seen, ProducerSendError) and "No transaction producer" in str(seen))
        for seen in _causes(error)
    )


def is_lost_commit(error: BaseException) -> bool:
    """Whether a failed transaction commit leaves the worker's transactions lost: fenced, or
    answered ``UNKNOWN_SERVER_ERROR``. Apache Kafka's transaction coordinator answers that to an
    ``EndTxn`` that races a new owner's fence (its ``IllegalStateException``: a transition to
    ONGOING while PREPARE_EPOCH_FENCE is pending), and aiokafka's sender stops for good on it.
    Giving the work up is right whatever became of the transaction: the tables are rebuilt from
    what was committed, and the input is read again from the offsets committed with it."""
    return is_lost_transaction(error) or any(isinstance(seen, UnknownError) for seen in _causes(error))


def register(mw: Meterwatch) -> None:
    app = mw.app
    gate = mw.commit_gate

    def rejoin() -> None:
        asyncio.ensure_future(app.consumer.request_rejoin())

    def ask_for_rebalance() -> None:
        # A fence means some other member holds a newer assignment, so the group rebalances
        # anyway; asking makes it prompt even when the fencing producer was not a member.
        mw.metrics.transactions_lost.inc()
        rejoin()

    gate.on_lost = ask_for_rebalance
    # A failed batch (streams/runtime/batches.py) gives up the work in hand the same way.
    gate.on_failed = rejoin

    @app.on_partitions_revoked.connect
    async def give_up_lost_work(app: Any, revoked: Any, **kwargs: Any) -> None:
        if not gate.lost:
            return
        async with gate.commit():  # a batch still running finishes first
            if not gate.give_up():
                return
            await stop_transactional_producers(app)
            forget_local_state(mw)
        log.warning("work in hand given up: local tables dropped; they are rebuilt from their changelogs")

    @app.on_rebalance_complete.connect
    async def reopen_after_recovery(app: Any, **kwargs: Any) -> None:
        if gate.reopen():
            log.info("work in hand given up: tables rebuilt; consuming again")


async def stop_transactional_producers(app: Any) -> None:
    producer = app.producer
    for transactional_id, transactional in list(producer._transaction_producers.items()):
        _see_fatal_error(transactional)
        await producer.stop_transaction(transactional_id)


def _see_fatal_error(producer: Any) -> None:
    # aiokafka also sets a fenced producer's error on a future nobody awaits, which asyncio
    # would log as an ERROR ("Future exception was never retrieved") once it is collected.
    waiter = getattr(getattr(producer, "_txn_manager", None), "_transaction_waiter", None)
    if waiter is not None and waiter.done():
        retrieve_exception(waiter)


def forget_local_state(mw: Meterwatch) -> None:
    """Empty every in-memory table and make recovery read every changelog from its beginning;
    the dedupe store's databases are reopened (they keep what the changelog holds up to their
    saved offsets, and recovery reads on from there)."""
    for table in mw.tables.all():
        table.forget_unacknowledged()
        store = table.data
        if isinstance(store, MemoryStore):
            store.data.clear()
            store._key_partition.clear()
        elif isinstance(store, SeenIdsStore):
            store.close_databases()
    recovery = mw.app.tables.recovery
    recovery.active_offsets.clear()
    recovery.standby_offsets.clear()
