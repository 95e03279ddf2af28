"""The ``GET /usage`` documents (CONTRACT section 6), built from table values at a given time."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from ...core.alerts import AlertSetting, AlertState, roll_to
from ...core.contract_usage import ContractPeriod
from ...core.contracts import WorkspaceProfile
from ...core.cost_alerts import CostAlertSetting, amount_shown, roll_cost_to
from ...core.costs import money
from ...core.fin_limit import FinState, LimitSetting, fin_state_by_rule
from ...core.forecast import METHOD, Forecast, forecast
from ...core.metering import WorkspaceUsage, daily_usage, usage_in
from ...core.metric_kinds import FIN_RESOLUTIONS, SEATS
from ...core.periods import BillingPeriod
from ...core.steps.cost_alerting import cost_of, metric_cost
from ...core.workspace import WorkspaceState
from ...models.common import Metric, iso


def usage_document(
    workspace_id: str,
    state: WorkspaceState,
    now: datetime,
    contract_usage: ContractPeriod | None = None,
) -> dict[str, Any]:
    usage, profile = state.usage, state.profile
    cycle = profile.cycle
    period = cycle.period_containing(now)
    contract = profile.contract
    metrics: dict[str, Any] = {}
    for metric in Metric:
        name = metric.value
        tally = usage.tallies.get(name)
        price = contract.prices.get(name) if contract else None
        alert_state = state.alerts.get(name)
        other_limit = state.limits.get(name)
        has_limit = (name == Metric.FIN_RESOLUTIONS.value and state.fin is not None) or other_limit is not None
        if tally is None and price is None and alert_state is None and not has_limit:
            continue
        period_tally = tally.for_period(period) if tally else None
        used = usage_in(tally, period)
        others = _others_usage(contract_usage, name, workspace_id)
        rolled = roll_to(alert_state, period) if alert_state is not None else None
        alert = rolled.setting if rolled is not None else None
        projected = forecast(name, period_tally, used, cycle, period, now, alert)
        entry: dict[str, Any] = {
            "usage": used,
            "last_updated": iso(period_tally.last_updated) if period_tally and period_tally.last_updated else None,
            **_alert_settings(rolled),
            "estimated_cost": _cost(name, used, usage, profile, period, others),
            "forecast": None
            if projected is None
            else _forecast(projected, _cost(name, projected.usage, usage, profile, period, others)),
            "contract": None,
        }
        if contract is not None and contract.included(name) is not None:
            entry["contract"] = {"usage": used + others, "included": contract.included(name)}
        if name == Metric.FIN_RESOLUTIONS.value:
            setting = state.fin.setting if state.fin else None
            entry["limit"] = None if setting is None else _limit_setting(setting)
            entry["fin_state"] = _fin_state_now(state, period)
        elif other_limit is not None and other_limit.setting is not None:
            entry["limit"] = _limit_setting(other_limit.setting)
            entry["limit_state"] = _limit_state_now(other_limit, period)
        metrics[name] = entry
    return {
        "workspace_id": workspace_id,
        "contract_id": contract.contract_id if contract else None,
        "period_start": iso(period.start),
        "period_end": iso(period.end),
        "metrics": metrics,
    }


def _forecast(projected: Forecast, cost: dict[str, str] | None) -> dict[str, Any]:
    """Where usage is heading by the period's end (``core/forecast.py`` says how)."""
    return {
        "method": METHOD,
        "usage": projected.usage,
        "per_day": str(projected.per_day.quantize(Decimal("0.01"))),
        "basis_days": projected.basis_days,
        "estimated_cost": cost,
        "levels": [
            {"percent": level.percent, "usage": level.usage, "reached": level.reached,
             "projected_date": None if level.on is None else level.on.isoformat()}
            for level in projected.levels
        ],
    }  # fmt: skip


def _limit_setting(setting: LimitSetting) -> dict[str, Any]:
    return {"limit": setting.limit, "enabled": setting.enabled, **changed_by(setting)}


def _fin_state_now(state: WorkspaceState, period: BillingPeriod) -> str:
    return _limit_state_now(state.fin, period)


def _limit_state_now(limit: FinState | None, period: BillingPeriod) -> str:
    if limit is None:
        return "enabled"
    # A period that has ended re-enables it; the timer publishes it, the page need not wait.
    if limit.period is not None and limit.period.start < period.start:
        return fin_state_by_rule(limit.setting, 0)
    return limit.state


def _set_limits(state: WorkspaceState) -> list[tuple[str, FinState, LimitSetting]]:
    """Every limit set on the workspace, Fin's first: (metric, its state, its setting)."""
    found = [(FIN_RESOLUTIONS, state.fin), *sorted(state.limits.items())]
    return [(metric, limit, limit.setting) for metric, limit in found if limit is not None and limit.setting]


def limits_document(workspace_id: str, state: WorkspaceState, now: datetime) -> dict[str, Any]:
    """``GET /limits/{id}``: the state of every metric with a limit set, and its usage now."""
    period = state.profile.cycle.period_containing(now)
    return {
        "workspace_id": workspace_id,
        "limits": {
            metric: {
                "state": _limit_state_now(limit, period),
                "limit": setting.limit,
                "enabled": setting.enabled,
                "usage": usage_in(state.usage.tallies.get(metric), period),
            }
            for metric, limit, setting in _set_limits(state)
        },
    }


