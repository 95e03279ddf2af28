"""Applied-through marks: the inbox is never read on from past what the tables hold.

Every count batch writes, for each inbox partition it counted, the last inbox offset it applied
(the ``applied-through`` table, keyed by the partition's number), right after the workspace
values. Its changelog partition has the same number as theirs, and under exactly_once the mark
is in the same transaction, so a restored table's mark says how far the restored values reach.

The group's committed offset should never be past that: work is committed only after its table
writes are acknowledged. Were it past anyway (a hand-over that committed what the tables'
changelogs never got), the next owner would restore values that lack some inbox records and then
read on from after them: those events would never be counted, and nothing would say so. So when
the tables are restored and the consumer is sought to the committed offsets, each inbox partition
whose committed offset C is past its mark M + 1 is sought back to M + 1, with one warning and
``meterwatch_inbox_rewinds_total``. Reading again is safe: a workspace skips inbox records at or
below its own ``applied_through``, and the dedupe store the events it already counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

from aiokafka import TopicPartition
from faust.types import TP

log = logging.getLogger(__name__)


def mark_key(partition: int) -> str:
    return str(partition)


def encode_mark(offset: int) -> bytes:
    return b"%d" % offset


def decode_mark(raw: bytes | None) -> int | None:
    """The offset a mark holds; None for no mark or one that cannot be read."""
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def rewinds(committed: Mapping[TP, int | None], marks: Mapping[TP, int]) -> dict[TP, tuple[int, int]]:
    """``tp -> (committed offset, offset to read from)`` for each partition committed past the
    record after its mark. A partition without a mark (never counted, or counted only by an
    earlier version) or with nothing committed is left where it is."""
    found: dict[TP, tuple[int, int]] = {}
    for tp, mark in marks.items():
        offset = committed.get(tp)
        if offset is not None and offset > mark + 1:
            found[tp] = (offset, mark + 1)
    return found


class Rewinder:
    """The marks of the inbox partitions a recovery restored, applied at the seek that follows.

    ``capture`` runs right before recovery seeks the consumer to the committed offsets, in the
    app's thread; ``rewind`` runs inside each seek to the committed offsets, in the consumer's
    thread, until ``forget`` (a rebalance begins: the marks are stale once counting goes on)."""

    def __init__(
        self,
        inbox_topic: str,
        stored: Callable[[], Mapping[str, bytes]],
        counted: Callable[[], None],
    ) -> None:
        self.inbox_topic = inbox_topic
        self._stored = stored
        self._counted = counted
        self._marks: dict[TP, int] = {}
        # (partition, mark, committed) reported since the marks were captured: the seeks of one
        # recovery rewind alike, and it is said once.
        self._reported: set[tuple[TP, int, int]] = set()

    def capture(self, assignment: Iterable[Any]) -> None:
        stored = self._stored()
        marks: dict[TP, int] = {}
        for tp in assignment:
            if tp.topic != self.inbox_topic:
                continue
            mark = decode_mark(stored.get(mark_key(tp.partition)))
            if mark is not None:
                marks[TP(tp.topic, tp.partition)] = mark
        self._marks = marks

    def forget(self) -> None:
        self._marks = {}
        self._reported = set()

    def rewind(self, consumer: Any, committed: Mapping[Any, int | None]) -> Mapping[Any, int | None]:
        """Seek ``consumer`` (aiokafka's, just sought to ``committed``) back to the marks where
        they are behind, and return the offsets Faust should take as read."""
        marks = self._marks
        if not marks:
            return committed
        # Faust's TP and aiokafka's TopicPartition are named tuples of the same fields: either
        # finds the other in a mapping. Only the seek needs aiokafka's own.
        found = rewinds(committed, marks)
        if not found:
            return committed
        adjusted: MutableMapping[Any, int | None] = dict(committed)
        for tp, (offset, start) in sorted(found.items()):
            consumer.seek(TopicPartition(tp.topic, tp.partition), start)
            adjusted[tp] = start
            if (tp, start - 1, offset) not in self._reported:
                self._reported.add((tp, start - 1, offset))
                self._counted()
                log.warning(
                    "rebalance: %s[%d]: the tables hold what was applied through offset %d but the group "
                    "committed %d; reading from %d again",
                    tp.topic,
                    tp.partition,
                    start - 1,
                    offset,
                    start,
                )
        return adjusted
