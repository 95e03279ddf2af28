"""meterwatch.allocator: malloc's free memory handed back, and what malloc says it holds."""

from __future__ import annotations

import gc
import random

import pytest

from meterwatch import allocator

pytestmark = pytest.mark.skipif(allocator.malloc_usage() == {}, reason="glibc 2.33 or later only")

MIB = 1024 * 1024


def _rss_anon() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))


def test_freed_memory_goes_back_to_the_system_once_released() -> None:
    rng = random.Random(3)
    # Objects over 512 bytes come from malloc, not Python's own arenas. Each freed block lies
    # between two that stay, below the top of the heap, where free() alone keeps its pages.
    blocks, kept = [], []
    for _ in range(12_000):
        blocks.append(bytes(rng.randrange(4096, 16384)))
        kept.append(bytes(600))
    in_use = allocator.malloc_usage()["malloc_in_use"]
    del blocks
    gc.collect()
    usage = allocator.malloc_usage()
    assert usage["malloc_in_use"] < in_use - 50 * MIB
    assert usage["malloc_free"] > 50 * MIB
    before = _rss_anon()
    allocator.release_free_memory()
    assert _rss_anon() < before - 50 * MIB
    assert len(kept) == 12_000
