"""A transaction commit never lands inside a batch, batches do not starve it, a worker fenced
off by another gives up its batches instead of crashing, and a batch that fails is held back."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka.errors import IllegalOperation, KafkaTimeoutError, ProducerFenced
from faust.exceptions import ProducerSendError
from meterwatch.streams.metrics import Metrics
from meterwatch.streams.runtime.batches import handle_batch
from meterwatch.streams.runtime.commit_gate import CommitGate
from meterwatch.streams.runtime.fencing import is_lost_transaction


async def test_a_commit_waits_for_the_batches_in_flight() -> None:
    gate = CommitGate()
    order: list[str] = []
    inside = asyncio.Event()
    release = asyncio.Event()

    async def batch(name: str) -> None:
        async with gate.batch():
            order.append(f"{name} outputs")
            inside.set()
            await release.wait()  # awaiting sends and table writes
            order.append(f"{name} state")

    async def commit() -> None:
        await inside.wait()
        async with gate.commit():
            order.append("commit")

    running = [asyncio.create_task(batch("a")), asyncio.create_task(batch("b")), asyncio.create_task(commit())]
    await asyncio.sleep(0.01)
    assert order == ["a outputs", "b outputs"]  # the commit is still waiting
    release.set()
    await asyncio.gather(*running)
    assert order == ["a outputs", "b outputs", "a state", "b state", "commit"]


async def test_no_batch_starts_while_a_commit_waits() -> None:
    gate = CommitGate()
    order: list[str] = []
    first_inside = asyncio.Event()
    finish_first = asyncio.Event()

    async def first() -> None:
        async with gate.batch():
            first_inside.set()
            await finish_first.wait()
            order.append("first done")

    async def commit() -> None:
        async with gate.commit():
            order.append("commit")

    async def second() -> None:
        async with gate.batch():
            order.append("second")

    one = asyncio.create_task(first())
    await first_inside.wait()
    committing = asyncio.create_task(commit())
    await asyncio.sleep(0)
    late = asyncio.create_task(second())
    await asyncio.sleep(0.01)
    assert order == []  # the commit waits for the first batch; the second waits for the commit
    finish_first.set()
    await asyncio.gather(one, committing, late)
    assert order == ["first done", "commit", "second"]
    assert gate.batches_in_flight == 0


async def test_a_batch_woken_as_a_commit_ends_waits_for_a_commit_that_started_meanwhile() -> None:
    """A batch waiting for one commit to end is woken when it ends; a second commit (the commit
    timer) may start before the batch runs. The batch must then wait for that one too, or the
    second commit could carry the batch's event ids without its counts."""
    gate = CommitGate()
    committing = False
    overlapped = False
    release = asyncio.Event()

    async def commit(wait_for: asyncio.Event | None = None, start: asyncio.Event | None = None) -> None:
        nonlocal committing
        if start is not None:
            await start.wait()
        async with gate.commit():
            committing = True
            if wait_for is not None:
                await wait_for.wait()
            else:
                await asyncio.sleep(0.05)
            committing = False

    async def batch() -> None:
        nonlocal overlapped
        async with gate.batch():
            overlapped = overlapped or committing
            await asyncio.sleep(0.01)
            overlapped = overlapped or committing

    first = asyncio.create_task(commit(wait_for=release))
    await asyncio.sleep(0.01)  # the first commit holds the gate
    waiting = asyncio.create_task(batch())
    await asyncio.sleep(0.01)  # the batch waits for it
    # Due in the same loop iteration as the first commit's end, and scheduled before the batch.
    second = asyncio.create_task(commit(start=release))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, waiting, second)
    assert not overlapped


async def test_a_failed_batch_still_lets_commits_through() -> None:
    gate = CommitGate()
    try:
        async with gate.batch():
            raise RuntimeError("bad input")
    except RuntimeError:
        pass
    async with asyncio.timeout(1):
        async with gate.commit():
            pass


# --------------------------------------------------------------------------- lost transactions


def fenced_send() -> ProducerSendError:
    """What Faust raises for a send on a producer that another worker fenced."""
    try:
        raise ProducerSendError(f"Error while sending: {ProducerFenced()!r}") from ProducerFenced()
    except ProducerSendError as error:
        return error


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (ProducerFenced(), True),
        (IllegalOperation("Not in the middle of a transaction"), True),
        (fenced_send(), True),
        (ProducerSendError("No transaction producer found for : app-0-3"), True),
        (ProducerSendError("Error while sending: KafkaTimeoutError()"), False),
        (KafkaTimeoutError(), False),
        (ValueError("bad input"), False),
    ],
)
def test_what_counts_as_a_lost_transaction(error: BaseException, lost: bool) -> None:
    assert is_lost_transaction(error) is lost


