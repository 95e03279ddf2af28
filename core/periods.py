"""Billing periods: monthly cycles anchored on a day, in a contract's time zone.

Everything here is pure: the current time is always an argument, never read from a clock.
Instants are compared and shifted in UTC, because arithmetic on datetimes that share a
ZoneInfo is wall-clock arithmetic and goes wrong across daylight-saving changes.
"""

from __future__ import annotations

import calendar
import functools
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .rejections import RejectCode

__all__ = [
    "BillingPeriod",
    "BillingCycle",
    "CALENDAR_MONTH_UTC",
    "MAX_FUTURE_SKEW",
    "LATE_EVENT_GRACE",
    "event_time_rejection",
]

MAX_FUTURE_SKEW = timedelta(minutes=5)
LATE_EVENT_GRACE = timedelta(days=7)
_LONGEST_PERIOD = timedelta(days=32)  # a month, plus a daylight-saving hour either way

# Transitions in the tz database fall on whole seconds, so searching for one at this
# resolution finds it exactly.
_TRANSITION_RESOLUTION = timedelta(seconds=1)
_SMALLEST_STEP = timedelta(microseconds=1)

# Valid ZoneInfo keys that are not IANA names: their meaning depends on the host, so two
# workers could disagree about where a period starts.
_HOST_DEPENDENT_ZONE_KEYS = frozenset({"localtime", "posixrules"})


