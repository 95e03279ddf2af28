"""Cost alerts for a workspace: applying ``cost_alert_settings`` and turning levels its
estimated cost reaches into ``usage.alerts`` records of kind "cost" (CONTRACT 3.2 and 5.1,
*Addition: cost alerts*). The rules themselves are ``core.cost_alerts``.

The estimated cost is the one the usage page shows, with the other members' usage of a shared
included quantity as this workspace was last told it: a metric's is ``core.costs.estimated_cost``
of its usage this period (seats: ``prorated_seat_cost``), and the total is the sum over every
metric the contract prices, seats included. Without a contract there is no price and no cost.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from ...models.outputs import command_result, cost_alert_record
from ..contracts import WorkspaceProfile
from ..cost_alerts import TOTAL, CostAlertSetting, CostAlertState, CostLevelReached, apply_cost_setting, judge_cost
from ..costs import estimated_cost, prorated_seat_cost
from ..metering import WorkspaceUsage, usage_in
from ..metric_kinds import SEATS
from ..periods import BillingCycle, BillingPeriod
from ..workspace import WorkspaceState
from .alerting import actor_of

NO_CONTRACT = "no_contract_currency"
CURRENCY_MISMATCH = "currency_mismatch"
NOT_PRICED = "metric_not_priced"


def metric_cost(
    profile: WorkspaceProfile, usage: WorkspaceUsage, metric: str, quantity: int, period: BillingPeriod, others: int
) -> Decimal | None:
    """What ``quantity`` of ``metric`` costs in ``period``, the other members of a shared
    included quantity using ``others``; None when the contract does not price it. Seats cost
    what their days in ``usage`` cost (``prorated_seat_cost``), whatever ``quantity`` says."""
    contract = profile.contract
    price = contract.prices.get(metric) if contract else None
    if contract is None or price is None:
        return None
    included = contract.included(metric)
    if metric == SEATS:
        tally = usage.tallies.get(metric)
        period_tally = tally.for_period(period) if tally else None
        seats_by_day = dict(period_tally.daily) if period_tally else {}
        carried = period_tally.seats_carried_in if period_tally else usage_in(tally, period)
        days = profile.cycle.days_in(period)
        return prorated_seat_cost(
            seats_by_day, days, price.unit_price, carried_in=carried, included=included, others_seats=others
        )
    return estimated_cost(quantity, price.unit_price, included, others)


def _cost_now(state: WorkspaceState, metric: str, period: BillingPeriod) -> Decimal | None:
    """``metric``'s estimated cost in ``period`` from the workspace's own usage."""
    used = usage_in(state.usage.tallies.get(metric), period)
    return metric_cost(state.profile, state.usage, metric, used, period, state.others_usage(metric, period))


def cost_of(state: WorkspaceState, metric: str, period: BillingPeriod) -> Decimal | None:
    """The estimated cost a cost alert on ``metric`` (or ``TOTAL``) is judged against."""
    contract = state.profile.contract
    if contract is None:
        return None
    if metric != TOTAL:
        return _cost_now(state, metric, period)
    total = Decimal(0)
    for name in contract.prices:
        cost = _cost_now(state, name, period)
        if cost is not None:
            total += cost
    return total


def current_cost_period(state: WorkspaceState, metric: str, at: datetime) -> BillingPeriod:
    """The later of the period containing ``at`` and the one the cost alert state has reached."""
    period = state.profile.cycle.period_containing(at)
    known = state.cost_alerts.get(metric, CostAlertState()).period
    return known if known is not None and known.start > period.start else period


def _rejected(command: dict[str, Any], code: str, text: str) -> dict[str, Any]:
    return command_result(command["command_id"], "rejected", reason=f"{code}: {text}")


def apply_cost_alert_settings(
    state: WorkspaceState, command: dict[str, Any], at: datetime
) -> tuple[WorkspaceState, dict[str, Any]]:
    """Apply one validated ``cost_alert_settings`` command received at ``at``; its answer."""
    metric = command["metric"]
    contract = state.profile.contract
    if contract is None:
        return state, _rejected(command, NO_CONTRACT, "the workspace has no contract, so no prices and no currency")
    currency = command.get("currency") or contract.currency
    if currency != contract.currency:
        return state, _rejected(
            command, CURRENCY_MISMATCH, f"the contract's currency is {contract.currency}, not {currency}"
        )
    if metric != TOTAL and metric not in contract.prices:
        return state, _rejected(command, NOT_PRICED, f"the contract has no price for {metric}")
    try:
        amount = Decimal(str(command["amount"]))
    except InvalidOperation:
        return state, _rejected(command, "invalid_command", "amount is not a decimal number")
    setting = CostAlertSetting(amount, contract.currency, command.get("enabled", True), actor_of(command), at)
    period = current_cost_period(state, metric, at)
    cost_now = cost_of(state, metric, period) or Decimal(0)
    next_start = state.profile.cycle.next_period(period).start
    current = state.cost_alerts.get(metric, CostAlertState())
    judged, outcome = apply_cost_setting(current, setting, cost_now, period, next_start)
    result = command_result(command["command_id"], outcome.status, effective_from=outcome.effective_from)
    return replace(state, cost_alerts=MappingProxyType({**state.cost_alerts, metric: judged})), result


def judged_keys(state: WorkspaceState, metric: str) -> tuple[str, ...]:
    """The cost alerts an event of ``metric`` may move: its own and the total's."""
    alerts = state.cost_alerts
    return tuple(key for key in (metric, TOTAL) if key in alerts)


