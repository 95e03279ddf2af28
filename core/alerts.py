"""Usage alerts (CONTRACT 3.2 `alert_settings` and `contract_alert_settings`, 3.3 "Usage alerts"
and "Contracted usage", 5.1).

Pure and synchronous: periods, usage and times are arguments, never read from a clock or a
table. The caller keeps one `AlertState` per workspace and metric (one `ContractAlertState` per
contract and metric) and replaces it with the state each function returns.

What "alerted" means here: a (threshold, level) pair is in `alerted` once it may no longer alert
in the state's period, either because it did alert or because usage had already reached it when
it could not (a jump that also reached a higher level, or a setting taking effect above it).
Keying on the threshold as well as the level makes "at most once per period and threshold
value" hold even when a threshold is changed away and back within one period, and the set is
cleared when a new period starts, so it stays small.

Periods are ordered by their start. An event for a period earlier than the state's (a late
event, accepted up to 7 days after its period ended) is judged against nothing: it never
alerts and leaves the state as it is, because alerts speak about the current period and that
one's levels must not be disturbed by the previous period's counts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from .metric_kinds import SEATS
from .periods import BillingCycle, BillingPeriod

__all__ = [
    "CONTRACT_LEVELS",
    "CONTRACT_LEVEL_CHOICES",
    "CONTRACT_SCOPE",
    "EARLY_WARNING_LEVELS",
    "FORECAST_SCOPE",
    "FULL_LEVEL",
    "WORKSPACE_SCOPE",
    "AlertSetting",
    "AlertState",
    "ContractAlertSetting",
    "ContractAlertState",
    "LevelReached",
    "ScheduledSetting",
    "SettingOutcome",
    "alert_id",
    "apply_contract_setting",
    "apply_setting",
    "contract_levels_of",
    "judge_contract_usage",
    "judge_usage",
    "levels_of",
    "onto_cycle",
    "reaches_level",
    "roll_contract_to",
    "roll_to",
]

FULL_LEVEL = 100
EARLY_WARNING_LEVELS = (50, 80)
CONTRACT_LEVELS = (80, FULL_LEVEL)  # a contract's levels until a setting chooses others
CONTRACT_LEVEL_CHOICES = (*EARLY_WARNING_LEVELS, FULL_LEVEL)

WORKSPACE_SCOPE = "workspace"
CONTRACT_SCOPE = "contract"
# The `alert_id` scope of a workspace alert's forecast warnings (core/forecast.py): a warning
# and the alert for the same level never share an id.
FORECAST_SCOPE = "forecast"

# Fixed forever: changing either would give every past crossing a new id, and consumers
# deduplicate mail and records by it. The namespace is uuid5(NAMESPACE_URL,
# "urn:meterwatch:usage-alert"), written out so no library change can move it.
_ALERT_ID_NAMESPACE = uuid.UUID("2bdb68be-a69d-5b14-8546-b45be8434b87")
# ASCII unit separator: identifiers are validated to carry no control characters (models/common),
# scopes and metrics are fixed words, and the remaining fields are digits and ISO text.
_ALERT_ID_SEPARATOR = "\x1f"

SettingStatus = Literal["applied", "scheduled"]
ThresholdLevel = tuple[int, int]  # (threshold, level)


def _require_count(value: object, name: str, *, minimum: int) -> int:
    # bool is an int subclass; True as a threshold is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class AlertSetting:
    """One `alert_settings` command's content; `enabled=False` turns the alert off and
    `forecast_warnings` also warns of levels the forecast projects this period."""

    threshold: int
    early_warnings: bool
    enabled: bool
    # Who set it and when (the command's actor and receipt); not part of what the setting is.
    changed_by: str | None = field(default=None, compare=False)
    changed_at: datetime | None = field(default=None, compare=False)
    forecast_warnings: bool = False

    def __post_init__(self) -> None:
        _require_count(self.threshold, "threshold", minimum=1)


@dataclass(frozen=True, slots=True)
class ScheduledSetting:
    """A setting waiting for the period that starts at `effective_from`."""

    setting: AlertSetting
    effective_from: datetime


@dataclass(frozen=True, slots=True)
class SettingOutcome:
    """What became of a setting: the `status` and `effective_from` of its command result."""

    status: SettingStatus
    effective_from: datetime | None = None


@dataclass(frozen=True, slots=True)
class LevelReached:
    """An alert to publish. For contract scope `threshold` is the included quantity."""

    level: int
    threshold: int
    usage: int
    period: BillingPeriod


@dataclass(frozen=True, slots=True)
class AlertState:
    """One workspace's alert for one metric.

    `setting` is the setting in force (None: never set) and `scheduled` the one waiting for the
    next period; both are what the HTTP view shows, after `roll_to` the current period so a
    schedule that fell due before any event of the new period arrived shows as in force.

    `forecast_warned` holds the (threshold, level) pairs a forecast warning may no longer be
    given for in the period (cleared with `alerted`), and `forecast_judged_at` when the
    forecasts were last judged, which sets when they are judged next (core/forecast.py).
    """

    period: BillingPeriod | None = None
    setting: AlertSetting | None = None
    scheduled: ScheduledSetting | None = None
    alerted: frozenset[ThresholdLevel] = frozenset()
    forecast_warned: frozenset[ThresholdLevel] = frozenset()
    forecast_judged_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ContractAlertSetting:
    """One `contract_alert_settings` command's content: the levels, in percent of the included
    quantity and lowest first, that alert; `enabled=False` turns the metric's alerts off."""

    levels: tuple[int, ...]
    enabled: bool
    # Who set it and when (the command's actor and receipt); not part of what the setting is.
    changed_by: str | None = field(default=None, compare=False)
    changed_at: datetime | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for level in self.levels:
            _require_count(level, "level", minimum=1)
        if not self.levels or self.levels != tuple(sorted(set(self.levels) & set(CONTRACT_LEVEL_CHOICES))):
            raise ValueError(f"levels must be distinct values of {CONTRACT_LEVEL_CHOICES}, lowest first: {self.levels}")