def _alert_settings(rolled: AlertState | None) -> dict[str, Any]:
    """The alert setting and the scheduled one of ``rolled``, an alert state rolled to the period shown."""
    if rolled is None:
        return {"alert": None, "scheduled_alert": None}
    setting, scheduled = rolled.setting, rolled.scheduled
    return {
        "alert": None
        if setting is None
        else {
            "threshold": setting.threshold,
            "early_warnings": setting.early_warnings,
            "enabled": setting.enabled,
            "forecast_warnings": setting.forecast_warnings,
            **changed_by(setting),
        },
        "scheduled_alert": None
        if scheduled is None
        else {
            "threshold": scheduled.setting.threshold,
            "early_warnings": scheduled.setting.early_warnings,
            "enabled": scheduled.setting.enabled,
            "forecast_warnings": scheduled.setting.forecast_warnings,
            "effective_from": iso(scheduled.effective_from),
            **changed_by(scheduled.setting),
        },
    }


def changed_by(setting: AlertSetting | LimitSetting | CostAlertSetting) -> dict[str, Any]:
    """Who made a setting and when it was received."""
    at = setting.changed_at
    return {"changed_by": setting.changed_by, "changed_at": None if at is None else iso(at)}


def _others_usage(contract_usage: ContractPeriod | None, metric: str, workspace_id: str) -> int:
    """The contract's usage less this workspace's own report (ours is read fresh, theirs as reported)."""
    if contract_usage is None:
        return 0
    return contract_usage.total(metric) - contract_usage.usage_of(metric, workspace_id)


def _cost(
    metric: str, used: int, usage: WorkspaceUsage, profile: WorkspaceProfile, period: BillingPeriod, others: int
) -> dict[str, str] | None:
    amount = metric_cost(profile, usage, metric, used, period, others)
    contract = profile.contract
    return None if amount is None or contract is None else {"amount": money(amount), "currency": contract.currency}


def daily_document(workspace_id: str, metric: str, state: WorkspaceState, now: datetime) -> dict[str, Any]:
    usage = state.usage
    cycle = state.profile.cycle
    period = cycle.period_containing(now)
    today = cycle.local_date(now)
    days = [day for day in cycle.days_in(period) if day <= today]
    tally = usage.tally(metric).for_period(period)
    if tally is None:
        # Nothing counted this period: seats stay at what was carried in, other metrics at 0.
        points = [(day, usage_in(usage.tally(metric), period)) for day in days]
    else:
        points = daily_usage(metric, tally, days)
    return {
        "workspace_id": workspace_id,
        "metric": metric,
        "period_start": iso(period.start),
        "period_end": iso(period.end),
        "cumulative": metric != SEATS,
        "days": [{"date": day.isoformat(), "usage": n} for day, n in points],
    }


def settings_document(
    workspace_id: str, state: WorkspaceState, now: datetime, contract_usage: ContractPeriod | None = None
) -> dict[str, Any]:
    """``GET /usage/{id}/settings``: the alerts (what reaching each threshold would cost beside
    it), the Fin limit and the billing contacts, as in force at ``now``."""
    usage, profile = state.usage, state.profile
    period = profile.cycle.period_containing(now)
    alerts: dict[str, Any] = {}
    for name, alert_state in state.alerts.items():
        rolled = roll_to(alert_state, period)
        shown = _alert_settings(rolled)
        setting, scheduled = shown["alert"], shown["scheduled_alert"]
        if setting is None and scheduled is None:
            continue
        others = _others_usage(contract_usage, name, workspace_id)
        unset = {
            "threshold": None,
            "early_warnings": False,
            "enabled": False,
            "forecast_warnings": False,
            "changed_by": None,
            "changed_at": None,
        }
        alerts[name] = {
            **(setting or unset),
            "scheduled": scheduled,
            "threshold_cost": None
            if rolled.setting is None
            else _cost(name, rolled.setting.threshold, usage, profile, period, others),
        }
    limits = {
        metric: {**_limit_setting(setting), "state": _limit_state_now(limit, period)}
        for metric, limit, setting in _set_limits(state)
    }
    return {
        "workspace_id": workspace_id,
        "alerts": alerts,
        "limits": limits,
        "billing_contacts": list(profile.billing_contacts),
        "cost_alerts": cost_alerts_document(state, period),
    }


def _cost_setting(setting: CostAlertSetting) -> dict[str, Any]:
    return {
        "amount": amount_shown(setting.amount),
        "currency": setting.currency,
        "enabled": setting.enabled,
        **changed_by(setting),
    }


def cost_alerts_document(state: WorkspaceState, period: BillingPeriod) -> dict[str, Any]:
    """The cost alerts as in force in ``period``, by metric or "total", each with the estimated
    cost it is judged against now (the other members' usage as the workspace was last told it)."""
    contract = state.profile.contract
    shown: dict[str, Any] = {}
    for key, alert in sorted(state.cost_alerts.items()):
        rolled = roll_cost_to(alert, period)
        if rolled.setting is None and rolled.scheduled is None:
            continue
        cost = cost_of(state, key, period)
        shown[key] = {
            **(
                _cost_setting(rolled.setting)
                if rolled.setting is not None
                else {"amount": None, "currency": None, "enabled": False, "changed_by": None, "changed_at": None}
            ),
            "scheduled": None
            if rolled.scheduled is None
            else {**_cost_setting(rolled.scheduled.setting), "effective_from": iso(rolled.scheduled.effective_from)},
            "estimated_cost": None
            if cost is None or contract is None
            else {"amount": money(cost), "currency": contract.currency},
        }
    return shown


def threshold_cost(
    workspace_id: str,
    state: WorkspaceState,
    now: datetime,
    contract_usage: ContractPeriod | None,
    metric: str,
    threshold: int,
) -> dict[str, str] | None:
    """What reaching ``threshold`` of ``metric`` would cost the workspace this period (None
    without a price), as ``settings_document`` gives it for the threshold in force."""
    period = state.profile.cycle.period_containing(now)
    others = _others_usage(contract_usage, metric, workspace_id)
    return _cost(metric, threshold, state.usage, state.profile, period, others)
