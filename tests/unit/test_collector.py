"""meterwatch.collector: the cyclic collector paused for a batch, what the batch left alive set
aside after it, and everything collected again at most every FULL_COLLECTION_SECONDS."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator

import pytest

from meterwatch import collector


@pytest.fixture(autouse=True)
def _collector_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    gc.unfreeze()
    if not was:
        gc.disable()


class Node:
    other: Node


def _cycle() -> weakref.ref[Node]:
    """A reference cycle nothing else refers to, and a weak reference that says when it is gone."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def _in_a_generation(kept: object) -> bool:
    return any(o is kept for generation in range(3) for o in gc.get_objects(generation))


def test_a_batch_runs_without_collections_and_the_collector_runs_again_after_it() -> None:
    with collector.paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_interleaved_batches_keep_it_paused_until_the_last_one_ends() -> None:
    first, second = collector.paused(), collector.paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled(), "the second batch is still running"
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_failing_batch_does_not_leave_the_collector_off() -> None:
    with pytest.raises(RuntimeError), collector.paused():
        raise RuntimeError("batch failed")
    assert gc.isenabled()


def test_what_a_batch_leaves_alive_is_set_aside_so_young_collections_do_not_walk_it() -> None:
    with collector.paused():
        kept = [[] for _ in range(1000)]
        assert _in_a_generation(kept)
    assert not _in_a_generation(kept)
    gc.collect(0)
    assert kept[999] == [], "set aside, not freed"


def test_cycles_made_during_a_batch_wait_for_the_next_full_collection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "_last_full", time.monotonic())
    with collector.paused():
        gone = _cycle()
    kept = [[] for _ in range(5 * gc.get_threshold()[0])]
    assert gone() is not None, "young collections leave what was set aside alone"

    monkeypatch.setattr(collector, "_last_full", time.monotonic() - collector.FULL_COLLECTION_SECONDS)
    with collector.paused():
        kept.append([])
        assert gone() is not None, "no collection during the batch"
    assert gone() is None, "the first batch to end after the interval collects everything once"
    assert time.monotonic() - collector._last_full < 1


def test_a_full_collection_comes_at_most_once_an_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "_last_full", time.monotonic() - collector.FULL_COLLECTION_SECONDS)
    collected: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            collected.append(1)

    gc.callbacks.append(count)
    try:
        for _ in range(3):
            with collector.paused():
                pass
    finally:
        gc.callbacks.remove(count)
    assert len(collected) == 1
