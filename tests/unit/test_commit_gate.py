"""A transaction commit never lands inside a batch, and batches do not starve it."""

from __future__ import annotations

import asyncio

from meterwatch.streams.commit_gate import CommitGate


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
