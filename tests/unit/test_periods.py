import calendar
import dataclasses
from datetime import UTC, date, datetime, time, timedelta
from itertools import count, takewhile
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterwatch.core.periods import (
    CALENDAR_MONTH_UTC,
    LATE_EVENT_GRACE,
    MAX_FUTURE_SKEW,
    BillingCycle,
    BillingPeriod,
    event_time_rejection,
)

MICROSECOND = timedelta(microseconds=1)


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)


def wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


# (anchor_day, timezone, instant, expected start, expected end); expectations worked out by
# hand from the tz rules, so they check the implementation rather than restate it.
PERIOD_EXAMPLES = [
    (1, "UTC", utc(2024, 2, 15), utc(2024, 2, 1), utc(2024, 3, 1)),
    (1, "UTC", utc(2024, 12, 31, 23, 59, 59), utc(2024, 12, 1), utc(2025, 1, 1)),
    (15, "UTC", utc(2024, 3, 14, 23, 59, 59), utc(2024, 2, 15), utc(2024, 3, 15)),
    (15, "UTC", utc(2024, 3, 15), utc(2024, 3, 15), utc(2024, 4, 15)),
    (15, "UTC", utc(2024, 1, 10), utc(2023, 12, 15), utc(2024, 1, 15)),
    (28, "UTC", utc(2023, 2, 28), utc(2023, 2, 28), utc(2023, 3, 28)),
    (29, "UTC", utc(2023, 2, 27), utc(2023, 1, 29), utc(2023, 2, 28)),
    (29, "UTC", utc(2023, 3, 1), utc(2023, 2, 28), utc(2023, 3, 29)),
    (29, "UTC", utc(2024, 2, 28), utc(2024, 1, 29), utc(2024, 2, 29)),
    (29, "UTC", utc(2024, 2, 29), utc(2024, 2, 29), utc(2024, 3, 29)),
    (30, "UTC", utc(2023, 2, 28), utc(2023, 2, 28), utc(2023, 3, 30)),
    (30, "UTC", utc(2024, 2, 28), utc(2024, 1, 30), utc(2024, 2, 29)),
    (30, "UTC", utc(2024, 3, 29), utc(2024, 2, 29), utc(2024, 3, 30)),
    (31, "UTC", utc(2023, 2, 15), utc(2023, 1, 31), utc(2023, 2, 28)),
    (31, "UTC", utc(2023, 3, 1), utc(2023, 2, 28), utc(2023, 3, 31)),
    (31, "UTC", utc(2023, 4, 30), utc(2023, 4, 30), utc(2023, 5, 31)),
    (31, "UTC", utc(2024, 2, 29, 12), utc(2024, 2, 29), utc(2024, 3, 31)),
    (31, "UTC", utc(2023, 12, 31, 12), utc(2023, 12, 31), utc(2024, 1, 31)),
    # New York: DST starts 2024-03-10 02:00, ends 2024-11-03 02:00.
    (1, "America/New_York", utc(2024, 3, 15), utc(2024, 3, 1, 5), utc(2024, 4, 1, 4)),
    (10, "America/New_York", utc(2024, 3, 10, 5), utc(2024, 3, 10, 5), utc(2024, 4, 10, 4)),
    (10, "America/New_York", utc(2024, 3, 10, 4, 59, 59), utc(2024, 2, 10, 5), utc(2024, 3, 10, 5)),
    (3, "America/New_York", utc(2024, 11, 3, 6), utc(2024, 11, 3, 4), utc(2024, 12, 3, 5)),
    # London: BST starts 2024-03-31 01:00 GMT.
    (31, "Europe/London", utc(2024, 4, 1), utc(2024, 3, 31), utc(2024, 4, 29, 23)),
    (31, "Europe/London", utc(2024, 4, 29, 23, 30), utc(2024, 4, 29, 23), utc(2024, 5, 30, 23)),
    # Kolkata: +05:30 all year.
    (1, "Asia/Kolkata", utc(2024, 1, 31, 19), utc(2024, 1, 31, 18, 30), utc(2024, 2, 29, 18, 30)),
    (1, "Asia/Kolkata", utc(2024, 1, 31, 18), utc(2023, 12, 31, 18, 30), utc(2024, 1, 31, 18, 30)),
    # Chatham: +13:45 until 2024-04-07 03:45, then +12:45.
    (1, "Pacific/Chatham", utc(2024, 4, 10), utc(2024, 3, 31, 10, 15), utc(2024, 4, 30, 11, 15)),
    # Lord Howe: half-hour DST, +11 until 2024-04-07 02:00, then +10:30.
    (7, "Australia/Lord_Howe", utc(2024, 4, 7), utc(2024, 4, 6, 13), utc(2024, 5, 6, 13, 30)),
    # Santiago: clocks went back at 2024-04-07 00:00 -03 to 23:00 -04, so Apr 7 midnight
    # is unambiguous (-04); they went forward at 2024-09-08 00:00 -04 to 01:00 -03, so
    # Sep 8 midnight does not exist and the period starts at 01:00 -03 (04:00Z).
    (7, "America/Santiago", utc(2024, 4, 7, 3, 30), utc(2024, 3, 7, 3), utc(2024, 4, 7, 4)),
    (7, "America/Santiago", utc(2024, 4, 7, 4), utc(2024, 4, 7, 4), utc(2024, 5, 7, 4)),
    (8, "America/Santiago", utc(2024, 9, 8, 3, 59, 59), utc(2024, 8, 8, 4), utc(2024, 9, 8, 4)),
    (8, "America/Santiago", utc(2024, 9, 8, 4), utc(2024, 9, 8, 4), utc(2024, 10, 8, 3)),
    # Havana: midnight skipped on 2024-03-10 (00:00 -05 -> 01:00 -04) ...
    (10, "America/Havana", utc(2024, 3, 10, 5), utc(2024, 3, 10, 5), utc(2024, 4, 10, 4)),
    # ... and repeated on 2024-11-03 (01:00 -04 -> 00:00 -05): the first occurrence counts.
    (3, "America/Havana", utc(2024, 11, 3, 4, 30), utc(2024, 11, 3, 4), utc(2024, 12, 3, 5)),
    (3, "America/Havana", utc(2024, 11, 3, 3, 59), utc(2024, 10, 3, 4), utc(2024, 11, 3, 4)),
    # Sao Paulo (historical): midnight skipped on 2018-11-04 (00:00 -03 -> 01:00 -02).
    (4, "America/Sao_Paulo", utc(2018, 11, 4, 3), utc(2018, 11, 4, 3), utc(2018, 12, 4, 2)),
    # St John's (historical): at 2006-10-29 00:01 NDT clocks went back to 23:01 NST on the
    # 28th, so 02:45Z reads as Oct 28 locally yet comes after the period's start.
    (29, "America/St_Johns", utc(2006, 10, 29, 2, 45), utc(2006, 10, 29, 2, 30), utc(2006, 11, 29, 3, 30)),
    # Toronto (historical): clocks went from 1919-03-30 23:30 EST to 00:30 EDT, so midnight
    # lies inside the gap and the first instant after it is the transition, 04:30Z.
    (31, "America/Toronto", utc(1919, 3, 31, 12), utc(1919, 3, 31, 4, 30), utc(1919, 4, 30, 4)),
    (31, "America/Toronto", utc(1919, 3, 31, 4, 29), utc(1919, 2, 28, 5), utc(1919, 3, 31, 4, 30)),
    # Apia skipped 2011-12-30 entirely (-10 -> +14): the period starts on Dec 31 00:00 +14.
    (30, "Pacific/Apia", utc(2011, 12, 30, 11), utc(2011, 12, 30, 10), utc(2012, 1, 29, 10)),
]