def _require_aware(value: object, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return value


def _as_utc(value: object, name: str) -> datetime:
    return _require_aware(value, name).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class BillingPeriod:
    """The half-open interval [start, end); both ends are normalised to UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        start = _as_utc(self.start, "start")
        end = _as_utc(self.end, "end")
        if start >= end:
            raise ValueError(f"a period must end after it starts: [{start}, {end})")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    def contains(self, at: datetime) -> bool:
        return self.start <= _as_utc(at, "at") < self.end


def _validated_anchor_day(anchor_day: object) -> int:
    # bool is an int subclass; True as a day of the month is a bug, not a 1.
    if isinstance(anchor_day, bool) or not isinstance(anchor_day, int):
        raise ValueError(f"anchor_day must be an integer from 1 to 31, got {anchor_day!r}")
    if not 1 <= anchor_day <= 31:
        raise ValueError(f"anchor_day must be from 1 to 31, got {anchor_day}")
    return anchor_day


def _load_zone(name: object) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ValueError(f"timezone must be an IANA time zone name, got {name!r}")
    if name in _HOST_DEPENDENT_ZONE_KEYS:
        raise ValueError(f"timezone {name!r} depends on the host; use an IANA name")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as error:
        # OSError: a name that is a tzdata directory ("Europe") or too long for a file name.
        raise ValueError(f"unknown IANA time zone {name[:64]!r}") from error


@dataclass(frozen=True, slots=True)
class BillingCycle:
    """Monthly periods starting at local midnight on `anchor_day` in `timezone`.

    The anchor day is clamped to the length of each month (31 means the last day).
    Periods are numbered by the (year, month) of their nominal start, as a single integer
    `year * 12 + month - 1`, which makes stepping between periods simple arithmetic.
    """

    anchor_day: int
    timezone: str
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _validated_anchor_day(self.anchor_day)
        object.__setattr__(self, "_zone", _load_zone(self.timezone))

    @classmethod
    def from_anchor(cls, anchor: date, timezone: str) -> BillingCycle:
        if not isinstance(anchor, date):
            raise ValueError(f"anchor must be a date, got {anchor!r}")
        return cls(anchor.day, timezone)

    def local_date(self, at: datetime) -> date:
        return _require_aware(at, "at").astimezone(self._zone).date()

    def period_containing(self, at: datetime) -> BillingPeriod:
        return self._period(self._index_containing(_as_utc(at, "at")))

    def has_period(self, period: BillingPeriod) -> bool:
        """Whether `period` is one of this cycle's periods, not one of another anchor or zone."""
        return self.period_containing(period.start) == period

    def next_period(self, period: BillingPeriod) -> BillingPeriod:
        return self._period(self._index_of(period) + 1)

    def previous_period(self, period: BillingPeriod) -> BillingPeriod:
        return self._period(self._index_of(period) - 1)

    def days_in(self, period: BillingPeriod) -> list[date]:
        """The local calendar days the period covers, in order.

        The last day is the local date of the period's final instant, so a period ending at
        midnight does not claim the next day. A date that no local clock ever showed (e.g.
        Pacific/Apia skipped 2011-12-30) is left out: nobody can have used a seat on it.
        """
        first = self.local_date(period.start)
        last = self.local_date(period.end - _SMALLEST_STEP)
        days = [first]
        for offset in range(1, (last - first).days + 1):
            day = first + timedelta(days=offset)
            if self.local_date(self._first_instant_of(day)) == day:
                days.append(day)
        return days

    def next_day_start(self, at: datetime) -> datetime:
        """The first instant of the local day after the one ``at`` falls on, in UTC."""
        return self._first_instant_of(self.local_date(at) + timedelta(days=1))

    def _period(self, index: int) -> BillingPeriod:
        return BillingPeriod(self._start_of(index), self._start_of(index + 1))

    def _index_of(self, period: BillingPeriod) -> int:
        if not isinstance(period, BillingPeriod):
            raise TypeError(f"expected a BillingPeriod, got {type(period).__name__}")
        index = self._index_containing(period.start)
        if self._period(index) != period:
            raise ValueError(f"{period} is not a period of {self}")
        return index

    def _index_containing(self, at_utc: datetime) -> int:
        local = at_utc.astimezone(self._zone)
        index = local.year * 12 + local.month - 1
        if local.day < self._anchor_date(index).day:
            index -= 1
        # Where clocks jump across midnight, an instant's local date can disagree with the
        # period it falls in (e.g. America/St_Johns fell back from 00:01 to 23:01), so the
        # guess from the local date is corrected against the real boundaries.
        while at_utc < self._start_of(index):
            index -= 1
        while at_utc >= self._start_of(index + 1):
            index += 1
        return index

    def _anchor_date(self, index: int) -> date:
        year, month_offset = divmod(index, 12)
        month = month_offset + 1
        last_day = calendar.monthrange(year, month)[1]
        return date(year, month, min(self.anchor_day, last_day))

    def _start_of(self, index: int) -> datetime:
        # Every event asks for its period; the answer for a month never changes.
        return _period_start(self, index)

    def _first_instant_of(self, day: date) -> datetime:
        """The UTC instant of local midnight starting `day`.

        An ambiguous midnight takes its first occurrence (fold=0). A midnight skipped by a
        clock change becomes the first instant that exists after it, i.e. the transition.
        """
        midnight = datetime.combine(day, time())
        earliest = midnight.replace(tzinfo=self._zone, fold=0).astimezone(UTC)
        if self._wall_time(earliest) == midnight:
            return earliest
        return self._transition_across(midnight)

    def _transition_across(self, missing_wall: datetime) -> datetime:
        # For a wall time inside a gap, fold=1 reads it with the offset after the
        # transition and fold=0 with the offset before; the transition lies between them.
        candidates = [missing_wall.replace(tzinfo=self._zone, fold=fold).astimezone(UTC) for fold in (0, 1)]
        before, after = min(candidates), max(candidates)
        # Invariant: wall(before) < missing_wall <= wall(after).
        while after - before > _TRANSITION_RESOLUTION:
            steps = (after - before) // _TRANSITION_RESOLUTION
            middle = before + (steps // 2) * _TRANSITION_RESOLUTION
            if self._wall_time(middle) < missing_wall:
                before = middle
            else:
                after = middle
        return after

    def _wall_time(self, at_utc: datetime) -> datetime:
        return at_utc.astimezone(self._zone).replace(tzinfo=None)


CALENDAR_MONTH_UTC = BillingCycle(1, "UTC")


@functools.lru_cache(maxsize=4096)
def _period_start(cycle: BillingCycle, index: int) -> datetime:
    return cycle._first_instant_of(cycle._anchor_date(index))


def event_time_rejection(occurred_at: datetime, now: datetime, cycle: BillingCycle) -> str | None:
    """Why a usage event's time makes it unacceptable, or None if it is acceptable.

    Both limits are inclusive: exactly MAX_FUTURE_SKEW ahead, or exactly LATE_EVENT_GRACE
    after its period ended, is still accepted.
    """
    occurred_utc = _as_utc(occurred_at, "occurred_at")
    now_utc = _as_utc(now, "now")
    if occurred_utc > now_utc + MAX_FUTURE_SKEW:
        return RejectCode.OCCURRED_IN_FUTURE
    # Far older than any period plus grace: closed, without computing a period that may lie
    # before year 1 in the cycle's time zone.
    if occurred_utc < now_utc - _LONGEST_PERIOD - LATE_EVENT_GRACE:
        return RejectCode.PERIOD_CLOSED
    if now_utc > cycle.period_containing(occurred_utc).end + LATE_EVENT_GRACE:
        return RejectCode.PERIOD_CLOSED
    return None
