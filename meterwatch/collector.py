"""Python's cyclic garbage collector, kept out of the hot path.

A busy batch allocates a few small container objects per event (decoded rows, their grouping,
first-seen entries) that all die when the batch ends, and the worker keeps tens of thousands of
decoded table values that live on. With the default thresholds the collector walked them so
often that it cost more than the counting (a packed inbox record decoded at 0.4 µs per row with
collection off and 1.2 to 5.7 µs with the defaults, growing with the heap). Nothing here makes
reference cycles in bulk, so rarer collections only leave the few there are for longer.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_paused = 0


def tune() -> None:
    """Collect the young generation every 50,000 allocations instead of every 700, and move what
    is loaded by now (modules, the app) out of the collector's sight for good."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


@contextmanager
def paused() -> Iterator[None]:
    """No collection while a batch is handled: its objects are freed by reference counting when
    it ends, which also takes them off the collector's count, so a collection in the middle of
    the batch would only walk objects about to go. Nesting (batches of several stages that
    interleave at their awaits) is counted; the collector runs again when the last one ends."""
    global _paused
    if _paused == 0:
        gc.disable()
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1
        if _paused == 0:
            gc.enable()
