"""Python's cyclic garbage collector, kept out of the hot path.

A busy batch allocates a few small container objects per event (decoded rows, their grouping,
first-seen entries) that all die when the batch ends, and the worker keeps tens of thousands of
decoded table values that live on. With the default thresholds the collector walked them so
often that it cost more than the counting (a packed inbox record decoded at 0.4 µs per row with
collection off and 1.2 to 5.7 µs with the defaults, growing with the heap). Nothing here makes
reference cycles in bulk, so rarer collections only leave the few there are for longer.

What a batch leaves alive is mostly the values it wrote, which live until a later batch replaces
them and are then freed by reference counting. Walking them in the young generation and again in
the middle one found nothing to free and cost more than 10 % of the counting at 100,000
workspaces, so once a batch ends they are set aside (``gc.freeze``: a splice of lists, whatever
their number) and only a full collection over everything, at most once every
``FULL_COLLECTION_SECONDS``, looks at them again: it frees what cycles there are among them.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager

# How often, at most, everything set aside is collected once: a pause of about 0.3 s with
# 100,000 workspaces' values held, about 0.1 % of the time at that rate.
FULL_COLLECTION_SECONDS = 300.0

_paused = 0
_last_full = time.monotonic()


def tune() -> None:
    """Collect the young generation every 50,000 allocations instead of every 700, and move what
    is loaded by now (modules, the app) out of the collector's sight."""
    _collect_all()
    gc.set_threshold(50_000, 20, 100)


@contextmanager
def paused() -> Iterator[None]:
    """No collection while a batch is handled: its objects are freed by reference counting when
    it ends, which also takes them off the collector's count, so a collection in the middle of
    the batch would only walk objects about to go. Nesting (batches of several stages that
    interleave at their awaits) is counted; once the last one ends, what it left alive is set
    aside and the collector runs again."""
    global _paused
    if _paused == 0:
        gc.disable()
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1
        if _paused == 0:
            set_aside()
            gc.enable()


def set_aside() -> None:
    """Set aside every object alive now, first collecting everything once if the last full
    collection is ``FULL_COLLECTION_SECONDS`` old."""
    if time.monotonic() - _last_full >= FULL_COLLECTION_SECONDS:
        _collect_all()
    else:
        gc.freeze()


def _collect_all() -> None:
    """One full collection over everything, set aside or not, then everything left set aside."""
    global _last_full
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _last_full = time.monotonic()
