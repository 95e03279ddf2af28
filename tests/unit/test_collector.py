"""meterwatch.collector: the cyclic collector paused for a batch, and running again after it."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from meterwatch import collector


@pytest.fixture(autouse=True)
def _collector_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


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


def test_cycles_made_during_a_batch_are_collected_automatically_after_it() -> None:
    class Node:
        other: Node

    with collector.paused():
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        kept = [[] for _ in range(5 * gc.get_threshold()[0])]
        assert gone() is not None, "no automatic collection during the batch"
    kept += [[] for _ in range(5 * gc.get_threshold()[0])]
    assert gone() is None