@pytest.mark.parametrize(("anchor_day", "zone", "at", "start", "end"), PERIOD_EXAMPLES)
def test_period_containing_examples(anchor_day, zone, at, start, end):
    cycle = BillingCycle(anchor_day, zone)
    period = cycle.period_containing(at)
    assert period == BillingPeriod(start, end)
    assert period.start.tzinfo is UTC and period.end.tzinfo is UTC
    assert cycle.period_containing(at.astimezone(ZoneInfo(zone))) == period


@pytest.mark.parametrize(
    ("anchor_day", "zone", "first_day", "last_day", "length", "missing"),
    [
        (1, "UTC", date(2024, 2, 1), date(2024, 2, 29), 29, None),
        (1, "UTC", date(2023, 2, 1), date(2023, 2, 28), 28, None),
        (1, "UTC", date(2024, 11, 1), date(2024, 11, 30), 30, None),
        (31, "UTC", date(2024, 1, 31), date(2024, 2, 28), 29, None),
        # A 23-hour DST day is still one local day.
        (10, "America/New_York", date(2024, 3, 10), date(2024, 4, 9), 31, None),
        (8, "America/Santiago", date(2024, 9, 8), date(2024, 10, 7), 30, None),
        (29, "America/St_Johns", date(2006, 10, 29), date(2006, 11, 28), 31, None),
        (15, "Pacific/Apia", date(2011, 12, 15), date(2012, 1, 14), 30, date(2011, 12, 30)),
    ],
)
def test_days_in_examples(anchor_day, zone, first_day, last_day, length, missing):
    cycle = BillingCycle(anchor_day, zone)
    noon = datetime.combine(first_day, time(12), tzinfo=ZoneInfo(zone))
    days = cycle.days_in(cycle.period_containing(noon))
    assert (days[0], days[-1], len(days)) == (first_day, last_day, length)
    assert missing not in days