def needs_judging(state: WorkspaceState, metric: str) -> bool:
    """Whether an event of ``metric`` must go through the per-event path for cost alerts: any
    cost alert on the metric or on the total, whatever its setting (the simplest exact rule)."""
    alerts = state.cost_alerts
    return bool(alerts) and (metric in alerts or TOTAL in alerts)


def judge_costs(
    before: WorkspaceState, after: WorkspaceState, metric: str, period: BillingPeriod
) -> tuple[WorkspaceState, list[tuple[str, CostLevelReached]]]:
    """Judge the cost alerts one usage change of ``metric`` in ``period`` may move (``before``
    and ``after`` are the workspace before and after it); the levels reached, by alert key."""
    contract = after.profile.contract
    currency = contract.currency if contract else None
    alerts = dict(after.cost_alerts)
    reached: list[tuple[str, CostLevelReached]] = []
    for key in judged_keys(after, metric):
        cost_before = cost_of(before, key, period)
        cost_after = cost_of(after, key, period)
        if cost_before is None or cost_after is None:
            continue
        alerts[key], level = judge_cost(alerts[key], cost_before, cost_after, period, currency)
        if level is not None:
            reached.append((key, level))
    if alerts == after.cost_alerts:
        return after, reached
    return replace(after, cost_alerts=MappingProxyType(alerts)), reached


def record_of(
    state: WorkspaceState, workspace_id: str, key: str, reached: CostLevelReached, cause_event_id: str, at: datetime
) -> dict[str, Any]:
    contract = state.profile.contract
    usage = None if key == TOTAL else usage_in(state.usage.tallies.get(key), reached.period)
    return cost_alert_record(
        workspace_id,
        key,
        reached,
        currency=contract.currency if contract else "",
        contract_id=contract.contract_id if contract else None,
        usage=usage,
        recipients=list(state.profile.billing_contacts),
        triggered_at=at,
        cause_event_id=cause_event_id,
    )


def costs_onto_cycle(state: WorkspaceState, cycle: BillingCycle) -> WorkspaceState:
    """The cost alerts re-based on a new billing cycle, as ``core.alerts.onto_cycle`` does."""
    if not state.cost_alerts:
        return state
    moved = {
        key: alert
        if alert.period is None or cycle.has_period(alert.period)
        else replace(alert, period=cycle.period_containing(alert.period.start))
        for key, alert in state.cost_alerts.items()
    }
    return replace(state, cost_alerts=MappingProxyType(moved))
