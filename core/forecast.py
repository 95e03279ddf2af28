"""Where a metric's usage is heading by the end of its billing period, and when it reaches each
alert level.

Method ``trailing_average``: the rate is the mean of the net daily changes over the last
complete local days of the period, at most ``BASIS_DAYS`` of them (today is not complete, so it
is left out of the rate but its usage is in the usage so far). The projection at the period's end
is the usage so far plus that rate times the time left, the rest of today included, rounded down
to a whole count. A level's date is the local day on which usage growing at that rate from now
first reaches it; none if it is reached already or not before the period ends.

There is no forecast on a period's first local day (no complete day to take a rate from), and
none for seats, whose usage is a daily maximum rather than a sum. A falling trend (corrections
outweighing usage) projects no change: usage is never projected below what it is.
Rates are ``Decimal`` (28 significant digits), counts integers, never floats; no clock is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from .alerts import AlertSetting, levels_of
from .metering import PeriodTally
from .metric_kinds import METRIC_KINDS, Counting
from .periods import BillingCycle, BillingPeriod

METHOD = "trailing_average"
BASIS_DAYS = 7
_MICROSECONDS_PER_DAY = Decimal(86_400_000_000)


@dataclass(frozen=True, slots=True)
class LevelForecast:
    percent: int
    usage: int  # the usage at which the level is reached
    reached: bool
    on: date | None  # the projected local day it is reached; None if reached, or not this period


@dataclass(frozen=True, slots=True)
class Forecast:
    usage: int  # projected at the period's end
    per_day: Decimal  # the rate it assumes
    basis_days: int  # how many complete days the rate is the mean of
    levels: tuple[LevelForecast, ...] = ()


def forecast(
    metric: str,
    tally: PeriodTally | None,
    used: int,
    cycle: BillingCycle,
    period: BillingPeriod,
    now: datetime,
    alert: AlertSetting | None = None,
) -> Forecast | None:
    """The forecast of ``metric`` in ``period`` at ``now``, where ``used`` is its usage so far and
    ``tally`` its daily changes (None: nothing counted); ``alert`` gives the levels to date."""
    if METRIC_KINDS[metric].counting is Counting.DAILY_MAXIMUM or not period.contains(now):
        return None
    today = cycle.local_date(now)
    complete = [day for day in cycle.days_in(period) if day < today][-BASIS_DAYS:]
    if not complete:
        return None
    daily = tally.daily if tally is not None else {}
    per_day = Decimal(sum(daily.get(day, 0) for day in complete)) / Decimal(len(complete))
    left = _days(period.end - now)
    growth = max(Decimal(0), per_day * left).to_integral_value(ROUND_FLOOR)
    levels = tuple(
        _level(percent, alert.threshold, used, per_day, left, cycle, period, now) for percent in levels_of(alert)
    ) if alert is not None else ()  # fmt: skip
    return Forecast(used + int(growth), per_day, len(complete), levels)


def _level(
    percent: int,
    threshold: int,
    used: int,
    per_day: Decimal,
    left: Decimal,
    cycle: BillingCycle,
    period: BillingPeriod,
    now: datetime,
) -> LevelForecast:
    """``left`` is the days from ``now`` to the period's end."""
    # The least whole usage with usage * 100 >= percent * threshold, as alerts judge it.
    target = -((-percent * threshold) // 100)
    if used >= target:
        return LevelForecast(percent, target, True, None)
    if per_day <= 0:
        return LevelForecast(percent, target, False, None)
    needed = Decimal(target - used) / per_day  # days from now
    if needed >= left:
        return LevelForecast(percent, target, False, None)
    at = now + timedelta(microseconds=int((needed * _MICROSECONDS_PER_DAY).to_integral_value(ROUND_CEILING)))
    return LevelForecast(percent, target, False, cycle.local_date(at) if at < period.end else None)


def _days(span: timedelta) -> Decimal:
    micros = (span.days * 86_400 + span.seconds) * 1_000_000 + span.microseconds
    return Decimal(micros) / _MICROSECONDS_PER_DAY