def test_local_date_uses_the_cycle_timezone():
    cycle = BillingCycle(1, "Asia/Kolkata")
    assert cycle.local_date(utc(2024, 1, 31, 18, 29)) == date(2024, 1, 31)
    assert cycle.local_date(utc(2024, 1, 31, 18, 30)) == date(2024, 2, 1)


def test_calendar_month_utc_and_from_anchor():
    assert CALENDAR_MONTH_UTC == BillingCycle(1, "UTC")
    london = BillingCycle.from_anchor(date(2023, 1, 31), "Europe/London")
    assert london == BillingCycle(31, "Europe/London")
    assert BillingCycle.from_anchor(datetime(2023, 5, 15, 9), "UTC").anchor_day == 15


@pytest.mark.parametrize("anchor_day", [0, 32, -1, True, 1.0, "1", None])
def test_bad_anchor_day_is_rejected(anchor_day):
    with pytest.raises(ValueError, match="anchor_day"):
        BillingCycle(anchor_day, "UTC")


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../etc/passwd", "/etc/localtime", "localtime", None, 5])
def test_unknown_timezone_is_rejected(zone):
    with pytest.raises(ValueError, match="time zone|timezone"):
        BillingCycle(1, zone)


def test_values_are_frozen():
    period = CALENDAR_MONTH_UTC.period_containing(utc(2024, 1, 5))
    with pytest.raises(dataclasses.FrozenInstanceError):
        CALENDAR_MONTH_UTC.anchor_day = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        period.end = utc(2030, 1, 1)
    assert not hasattr(period, "__dict__")


def test_billing_period_normalises_to_utc_and_is_half_open():
    kolkata = ZoneInfo("Asia/Kolkata")
    start, end = datetime(2024, 2, 1, tzinfo=kolkata), datetime(2024, 3, 1, tzinfo=kolkata)
    period = BillingPeriod(start, end)
    assert period.start == utc(2024, 1, 31, 18, 30) and period.start.tzinfo is UTC
    assert period.contains(period.start) and period.contains(period.end - MICROSECOND)
    assert not period.contains(period.end) and not period.contains(period.start - MICROSECOND)
    assert period.contains(datetime(2024, 2, 1, tzinfo=kolkata))


