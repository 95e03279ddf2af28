"""Forecasts against cases worked by hand, and properties that hold for any usage."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meterwatch.core.alerts import AlertSetting, reaches_level
from meterwatch.core.forecast import Forecast, LevelForecast, forecast
from meterwatch.core.metering import PeriodTally
from meterwatch.core.periods import BillingCycle

UTC_CYCLE = BillingCycle(1, "UTC")
DECEMBER = UTC_CYCLE.period_containing(datetime(2026, 12, 15, tzinfo=UTC))  # 31 days
NEW_YORK = BillingCycle(1, "America/New_York")


def tally(period, daily: dict[int, int]) -> PeriodTally:  # type: ignore[no-untyped-def]
    days = {date(2026, 12, d): n for d, n in daily.items()}
    return PeriodTally(period=period, usage=max(0, sum(days.values())), daily=days)


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("case", "daily", "now", "alert", "expected"),
    [
        (
            # Dec 1-3 complete: (10 + 20 + 30) / 3 = 20 a day; Dec 4 12:00 to Jan 1 is 27.5 days:
            # 65 + 550 = 615. 50 % of 400 = 200 needs 135 more: 6.75 days, Dec 11 06:00;
            # 80 % = 320 needs 255: 12.75 days, Dec 17 06:00; 400 needs 335: 16.75 days, Dec 21 06:00.
            "three complete days, three levels ahead",
            {1: 10, 2: 20, 3: 30, 4: 5},
            at(4, 12),
            AlertSetting(400, early_warnings=True, enabled=True),
            Forecast(
                615,
                Decimal(20),
                3,
                (
                    LevelForecast(50, 200, False, date(2026, 12, 11)),
                    LevelForecast(80, 320, False, date(2026, 12, 17)),
                    LevelForecast(100, 400, False, date(2026, 12, 21)),
                ),
            ),
        ),
        (
            # 50 % of 100 is reached at 65; 80 needs 15 more at 20 a day: 0.75 days, Dec 5 06:00.
            "a level reached already",
            {1: 10, 2: 20, 3: 30, 4: 5},
            at(4, 12),
            AlertSetting(100, early_warnings=True, enabled=True),
            Forecast(
                615,
                Decimal(20),
                3,
                (
                    LevelForecast(50, 50, True, None),
                    LevelForecast(80, 80, False, date(2026, 12, 5)),
                    LevelForecast(100, 100, False, date(2026, 12, 6)),
                ),
            ),
        ),
        (
            # Only the last seven complete days, Dec 3-9 (7 each), make the rate: 7 a day; 22 days
            # left from Dec 10 00:00: 2,049 + 154 = 2,203. 10,000 is not reached this period.
            "a burst before the last seven days is not the trend",
            {1: 1000, 2: 1000, **{d: 7 for d in range(3, 10)}},
            at(10),
            AlertSetting(10_000, early_warnings=False, enabled=True),
            Forecast(2203, Decimal(7), 7, (LevelForecast(100, 10_000, False, None),)),
        ),
        (
            # (10 - 30) / 2 = -10 a day: no growth is projected, nor any level.
            "corrections outweigh usage",
            {1: 10, 2: -30},
            at(3, 8),
            AlertSetting(5, early_warnings=False, enabled=True),
            Forecast(0, Decimal(-10), 2, (LevelForecast(100, 5, False, None),)),
        ),
        (
            # (1 + 0) / 2 = 0.5 a day over the 29 days left from Dec 3 00:00 = 14.5, rounded down:
            # 1 + 14 = 15. 50 % of 3 is 2 (1.5 rounded up, as 2 * 100 >= 50 * 3): 1 more, 2 days,
            # Dec 5; 80 % and 100 % are 3: 2 more, 4 days, Dec 7.
            "rounding: growth down, a level's usage up",
            {1: 1, 2: 0},
            at(3),
            AlertSetting(3, early_warnings=True, enabled=True),
            Forecast(
                15,
                Decimal(1) / Decimal(2),
                2,
                (
                    LevelForecast(50, 2, False, date(2026, 12, 5)),
                    LevelForecast(80, 3, False, date(2026, 12, 7)),
                    LevelForecast(100, 3, False, date(2026, 12, 7)),
                ),
            ),
        ),
        ("no alert set: no levels", {1: 4, 2: 6}, at(3), None, Forecast(5 * 29 + 10, Decimal(5), 2, ())),
        (
            "an alert turned off: no levels",
            {1: 4, 2: 6},
            at(3),
            AlertSetting(9, False, False),
            Forecast(155, Decimal(5), 2, ()),
        ),
    ],
)
def test_forecast_matches_the_hand_worked_case(  # type: ignore[no-untyped-def]
    case, daily, now, alert, expected
) -> None:
    counted = tally(DECEMBER, daily)
    assert forecast("sms", counted, counted.usage, UTC_CYCLE, DECEMBER, now, alert) == expected, case


def test_the_days_are_the_workspace_s_local_days() -> None:
    # New York: the period starts Dec 1 05:00 UTC. At Dec 4 03:00 UTC it is Dec 3 22:00 there, so
    # Dec 1 and 2 are complete: (10 + 30) / 2 = 20 a day. To Jan 1 05:00 UTC is 28 days 2 hours
    # (28.0833 days): 561.67 more, rounded down; 47 + 561 = 608. 60 is 13 more: 0.65 days, Dec 4
    # 13:36 local; 96 is 49 more: 2.45 days, Dec 6 08:48; 120 is 73 more: 3.65 days, Dec 7 13:36.
    period = NEW_YORK.period_containing(datetime(2026, 12, 10, tzinfo=UTC))
    counted = PeriodTally(
        period=period, usage=47, daily={date(2026, 12, 1): 10, date(2026, 12, 2): 30, date(2026, 12, 3): 7}
    )
    result = forecast("sms", counted, 47, NEW_YORK, period, at(4, 3), AlertSetting(120, True, True))
    assert result == Forecast(608, Decimal(20), 2, (
        LevelForecast(50, 60, False, date(2026, 12, 4)),
        LevelForecast(80, 96, False, date(2026, 12, 6)),
        LevelForecast(100, 120, False, date(2026, 12, 7)),
    ))  # fmt: skip


@pytest.mark.parametrize(
    ("metric", "now"),
    [
        ("seats", at(10)),  # a daily maximum, not a sum
        ("sms", at(1, 23, 59)),  # no complete day yet
        ("sms", datetime(2027, 1, 2, tzinfo=UTC)),  # after the period
    ],
)
def test_no_forecast_without_a_rate_to_take(metric: str, now: datetime) -> None:
    counted = tally(DECEMBER, {1: 3})
    assert forecast(metric, counted, 3, UTC_CYCLE, DECEMBER, now) is None


def test_nothing_counted_yet_projects_nothing_more() -> None:
    assert forecast("email", None, 0, UTC_CYCLE, DECEMBER, at(20)) == Forecast(0, Decimal(0), 7, ())


@given(
    daily=st.dictionaries(st.integers(1, 31), st.integers(-50, 10_000), max_size=31),
    minutes=st.integers(0, 31 * 24 * 60 - 1),
    threshold=st.integers(1, 400_000),
)
def test_any_forecast_is_at_least_the_usage_and_its_levels_come_in_order(
    daily: dict[int, int], minutes: int, threshold: int
) -> None:
    now = at(1) + timedelta(minutes=minutes)
    today = now.date()
    counted = tally(DECEMBER, {d: n for d, n in daily.items() if date(2026, 12, d) <= today})
    result = forecast("sms", counted, counted.usage, UTC_CYCLE, DECEMBER, now, AlertSetting(threshold, True, True))
    if today == date(2026, 12, 1):
        assert result is None
        return
    assert result is not None
    assert result.usage >= counted.usage
    assert 1 <= result.basis_days <= 7
    dates = [level.on for level in result.levels if level.on is not None]
    assert dates == sorted(dates) and all(today <= d <= date(2026, 12, 31) for d in dates)
    for level in result.levels:
        assert level.reached == reaches_level(counted.usage, level.percent, threshold)
        assert reaches_level(level.usage, level.percent, threshold) and not reaches_level(
            level.usage - 1, level.percent, threshold
        )
        if level.on is not None:
            # Projected to be reached this period: the projection at the period's end gets there.
            assert result.usage + 1 >= level.usage
