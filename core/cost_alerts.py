"""Alerts on money (CONTRACT 3.2 and 5.1, *Addition: cost alerts*): thresholds on a metric's
estimated cost, or on the workspace's total estimated cost, for the period, in the currency of
the workspace's contract.

Pure and synchronous, like ``core.alerts``, whose rules these follow with amounts in place of
counts: levels 50, 80 and 100 percent of the threshold amount; only a rise reaches a level; of
the levels one change leaves reached and not yet alerted only the highest alerts and the rest
are used up with it; each (amount, level) pair alerts at most once per period; a threshold
lowered to or below the current estimated cost takes effect with the next period (scheduled);
an event of an earlier period than the state's is judged against nothing.

Every comparison is exact: ``cost * 100 >= level * amount`` in Decimal, in a context wide
enough that neither product is ever rounded.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal

from .alerts import EARLY_WARNING_LEVELS, FULL_LEVEL, SettingOutcome
from .costs import money
from .periods import BillingPeriod

__all__ = [
    "COST_LEVELS",
    "COST_SCOPE",
    "TOTAL",
    "CostAlertSetting",
    "CostAlertState",
    "CostLevelReached",
    "CostScheduled",
    "amount_shown",
    "amount_text",
    "apply_cost_setting",
    "cost_alert_id",
    "judge_cost",
    "reaches_cost_level",
    "roll_cost_to",
]

COST_LEVELS = (*EARLY_WARNING_LEVELS, FULL_LEVEL)
# The `alert_id` scope of a cost alert: never the id of a usage alert or a forecast warning.
COST_SCOPE = "cost"
# The "metric" of a threshold on the workspace's total estimated cost, all priced metrics together.
TOTAL = "total"

# The namespace and separator of core.alerts.alert_id, so every alert id is made one way.
_ALERT_ID_NAMESPACE = uuid.UUID("2bdb68be-a69d-5b14-8546-b45be8434b87")
_ALERT_ID_SEPARATOR = "\x1f"
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)

CostPair = tuple[Decimal, int]  # (amount, level)


def _require_amount(value: object, name: str, *, positive: bool) -> Decimal:
    if not isinstance(value, Decimal):
        raise TypeError(f"{name} must be a decimal.Decimal (never float), got {type(value).__name__}")
    if not value.is_finite() or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite amount {'above' if positive else 'of at least'} 0, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class CostAlertSetting:
    """One `cost_alert_settings` command's content: the threshold `amount` in `currency`;
    `enabled=False` turns the alert off."""

    amount: Decimal
    currency: str
    enabled: bool
    # Who set it and when (the command's actor and receipt); not part of what the setting is.
    changed_by: str | None = field(default=None, compare=False)
    changed_at: datetime | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _require_amount(self.amount, "amount", positive=True)


@dataclass(frozen=True, slots=True)
class CostScheduled:
    """A cost setting waiting for the period that starts at `effective_from`."""

    setting: CostAlertSetting
    effective_from: datetime


@dataclass(frozen=True, slots=True)
class CostLevelReached:
    """A cost alert to publish: `cost` reached `level` percent of `amount` in `period`."""

    level: int
    amount: Decimal
    cost: Decimal
    period: BillingPeriod


@dataclass(frozen=True, slots=True)
class CostAlertState:
    """One workspace's cost alert on one metric (or `TOTAL`), as `core.alerts.AlertState`."""

    period: BillingPeriod | None = None
    setting: CostAlertSetting | None = None
    scheduled: CostScheduled | None = None
    alerted: frozenset[CostPair] = frozenset()


def reaches_cost_level(cost: Decimal, level: int, amount: Decimal) -> bool:
    """Whether `cost` is at least `level` percent of `amount`, exactly."""
    return _EXACT.multiply(cost, Decimal(100)) >= _EXACT.multiply(Decimal(level), amount)


def _levels(setting: CostAlertSetting | None) -> tuple[int, ...]:
    return COST_LEVELS if setting is not None and setting.enabled else ()


def _reached(setting: CostAlertSetting | None, cost: Decimal) -> frozenset[CostPair]:
    if setting is None:
        return frozenset()
    return frozenset(
        (setting.amount, level) for level in _levels(setting) if reaches_cost_level(cost, level, setting.amount)
    )


