"""Counting usage: how one accepted event changes a workspace's tally of one metric.

Pure and synchronous: the caller passes the billing cycle and the time the event was counted.
Tallies are frozen; every change returns a new one (Faust only persists assignments).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from types import MappingProxyType

from .metric_kinds import METRIC_KINDS, Counting
from .periods import LATE_EVENT_GRACE, BillingCycle, BillingPeriod

_EMPTY: Mapping[date, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Reading:
    """An accepted usage event, as the core sees it."""

    event_id: str
    metric: str
    quantity: int
    occurred_at: datetime
    conversation_id: str | None = None


@dataclass(frozen=True, slots=True)
class PeriodTally:
    """One metric's usage in one billing period.

    ``daily`` holds, per local day, the net change counted that day, or for seats the largest
    seat count reported that day. ``conversations`` are the Fin conversations counted now.
    """

    period: BillingPeriod
    usage: int = 0
    last_updated: datetime | None = None
    daily: Mapping[date, int] = field(default_factory=lambda: _EMPTY)
    conversations: frozenset[str] = frozenset()
    seats_carried_in: int = 0


@dataclass(frozen=True, slots=True)
class MetricTally:
    """A workspace's tally of one metric: the current period and any still open to late events."""

    metric: str
    periods: tuple[PeriodTally, ...] = ()

    def for_period(self, period: BillingPeriod) -> PeriodTally | None:
        for tally in self.periods:
            if tally.period == period:
                return tally
        return None

    def latest(self) -> PeriodTally | None:
        return self.periods[-1] if self.periods else None


@dataclass(frozen=True, slots=True)
class UsageChange:
    """What counting one event did to a period's usage (alerts and limits judge these)."""

    metric: str
    period: BillingPeriod
    before: int
    after: int
    event_id: str


def count_reading(
    tally: MetricTally, reading: Reading, cycle: BillingCycle, counted_at: datetime
) -> tuple[MetricTally, UsageChange]:
    """Apply one reading. The returned change may have ``before == after`` (nothing moved)."""
    period = cycle.period_containing(reading.occurred_at)
    day = cycle.local_date(reading.occurred_at)
    current = tally.for_period(period) or _opening_tally(tally, period)
    counting = METRIC_KINDS[reading.metric].counting
    if counting is Counting.DAILY_MAXIMUM:
        updated = _report_seats(current, day, reading.quantity)
    elif counting is Counting.DISTINCT_CONVERSATIONS:
        updated = _resolve_conversation(current, day, reading)
    else:
        updated = _add_quantity(current, day, reading.quantity)
    updated = replace(updated, last_updated=counted_at)
    periods = _kept_periods(tally, updated, counted_at)
    if counting is Counting.DAILY_MAXIMUM:
        periods = _carry_seats_forward(periods)
    change = UsageChange(reading.metric, period, current.usage, updated.usage, reading.event_id)
    return MetricTally(tally.metric, periods), change


def _opening_tally(tally: MetricTally, period: BillingPeriod) -> PeriodTally:
    # Seats carry the last known count into a period that has no report yet.
    earlier = [t for t in tally.periods if t.period.end <= period.start]
    if not earlier or not _daily_maximum(tally.metric):
        return PeriodTally(period=period)
    carried = _seats_at_end(earlier[-1])
    return PeriodTally(period=period, usage=carried, seats_carried_in=carried)


def _seats_at_end(tally: PeriodTally) -> int:
    if not tally.daily:
        return tally.seats_carried_in
    return tally.daily[max(tally.daily)]


def _add_quantity(tally: PeriodTally, day: date, quantity: int) -> PeriodTally:
    # A correction never takes usage below zero; the day records what was really applied.
    after = max(0, tally.usage + quantity)
    applied = after - tally.usage
    if applied == 0:
        return tally
    daily = dict(tally.daily)
    daily[day] = daily.get(day, 0) + applied
    return replace(tally, usage=after, daily=MappingProxyType(daily))