@dataclass(frozen=True, slots=True)
class ContractAlertState:
    """One contract's alerts for one metric; `alerted` holds (included, level) pairs and
    `setting` is the contract's `contract_alert_settings` for it (None: never set)."""

    period: BillingPeriod | None = None
    alerted: frozenset[ThresholdLevel] = frozenset()
    setting: ContractAlertSetting | None = None


def reaches_level(usage: int, level: int, threshold: int) -> bool:
    """Whether `usage` is at least `level` percent of `threshold`, in exact integers."""
    return usage * 100 >= level * threshold


def levels_of(setting: AlertSetting) -> tuple[int, ...]:
    """The levels a setting alerts at, lowest first (none when it is turned off)."""
    if not setting.enabled:
        return ()
    if setting.early_warnings:
        return (*EARLY_WARNING_LEVELS, FULL_LEVEL)
    return (FULL_LEVEL,)


def _is_later(period: BillingPeriod, than: BillingPeriod | None) -> bool:
    return than is None or period.start > than.start


def _is_earlier(period: BillingPeriod, than: BillingPeriod | None) -> bool:
    return than is not None and period.start < than.start


def _reached_pairs(levels: tuple[int, ...], threshold: int, usage: int) -> frozenset[ThresholdLevel]:
    return frozenset((threshold, level) for level in levels if reaches_level(usage, level, threshold))


def _judge_levels(
    levels: tuple[int, ...],
    threshold: int,
    alerted: frozenset[ThresholdLevel],
    before: int,
    after: int,
) -> tuple[frozenset[ThresholdLevel], int | None]:
    """The alerted set after one event, and the level to alert, if any.

    Only a rise can reach a level: a correction never alerts. Of the levels this event leaves
    reached and not yet alerted, only the highest alerts; the rest are used up with it.
    """
    if after <= before:
        return alerted, None
    reached = _reached_pairs(levels, threshold, after)
    fresh = reached - alerted
    if not fresh:
        return alerted, None
    return alerted | reached, max(level for _, level in fresh)