def roll_cost_to(state: CostAlertState, period: BillingPeriod) -> CostAlertState:
    """The state as of `period`: a later period clears what was alerted and activates a
    scheduled setting that has fallen due. The same or an earlier period changes nothing."""
    if state.period is not None and period.start <= state.period.start:
        return state
    setting, scheduled = state.setting, state.scheduled
    if scheduled is not None and scheduled.effective_from <= period.start:
        setting, scheduled = scheduled.setting, None
    return CostAlertState(period, setting, scheduled, frozenset())


def judge_cost(
    state: CostAlertState, before: Decimal, after: Decimal, period: BillingPeriod, currency: str | None
) -> tuple[CostAlertState, CostLevelReached | None]:
    """Judge one change of `period`'s estimated cost (`before` -> `after`, in `currency`, the
    contract's now; None without a contract). A setting in another currency judges nothing."""
    _require_amount(before, "before", positive=False)
    _require_amount(after, "after", positive=False)
    if state.period is not None and period.start < state.period.start:
        return state, None
    state = roll_cost_to(state, period)
    setting = state.setting
    if setting is None or not setting.enabled or setting.currency != currency or after <= before:
        return state, None
    reached = _reached(setting, after)
    fresh = reached - state.alerted
    if not fresh:
        return state, None
    level = max(level for _, level in fresh)
    return replace(state, alerted=state.alerted | reached), CostLevelReached(level, setting.amount, after, period)


def apply_cost_setting(
    state: CostAlertState,
    setting: CostAlertSetting,
    cost_now: Decimal,
    period: BillingPeriod,
    next_period_start: datetime,
) -> tuple[CostAlertState, SettingOutcome]:
    """Apply a `cost_alert_settings` command given the current period's estimated cost.

    As `core.alerts.apply_setting`: a setting takes effect at once when it turns the alert off,
    keeps the amount of the enabled setting in force, or sets an amount above `cost_now`; any
    other amount is scheduled for `next_period_start`. Levels `cost_now` has already reached
    never alert for this amount in this period. Every command replaces a pending schedule.
    """
    _require_amount(cost_now, "cost_now", positive=False)
    if state.period is not None and period.start < state.period.start:
        raise ValueError(f"the cost alert state is already at {state.period}, later than {period}")
    if next_period_start.tzinfo is None or next_period_start <= period.start:
        raise ValueError(f"next_period_start must be an aware instant after {period.start}")
    state = roll_cost_to(state, period)
    in_force = state.setting
    same_amount = in_force is not None and in_force.enabled and in_force.amount == setting.amount
    if not setting.enabled or same_amount or setting.amount > cost_now:
        alerted = state.alerted | _reached(setting, cost_now)
        return replace(state, setting=setting, scheduled=None, alerted=alerted), SettingOutcome("applied")
    effective_from = next_period_start.astimezone(UTC)
    return replace(state, scheduled=CostScheduled(setting, effective_from)), SettingOutcome("scheduled", effective_from)


def amount_text(amount: Decimal) -> str:
    """An amount as plain decimal text without trailing zeros: one amount, one text."""
    return f"{amount.normalize(_EXACT):f}"


def amount_shown(amount: Decimal) -> str:
    """An amount as records and pages show it: in cents ("6.00") unless it has finer digits,
    then as `amount_text` ("0.005"). Never rounded."""
    text = amount_text(amount)
    _, _, decimals = text.partition(".")
    return money(amount) if len(decimals) <= 2 else text


def cost_alert_id(workspace_id: str, metric: str, period_start: datetime, amount: Decimal, level: int) -> str:
    """The deterministic id of one cost crossing (as `core.alerts.alert_id`, scope "cost"); the
    amount enters as `amount_text`, so 40 and 40.00 are one threshold."""
    if period_start.tzinfo is None or period_start.utcoffset() is None:
        raise ValueError(f"period_start must be timezone-aware, got {period_start.isoformat()}")
    for name, value in (("workspace_id", workspace_id), ("metric", metric)):
        if not value or _ALERT_ID_SEPARATOR in value:
            raise ValueError(f"{name} must be non-empty and free of U+001F, got {value!r}")
    fields = (
        COST_SCOPE,
        workspace_id,
        metric,
        period_start.astimezone(UTC).isoformat(),
        amount_text(amount),
        str(level),
    )
    return str(uuid.uuid5(_ALERT_ID_NAMESPACE, _ALERT_ID_SEPARATOR.join(fields)))
