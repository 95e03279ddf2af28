"""Table writes in a batch made "on behalf of" one of its events.

``take_events`` drains the stream in another task, so the agent's own task has no current event,
and Faust needs one to pick the changelog partition (and RocksDB partition) of a table write.
We process a batch partition by partition and name an event of that partition as current, so
every write lands in the partition that owns the key.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from faust.streams import _current_event  # noqa: PLC2701 - no public setter exists
from faust.types import EventT


@contextmanager
def acting_for(event: EventT) -> Iterator[None]:
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
