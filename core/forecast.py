"""Where a metric's usage is heading by the end of its billing period, and when it reaches each
alert level.

Method ``trailing_average``: the rate is the mean of the net daily changes over the last
complete local days of the period, at most ``BASIS_DAYS`` of them (today is not complete, so it
is left out of the rate but its usage is in the usage so far). The projection at the period's end
is the usage so far plus that rate times the time left, the rest of today included, rounded down
to a whole count. A level's date is the local day on which usage growing at that rate from now
first reaches it; none if it is reached already or not before the period ends.

Forecast warnings (``judge_forecast``): an alert with ``forecast_warnings`` on warns of the
highest of its levels, not reached yet, that usage is projected to reach before the period ends;
each (threshold, level) warns at most once a period, lower levels projected with it are used up
with it, and a level already reached (or alerted) never warns. They are judged after each local
midnight and after a setting, never per event: the rate only changes when a day completes.

There is no forecast on a period's first local day (no complete day to take a rate from), and
none for seats, whose usage is a daily maximum rather than a sum. A falling trend (corrections
outweighing usage) projects no change: usage is never projected below what it is.
Rates are ``Decimal`` (28 significant digits), counts integers, never floats; no clock is read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from .alerts import AlertSetting, AlertState, levels_of, roll_to
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


@dataclass(frozen=True, slots=True)
class ForecastWarning:
    """A level of an alert the forecast projects usage to reach this period: a warning to publish."""

    level: int
    threshold: int
    usage: int  # when judged
    projected_usage: int  # at the period's end
    projected_date: date  # the local day the level is projected to be reached
    period: BillingPeriod
    method: str = METHOD


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


def judge_forecast(
    state: AlertState, projected: Forecast | None, used: int, period: BillingPeriod, now: datetime
) -> tuple[AlertState, ForecastWarning | None]:
    """Judge ``projected``, the forecast of ``period`` at ``now`` with the levels of the setting in
    force in ``state`` rolled to ``period`` (``used``: the usage so far), for a forecast warning.

    The state remembers ``now`` as its last judgement even when nothing warns; an earlier
    period than the state's is judged against nothing and leaves it as it is.
    """
    if state.period is not None and period.start < state.period.start:
        return state, None
    state = replace(roll_to(state, period), forecast_judged_at=now)
    setting = state.setting
    if projected is None or setting is None or not setting.enabled or not setting.forecast_warnings:
        return state, None
    threshold = setting.threshold
    spent = state.alerted | state.forecast_warned
    ahead = [
        (level.percent, level.on)
        for level in projected.levels
        if not level.reached and level.on is not None and (threshold, level.percent) not in spent
    ]
    if not ahead:
        return state, None
    percent, on = max(ahead)
    warned = state.forecast_warned | {(threshold, level) for level, _ in ahead}
    warning = ForecastWarning(percent, threshold, used, projected.usage, on, period)
    return replace(state, forecast_warned=warned), warning