def _resolve_conversation(tally: PeriodTally, day: date, reading: Reading) -> PeriodTally:
    conversation = reading.conversation_id or ""
    counted = conversation in tally.conversations
    if reading.quantity > 0 and not counted:
        conversations = tally.conversations | {conversation}
    elif reading.quantity < 0 and counted:
        conversations = tally.conversations - {conversation}
    else:
        return tally
    applied = 1 if reading.quantity > 0 else -1
    daily = dict(tally.daily)
    daily[day] = daily.get(day, 0) + applied
    return replace(tally, usage=tally.usage + applied, daily=MappingProxyType(daily), conversations=conversations)


def _report_seats(tally: PeriodTally, day: date, seats: int) -> PeriodTally:
    daily = dict(tally.daily)
    daily[day] = max(seats, daily.get(day, seats))
    latest_day = max(daily)
    return replace(tally, usage=daily[latest_day], daily=MappingProxyType(daily))


def _carry_seats_forward(periods: tuple[PeriodTally, ...]) -> tuple[PeriodTally, ...]:
    # A late report for an earlier period changes what every later period carried in.
    carried: list[PeriodTally] = []
    for index, tally in enumerate(periods):
        if index > 0:
            carry = _seats_at_end(carried[-1])
            usage = tally.daily[max(tally.daily)] if tally.daily else carry
            tally = replace(tally, seats_carried_in=carry, usage=usage)
        carried.append(tally)
    return tuple(carried)


def _kept_periods(tally: MetricTally, updated: PeriodTally, now: datetime) -> tuple[PeriodTally, ...]:
    others = [t for t in tally.periods if t.period != updated.period]
    newest_start = max([t.period.start for t in others] + [updated.period.start])
    kept = [
        t
        for t in [*others, updated]
        # Keep the newest period and any that can still take late events.
        if t.period.start == newest_start or t.period.end + LATE_EVENT_GRACE >= now
    ]
    return tuple(sorted(kept, key=lambda t: t.period.start))


def usage_in(tally: MetricTally | None, period: BillingPeriod) -> int:
    """The usage of ``period`` (seats: the count carried in when nothing was reported)."""
    if tally is None:
        return 0
    found = tally.for_period(period)
    if found is not None:
        return found.usage
    if _daily_maximum(tally.metric):
        earlier = [t for t in tally.periods if t.period.end <= period.start]
        return _seats_at_end(earlier[-1]) if earlier else 0
    return 0


def daily_usage(metric: str, tally: PeriodTally, days: list[date]) -> list[tuple[date, int]]:
    """Per-day usage over ``days``: cumulative for counted metrics, the day's count for seats."""
    result: list[tuple[date, int]] = []
    if _daily_maximum(metric):
        last = tally.seats_carried_in
        for day in days:
            last = tally.daily.get(day, last)
            result.append((day, last))
        return result
    running = 0
    for day in days:
        running += tally.daily.get(day, 0)
        # The floor at zero is applied in counting order, the days by when events occurred, so a
        # correction dated before what it corrects would dip a day below zero; usage never does.
        result.append((day, max(0, running)))
    return result


@dataclass(frozen=True, slots=True)
class WorkspaceUsage:
    """Everything counted for one workspace: a tally per metric and the replay guard.

    ``applied_through`` is the position (inbox offset) of the last message applied, kept in the
    same table value as the counts it produced, so a replayed message is recognised and skipped.
    """

    tallies: Mapping[str, MetricTally] = field(default_factory=lambda: MappingProxyType({}))
    applied_through: int = -1

    def tally(self, metric: str) -> MetricTally:
        return self.tallies.get(metric) or MetricTally(metric)


def _daily_maximum(metric: str) -> bool:
    kind = METRIC_KINDS.get(metric)
    return kind is not None and kind.counting is Counting.DAILY_MAXIMUM