@pytest.mark.parametrize("end", [utc(2024, 1, 1), utc(2023, 12, 31)])
def test_billing_period_must_not_be_empty(end):
    with pytest.raises(ValueError, match="end after it starts"):
        BillingPeriod(utc(2024, 1, 1), end)


NAIVE = datetime(2024, 1, 15)
_PERIOD = BillingPeriod(utc(2024, 1, 1), utc(2024, 2, 1))


@pytest.mark.parametrize(
    "call",
    [
        lambda: BillingPeriod(NAIVE, utc(2024, 2, 1)),
        lambda: BillingPeriod(utc(2024, 1, 1), datetime(2024, 2, 1)),
        lambda: _PERIOD.contains(NAIVE),
        lambda: CALENDAR_MONTH_UTC.period_containing(NAIVE),
        lambda: CALENDAR_MONTH_UTC.local_date(NAIVE),
        lambda: event_time_rejection(NAIVE, utc(2024, 1, 15), CALENDAR_MONTH_UTC),
        lambda: event_time_rejection(utc(2024, 1, 15), NAIVE, CALENDAR_MONTH_UTC),
    ],
)
def test_naive_datetimes_are_rejected(call):
    with pytest.raises(ValueError, match="timezone-aware"):
        call()


def test_next_and_previous_reject_a_period_of_another_cycle():
    foreign = BillingCycle(15, "UTC").period_containing(utc(2024, 1, 20))
    with pytest.raises(ValueError, match="not a period"):
        CALENDAR_MONTH_UTC.next_period(foreign)
    with pytest.raises(ValueError, match="not a period"):
        CALENDAR_MONTH_UTC.previous_period(foreign)


@pytest.mark.parametrize(
    ("cycle", "period", "expected"),
    [
        (CALENDAR_MONTH_UTC, CALENDAR_MONTH_UTC.period_containing(utc(2024, 1, 20)), True),
        (BillingCycle(15, "UTC"), CALENDAR_MONTH_UTC.period_containing(utc(2024, 1, 20)), False),
        (BillingCycle(1, "Europe/Dublin"), CALENDAR_MONTH_UTC.period_containing(utc(2024, 7, 20)), False),  # UTC+1
        (BillingCycle(1, "Europe/Dublin"), BillingCycle(1, "Europe/London").period_containing(utc(2024, 1, 20)), True),
        (CALENDAR_MONTH_UTC, BillingPeriod(utc(2024, 1, 1), utc(2024, 1, 15)), False),
    ],
    ids=["own", "other-anchor-day", "other-zone", "same-boundaries-other-name", "part-of-a-period"],
)
def test_has_period_tells_its_own_periods_from_others(cycle, period, expected):
    assert cycle.has_period(period) is expected


NOW = utc(2024, 3, 10, 12)
NY = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("occurred_at", "now", "expected"),
    [
        (NOW, NOW, None),
        (NOW + MAX_FUTURE_SKEW, NOW, None),
        (NOW + MAX_FUTURE_SKEW + MICROSECOND, NOW, "occurred_in_future"),
        (NOW + timedelta(days=40), NOW, "occurred_in_future"),
        # January's period ends 2024-02-01 00:00Z; the grace runs to 2024-02-08 00:00Z.
        (utc(2024, 1, 1), utc(2024, 2, 8), None),
        (utc(2024, 1, 31, 23, 59), utc(2024, 2, 8) + MICROSECOND, "period_closed"),
        (utc(2024, 1, 1), utc(2024, 2, 8) + MICROSECOND, "period_closed"),
        (utc(2024, 2, 1), utc(2024, 2, 8) + MICROSECOND, None),
        # Skew is measured in real time, not wall time: 01:58 EST to 03:02 EDT is 4 minutes.
        (datetime(2024, 3, 10, 3, 2, tzinfo=NY), datetime(2024, 3, 10, 1, 58, tzinfo=NY), None),
        # 01:00 EDT to the repeated 01:02 EST (fold=1) is 62 minutes, not 2.
        (datetime(2024, 11, 3, 1, 2, fold=1, tzinfo=NY), datetime(2024, 11, 3, 1, tzinfo=NY), "occurred_in_future"),
    ],
)
def test_event_time_rejection_boundaries(occurred_at, now, expected):
    assert event_time_rejection(occurred_at, now, CALENDAR_MONTH_UTC) == expected


