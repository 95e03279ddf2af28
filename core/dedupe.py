"""When a usage event is a repeat of one already counted (CONTRACT 3.1, ``event_id``)."""

from __future__ import annotations

from typing import NamedTuple


class FirstSeen(NamedTuple):
    """When and where an ``event_id`` was first counted.

    ``position`` identifies the delivery that counted it; seeing the same position again is a
    replay of that very delivery (after a crash), which must be judged like the first time.
    A tuple rather than a frozen dataclass: one is made for every counted event, and a tuple
    costs a fifth of the time to build.
    """

    at_ms: int
    position: int


def is_repeat(first: FirstSeen | None, position: int, now_ms: int, window_ms: int) -> bool:
    """True if the event was already counted by another delivery within the dedupe window."""
    if first is None or first.position == position:
        return False
    return now_ms - first.at_ms < window_ms


# The stored bytes of a FirstSeen: "at_ms,position"
FIRST_SEEN_FORMAT = b"%d,%d"


def encode_first_seen(first: FirstSeen) -> bytes:
    return FIRST_SEEN_FORMAT % first


def decode_first_seen(raw: bytes | None) -> FirstSeen | None:
    if not raw:
        return None
    at_ms, position = raw.split(b",", 1)
    return FirstSeen(int(at_ms), int(position))


# Expiry runs on the clock repeats are judged by: the Kafka time of the messages that carried
# the events. Ids are kept in segments of one window of that time each; a segment is dropped
# whole once its partition's Kafka time is KEPT_WINDOWS windows past the segment's end, so an
# id is kept at least that long after it was first counted. One window of the two is the
# judging window; the other is slack for a message whose Kafka time is behind others already
# counted on its partition (the inbox interleaves several input partitions).
KEPT_WINDOWS = 2


class Segment(NamedTuple):
    """Ids first counted at Kafka times in ``[start_ms, end_ms)``."""

    start_ms: int
    end_ms: int


def segment_for(at_ms: int, window_ms: int) -> Segment:
    """The segment, aligned to whole windows since the epoch, an id first counted at ``at_ms`` is kept in."""
    start = at_ms - at_ms % window_ms
    return Segment(start, start + window_ms)


def is_expired(segment: Segment, stream_ms: int, window_ms: int) -> bool:
    """True once no id of ``segment`` needs keeping at the partition's Kafka time ``stream_ms``."""
    return segment.end_ms + KEPT_WINDOWS * window_ms <= stream_ms


def can_judge(segment: Segment, since_ms: int, window_ms: int) -> bool:
    """True if an id of ``segment`` could make an event received at ``since_ms`` or later a
    repeat (``is_repeat``); the ids of other segments are all a window or more older."""
    return segment.end_ms > since_ms - window_ms