def roll_to(state: AlertState, period: BillingPeriod) -> AlertState:
    """The state as of `period`: a later period clears what was alerted and warned and activates a
    scheduled setting that has fallen due. The same or an earlier period changes nothing."""
    if not _is_later(period, state.period):
        return state
    setting, scheduled = state.setting, state.scheduled
    if scheduled is not None and scheduled.effective_from <= period.start:
        setting, scheduled = scheduled.setting, None
    return AlertState(period, setting, scheduled, frozenset(), frozenset(), state.forecast_judged_at)


def onto_cycle(state: AlertState, cycle: BillingCycle) -> AlertState:
    """The state re-based on ``cycle`` when the workspace's billing cycle changes (it joins or
    leaves a contract): its period becomes the new cycle's period containing the old one's start.

    Without this, a period of the new cycle that starts before the old period would be judged
    "earlier" and its usage never alerted. The setting, a scheduled setting and the levels already
    alerted are kept: nobody is told twice about a level in the same stretch of time.
    """
    if state.period is None or cycle.has_period(state.period):
        return state
    return replace(state, period=cycle.period_containing(state.period.start))


def judge_usage(
    state: AlertState, before: int, after: int, period: BillingPeriod
) -> tuple[AlertState, LevelReached | None]:
    """Judge one usage change of `period` (`before` -> `after`, the period's usage)."""
    if _is_earlier(period, state.period):
        return state, None
    state = roll_to(state, period)
    if state.setting is None:
        return state, None
    threshold = state.setting.threshold
    alerted, level = _judge_levels(levels_of(state.setting), threshold, state.alerted, before, after)
    if level is None:
        return state, None
    return replace(state, alerted=alerted), LevelReached(level, threshold, after, period)


def apply_setting(
    state: AlertState,
    setting: AlertSetting,
    usage_now: int,
    period: BillingPeriod,
    next_period_start: datetime,
) -> tuple[AlertState, SettingOutcome]:
    """Apply an `alert_settings` command given the current period's usage.

    `period` is the workspace's current period: the later of the period containing the
    command's time and `state.period` (an event up to 5 minutes in the future may already have
    moved the state on). An earlier one is a caller's mistake and raises ValueError, since
    `usage_now` would then describe the wrong period.

    A setting takes effect at once when it turns the alert off, keeps the threshold of the
    enabled setting in force (only early warnings change, or nothing does), or sets a
    threshold above `usage_now`; any other threshold is scheduled for `next_period_start`.
    Every command replaces a pending schedule: the latest instruction wins.
    """
    _require_count(usage_now, "usage_now", minimum=0)
    if _is_earlier(period, state.period):
        raise ValueError(f"the alert state is already at {state.period}, later than {period}")
    if next_period_start.tzinfo is None or next_period_start <= period.start:
        raise ValueError(f"next_period_start must be an aware instant after {period.start}")
    state = roll_to(state, period)
    if _takes_effect_now(state.setting, setting, usage_now):
        # Levels this setting's usage has already reached never alert for this threshold in
        # this period; pairs alerted earlier stay, so re-applying or re-enabling re-arms nothing.
        alerted = state.alerted | _reached_pairs(levels_of(setting), setting.threshold, usage_now)
        applied = replace(state, setting=setting, scheduled=None, alerted=alerted)
        return applied, SettingOutcome("applied")
    effective_from = next_period_start.astimezone(UTC)
    scheduled = replace(state, scheduled=ScheduledSetting(setting, effective_from))
    return scheduled, SettingOutcome("scheduled", effective_from)


def _takes_effect_now(in_force: AlertSetting | None, setting: AlertSetting, usage_now: int) -> bool:
    if not setting.enabled:
        return True
    # The article's scheduling rule is about updating the threshold. With the same threshold
    # every level usage has reached is marked as alerted on applying, so taking effect at once
    # cannot alert for anything already reached.
    if in_force is not None and in_force.enabled and in_force.threshold == setting.threshold:
        return True
    return setting.threshold > usage_now


def roll_contract_to(state: ContractAlertState, period: BillingPeriod) -> ContractAlertState:
    """The contract state as of `period`: a later period starts every level afresh."""
    if not _is_later(period, state.period):
        return state
    return replace(state, period=period, alerted=frozenset())


