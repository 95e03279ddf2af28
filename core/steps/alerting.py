"""Usage alerts for a workspace: applying ``alert_settings`` and turning crossed levels into
``usage.alerts`` records (CONTRACT 3.3, 5.1). The rules themselves are ``core.alerts``."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ...models.outputs import alert_record as build_alert_record
from ...models.outputs import command_result
from ..alerts import WORKSPACE_SCOPE, AlertSetting, AlertState, LevelReached, apply_setting, judge_usage
from ..costs import estimated_cost, money
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
    setting = AlertSetting(command["threshold"], command["early_warnings"], command["enabled"], actor_of(command), at)
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
    contract = state.profile.contract
    return build_alert_record(
        WORKSPACE_SCOPE,
        workspace_id,
        metric,
        reached,
        workspace_id=workspace_id,
        contract_id=contract.contract_id if contract else None,
        estimated_cost=threshold_cost(state, metric, reached.threshold, reached.period),
        recipients=list(state.profile.billing_contacts),
        triggered_at=at,
        cause_event_id=cause_event_id,
    )


def threshold_cost(state: WorkspaceState, metric: str, quantity: int, period: BillingPeriod) -> dict[str, str] | None:
    """What reaching ``quantity`` would cost this period: the price shown beside the setting."""
    contract = state.profile.contract
    price = contract.prices.get(metric) if contract else None
    if contract is None or price is None:
        return None
    amount = estimated_cost(quantity, price.unit_price, contract.included(metric), state.others_usage(metric, period))
    return {"amount": money(amount), "currency": contract.currency}
