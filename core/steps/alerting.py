"""Usage alerts for a workspace: applying ``alert_settings`` and turning crossed levels, and
levels the forecast projects, into ``usage.alerts`` records (CONTRACT 3.3, 5.1). The rules
themselves are ``core.alerts`` and ``core.forecast``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from ...models.outputs import alert_record as build_alert_record
from ...models.outputs import command_result, forecast_record
from ..alerts import WORKSPACE_SCOPE, AlertSetting, AlertState, LevelReached, apply_setting, judge_usage, roll_to
from ..costs import estimated_cost, money
from ..forecast import forecast, judge_forecast
from ..metering import usage_in
from ..periods import BillingPeriod
from ..workspace import WorkspaceState


def current_period(state: WorkspaceState, metric: str, at: datetime) -> BillingPeriod:
    """The later of the period containing ``at`` and the one the alert state has reached (an
    event up to 5 minutes ahead may already have moved it on)."""
    period = state.profile.cycle.period_containing(at)
    known = state.alerts.get(metric, AlertState()).period
    return known if known is not None and known.start > period.start else period


def apply_alert_settings(
    state: WorkspaceState, command: dict[str, Any], at: datetime
) -> tuple[WorkspaceState, dict[str, Any]]:
    metric = command["metric"]
    setting = AlertSetting(
        command["threshold"],
        command["early_warnings"],
        command["enabled"],
        actor_of(command),
        at,
        command.get("forecast_warnings", False),
    )
    period = current_period(state, metric, at)
    usage_now = usage_in(state.usage.tallies.get(metric), period)
    next_start = state.profile.cycle.next_period(period).start
    alert_state, outcome = apply_setting(state.alerts.get(metric, AlertState()), setting, usage_now, period, next_start)
    alerts = MappingProxyType({**state.alerts, metric: alert_state})
    result = command_result(command["command_id"], outcome.status, effective_from=outcome.effective_from)
    return replace(state, alerts=alerts), result


def actor_of(command: dict[str, Any]) -> str | None:
    """Who sent a settings command (its ``actor.id``)."""
    actor = command.get("actor")
    return actor.get("id") if isinstance(actor, dict) else None


def judge_change(
    state: WorkspaceState, metric: str, before: int, after: int, period: BillingPeriod
) -> tuple[WorkspaceState, LevelReached | None]:
    current = state.alerts.get(metric)
    if current is None:
        return state, None
    judged, reached = judge_usage(current, before, after, period)
    if judged is current:
        return state, reached
    return replace(state, alerts=MappingProxyType({**state.alerts, metric: judged})), reached


def alert_record(
    state: WorkspaceState, workspace_id: str, metric: str, reached: LevelReached, cause_event_id: str, at: datetime
) -> dict[str, Any]:
    return build_alert_record(
        WORKSPACE_SCOPE,
        workspace_id,
        metric,
        reached,
        workspace_id=workspace_id,
        cause_event_id=cause_event_id,
        **_addressed(state, metric, reached.threshold, reached.period, at),
    )


def _addressed(
    state: WorkspaceState, metric: str, threshold: int, period: BillingPeriod, at: datetime
) -> dict[str, Any]:
    """The fields a workspace's alert and forecast warning take from the workspace."""
    contract = state.profile.contract
    return {
        "contract_id": contract.contract_id if contract else None,
        "estimated_cost": threshold_cost(state, metric, threshold, period),
        "recipients": list(state.profile.billing_contacts),
        "triggered_at": at,
    }


def _warns(setting: AlertSetting | None) -> bool:
    return setting is not None and setting.enabled and setting.forecast_warnings


def judge_forecasts(
    state: WorkspaceState, workspace_id: str, at: datetime, metrics: Iterable[str] | None = None
) -> tuple[WorkspaceState, list[dict[str, Any]]]:
    """Judge the forecasts at ``at`` of the alerts (of ``metrics``; None: all) with forecast
    warnings on in the current period; the ``usage.alerts`` records of the warnings."""
    cycle = state.profile.cycle
    alerts = dict(state.alerts)
    records: list[dict[str, Any]] = []
    for metric in list(alerts) if metrics is None else [m for m in metrics if m in alerts]:
        period = current_period(state, metric, at)
        rolled = roll_to(alerts[metric], period)
        if not _warns(rolled.setting):
            continue
        tally = state.usage.tallies.get(metric)
        used = usage_in(tally, period)
        period_tally = tally.for_period(period) if tally is not None else None
        projected = forecast(metric, period_tally, used, cycle, period, at, rolled.setting)
        alerts[metric], warning = judge_forecast(rolled, projected, used, period, at)
        if warning is not None:
            addressed = _addressed(state, metric, warning.threshold, period, at)
            records.append(forecast_record(workspace_id, metric, warning, **addressed))
    if alerts == state.alerts:
        return state, records
    return replace(state, alerts=MappingProxyType(alerts)), records


# No judgement yet: due at once.
_NEVER_JUDGED = datetime(1970, 1, 1, tzinfo=UTC)


def forecast_tick_due(state: WorkspaceState) -> datetime | None:
    """When the forecasts must be judged again even without events: the first local midnight
    after the latest judgement of an alert with forecast warnings on (a setting scheduled with
    them: when it takes effect). None when no alert has them."""
    due: list[datetime] = []
    cycle = state.profile.cycle
    for alert in state.alerts.values():
        if _warns(alert.setting):
            judged = alert.forecast_judged_at
            due.append(_NEVER_JUDGED if judged is None else cycle.next_day_start(judged))
        if alert.scheduled is not None and _warns(alert.scheduled.setting):
            due.append(alert.scheduled.effective_from)
    return min(due, default=None)


def threshold_cost(state: WorkspaceState, metric: str, quantity: int, period: BillingPeriod) -> dict[str, str] | None:
    """What reaching ``quantity`` would cost this period: the price shown beside the setting."""
    contract = state.profile.contract
    price = contract.prices.get(metric) if contract else None
    if contract is None or price is None:
        return None
    amount = estimated_cost(quantity, price.unit_price, contract.included(metric), state.others_usage(metric, period))
    return {"amount": money(amount), "currency": contract.currency}
