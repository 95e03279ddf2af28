"""glibc malloc, kept from holding on to memory the worker has freed.

RocksDB's flush and compaction threads, Kafka fetch buffers and decoded batches allocate and
free large amounts of memory all the time. glibc keeps what is freed in its arenas (one per
thread that allocates, up to 8 per core) for reuse, and returns it to the system only from the
top of a heap; so a worker's RSS would keep climbing while the memory it actually uses stays
flat. Here the worker uses at most two arenas, and the free pages inside them are handed back
every 2 s (``malloc_trim``, which also releases whole free pages in the middle of a heap;
``streams/http/metrics_endpoint.py``). Elsewhere than on glibc these are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENAS = 2
# Only blocks this large get pages of their own. Kafka fetch buffers, inbox records and changelog
# chunks (128 KiB to a few MiB, allocated and freed all the time) stay in the heap: mapped on
# their own, every use of one cost a page fault per 4 KiB (1.4 faults and 4 µs of system time
# per counted event, against 0.3 and 1 µs here); their free pages still go back at the next trim.
# A fixed threshold, unlike glibc's own, which would follow the largest block ever freed.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _glibc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc's own; musl has malloc_trim no-op stubs
    except (OSError, AttributeError):
        return None
    return libc


_libc = _glibc()


def configure() -> None:
    """At most ``ARENAS`` malloc arenas, and a fixed mmap threshold: call before the threads
    that allocate are started."""
    if _libc is not None:
        _libc.mallopt(M_ARENA_MAX, ARENAS)
        _libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def release_free_memory() -> None:
    """Hand the free pages malloc keeps back to the system. ctypes lets go of the GIL for the
    call, so it can run in a thread while the event loop goes on."""
    if _libc is not None:
        _libc.malloc_trim(0)


def malloc_usage() -> dict[str, int]:
    """Bytes malloc has handed out and still holds (``malloc_in_use``), and bytes free in its
    arenas (``malloc_free``, resident or not); empty where glibc does not say (before 2.33)."""
    function = getattr(_libc, "mallinfo2", None)
    if function is None:
        return {}
    function.restype = _MallInfo2
    function.argtypes = []
    info = function()
    return {"malloc_in_use": info.uordblks + info.hblkhd, "malloc_free": info.fordblks}