async def test_a_fenced_batch_is_given_up_unacknowledged_and_the_gate_shuts_until_recovery() -> None:
    gate = CommitGate()
    rebalances_asked: list[str] = []
    gate.on_lost = lambda: rebalances_asked.append("rejoin")
    ran: list[str] = []

    async with gate.batch() as admitted:
        assert admitted
        ran.append("fenced batch")
        raise fenced_send()  # swallowed: the batch is given up, not crashed
    assert gate.shut and gate.lost
    assert rebalances_asked == ["rejoin"]

    async with gate.batch() as admitted:  # the next batch is refused without running
        assert not admitted
    async with gate.outside_batches() as admitted:
        assert not admitted
    gate.lose_transactions(ProducerFenced())  # a second failure asks nothing more
    assert rebalances_asked == ["rejoin"]

    assert not gate.reopen()  # nothing was given up yet: recovery alone does not reopen
    assert gate.give_up()  # the rebalance drops the work in hand
    assert not gate.give_up()
    assert gate.shut and not gate.lost
    assert gate.reopen()  # tables rebuilt
    assert not gate.shut
    async with gate.batch() as admitted:
        assert admitted
    assert ran == ["fenced batch"]
    assert gate.batches_in_flight == 0


async def test_other_failures_still_escape_the_gate() -> None:
    gate = CommitGate()
    with pytest.raises(KafkaTimeoutError):
        async with gate.batch():
            raise KafkaTimeoutError()
    with pytest.raises(ValueError):
        async with gate.outside_batches():
            raise ValueError("bad input")
    assert not gate.shut


# --------------------------------------------------------------------------- failed batches


class _Message:
    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.tp = ("inbox", 0)
        self.acked = False

    def ack(self, consumer: list[int]) -> bool:  # as Faust's: a no-op once acknowledged
        if self.acked:
            return False
        self.acked = True
        consumer.append(self.offset)
        return True


class _Deployment:
    """What ``handle_batch`` uses of a worker: its gate, metrics and consumer."""

    def __init__(self) -> None:
        self.commit_gate = CommitGate()
        self.metrics = Metrics()
        self.committable: list[int] = []  # offsets the consumer was told are done
        self.app = SimpleNamespace(consumer=self.committable, sensors=SimpleNamespace(on_message_out=lambda *a: None))

    def batch(self, *offsets: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(message=_Message(offset)) for offset in offsets]

    def failures(self, stage: str) -> float:
        return self.metrics.batch_failures.labels(stage)._value.get()


async def test_a_failed_batch_is_held_back_and_shown_until_its_stage_succeeds() -> None:
    mw = _Deployment()
    rejoins: list[str] = []
    mw.commit_gate.on_failed = lambda: rejoins.append("rejoin")

    async def refused(mw: object, events: object) -> None:
        raise OSError(28, "No space left on device")

    async def fine(mw: object, events: object) -> None:
        pass

    await handle_batch(mw, "count", mw.batch(1, 2), fine)
    failed = mw.batch(3, 4)
    await handle_batch(mw, "count", failed, refused)  # not raised: the worker carries on
    assert mw.committable == [1, 2]
    # Faust acknowledges a take batch's events when the agent asks for the next one: a no-op now.
    for event in failed:
        assert not event.message.ack(mw.committable)
    assert mw.committable == [1, 2]
    assert mw.failures("count") == 1
    assert mw.commit_gate.failure == ("count", "OSError: [Errno 28] No space left on device")
    assert mw.commit_gate.shut and rejoins == ["rejoin"]

    not_run = mw.batch(5)
    await handle_batch(mw, "count", not_run, fine)  # the gate is shut: held back, not run
    assert not not_run[0].message.ack(mw.committable)
    assert mw.committable == [1, 2]

    assert mw.commit_gate.give_up() and mw.commit_gate.reopen()  # tables rebuilt
    await handle_batch(mw, "control", mw.batch(6), fine)
    assert mw.commit_gate.failure is not None  # another stage's success says nothing of counting
    await handle_batch(mw, "count", mw.batch(3, 4, 5), fine)
    assert mw.commit_gate.failure is None
    assert mw.committable == [1, 2, 6, 3, 4, 5]