def test_event_time_rejection_uses_the_cycle():
    # Kolkata's January period ends 2024-01-31 18:30Z, earlier than UTC's.
    kolkata = BillingCycle(1, "Asia/Kolkata")
    occurred, deadline = utc(2024, 1, 20), utc(2024, 2, 7, 18, 30)
    assert event_time_rejection(occurred, deadline, kolkata) is None
    assert event_time_rejection(occurred, deadline + MICROSECOND, kolkata) == "period_closed"
    assert MAX_FUTURE_SKEW == timedelta(minutes=5) and LATE_EVENT_GRACE == timedelta(days=7)


# --- properties over random instants, anchors and zones ---

ZONE_NAMES = sorted(available_timezones() - {"localtime", "posixrules"})
cycles = st.builds(BillingCycle, st.integers(1, 31), st.sampled_from(ZONE_NAMES))
instants = st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1), timezones=st.just(UTC))
PROPERTY = settings(max_examples=300, deadline=None)


@PROPERTY
@given(cycles, instants)
def test_period_contains_its_instant_and_tiles_time(cycle, at):
    period = cycle.period_containing(at)
    assert period.contains(at)
    following, preceding = cycle.next_period(period), cycle.previous_period(period)
    assert following.start == period.end and preceding.end == period.start
    assert cycle.previous_period(following) == period == cycle.next_period(preceding)
    assert cycle.period_containing(period.start) == period
    assert cycle.period_containing(period.end - MICROSECOND) == period
    assert cycle.period_containing(at.astimezone(ZoneInfo(cycle.timezone))) == period


def _starts_local_midnight(instant: datetime, day: date, zone: ZoneInfo) -> bool:
    # The first instant whose wall clock reads `day` 00:00 or later: midnight itself, or
    # the first instant after it when the clocks skipped it.
    midnight = datetime.combine(day, time())
    return wall(instant - MICROSECOND, zone) < midnight <= wall(instant, zone)


@PROPERTY
@given(cycles, instants)
def test_period_starts_at_local_midnight_of_the_clamped_anchor_day(cycle, at):
    zone = ZoneInfo(cycle.timezone)
    start = cycle.period_containing(at).start
    local = wall(start, zone)
    candidates = []
    for month in (local, local.replace(day=1) - timedelta(days=1)):
        last_day = calendar.monthrange(month.year, month.month)[1]
        candidates.append(month.date().replace(day=min(cycle.anchor_day, last_day)))
    assert any(_starts_local_midnight(start, day, zone) for day in candidates)


def _sampled_local_dates(period: BillingPeriod, zone: ZoneInfo) -> set[date]:
    step = timedelta(minutes=15)
    samples = takewhile(lambda u: u < period.end, (period.start + k * step for k in count()))
    last_instant = period.end - MICROSECOND
    return {u.astimezone(zone).date() for u in (*samples, last_instant)}


@PROPERTY
@given(cycles, instants)
def test_days_in_lists_the_local_days_of_the_period(cycle, at):
    period = cycle.period_containing(at)
    days = cycle.days_in(period)
    first, last = cycle.local_date(period.start), cycle.local_date(period.end - MICROSECOND)
    seen = _sampled_local_dates(period, ZoneInfo(cycle.timezone))
    assert days == sorted(d for d in seen if first <= d <= last)
    assert 27 <= len(days) <= 32


def test_an_event_from_year_1_is_in_a_closed_period_even_east_of_utc():
    # Its period in Kiritimati (UTC+14) would start before year 1: it is judged closed without it.
    occurred = datetime(1, 1, 1, tzinfo=UTC)
    assert (
        event_time_rejection(occurred, datetime(2026, 11, 24, tzinfo=UTC), BillingCycle(15, "Pacific/Kiritimati"))
        == "period_closed"
    )