def contract_levels_of(metric: str, setting: ContractAlertSetting | None) -> tuple[int, ...]:
    """The levels a contract alerts at for `metric`, lowest first: none on seats (usage alerts
    are not available on seats), `CONTRACT_LEVELS` until a setting chooses, none when off."""
    if metric == SEATS:
        return ()
    if setting is None:
        return CONTRACT_LEVELS
    return setting.levels if setting.enabled else ()


def judge_contract_usage(
    state: ContractAlertState,
    metric: str,
    before: int,
    after: int,
    included: int | None,
    period: BillingPeriod,
) -> tuple[ContractAlertState, LevelReached | None]:
    """Judge one change of a contract's usage of `metric` against its included quantity.

    `included` of None (pay-as-you-go) or 0 means no contract alert. When the included quantity
    changes within a period, its levels are judged afresh on the next rise: a contract already
    past the new quantity hears about it then, since nobody set this quantity as an alert.
    """
    if included is not None:
        _require_count(included, "included", minimum=0)
    if _is_earlier(period, state.period):
        return state, None
    state = roll_contract_to(state, period)
    if not included:
        return state, None
    levels = contract_levels_of(metric, state.setting)
    alerted, level = _judge_levels(levels, included, state.alerted, before, after)
    if level is None:
        return state, None
    return replace(state, alerted=alerted), LevelReached(level, included, after, period)


def apply_contract_setting(
    state: ContractAlertState,
    metric: str,
    setting: ContractAlertSetting,
    usage_now: int,
    included: int | None,
    period: BillingPeriod | None,
) -> ContractAlertState:
    """Apply a `contract_alert_settings` command given the contract's usage of `metric` in
    `period`, its current period (None while the contract has no terms, and then no usage).

    A setting always takes effect at once: its levels are shares of the included quantity, which
    the contract's subscription fixes and the setting leaves as it is, so no choice of levels
    moves a threshold below usage. As with a workspace's setting, levels `usage_now` has already
    reached never alert for this included quantity in this period, and pairs alerted earlier
    stay, so re-applying or re-enabling re-arms nothing. A `period` earlier than the state's is
    a caller's mistake and raises ValueError.
    """
    _require_count(usage_now, "usage_now", minimum=0)
    if included is not None:
        _require_count(included, "included", minimum=0)
    if period is None:
        return replace(state, setting=setting)
    if _is_earlier(period, state.period):
        raise ValueError(f"the alert state is already at {state.period}, later than {period}")
    state = roll_contract_to(state, period)
    if not included:
        return replace(state, setting=setting)
    alerted = state.alerted | _reached_pairs(contract_levels_of(metric, setting), included, usage_now)
    return replace(state, alerted=alerted, setting=setting)


def alert_id(scope: str, owner_id: str, metric: str, period_start: datetime, threshold: int, level: int) -> str:
    """The deterministic id of one crossing: the same inputs always give the same id.

    A UUID version 5 in a fixed meterwatch namespace over the fields joined by U+001F (unit
    separator), which no field may contain, so different field tuples never join to the same
    text. `period_start` is written in UTC, so one instant given with different offsets gives
    one id. `owner_id` is the workspace id, or the contract id for contract scope.
    """
    if period_start.tzinfo is None or period_start.utcoffset() is None:
        raise ValueError(f"period_start must be timezone-aware, got {period_start.isoformat()}")
    _require_count(threshold, "threshold", minimum=1)
    _require_count(level, "level", minimum=1)
    for name, value in (("scope", scope), ("owner_id", owner_id), ("metric", metric)):
        if not value or _ALERT_ID_SEPARATOR in value:
            raise ValueError(f"{name} must be non-empty and free of U+001F, got {value!r}")
    fields = (scope, owner_id, metric, period_start.astimezone(UTC).isoformat(), str(threshold), str(level))
    return str(uuid.uuid5(_ALERT_ID_NAMESPACE, _ALERT_ID_SEPARATOR.join(fields)))
