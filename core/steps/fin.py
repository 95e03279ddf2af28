"""Hard limits for a workspace: feeding the pure state machine (``core.fin_limit``) with usage,
settings and period ticks, one state per limited metric (Fin's in ``WorkspaceState.fin``, every
other metric's in ``WorkspaceState.limits``). Its transitions become ``usage.limits`` and
``usage.notifications`` records in ``models/outputs.py``."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ...models.outputs import command_result
from ..fin_limit import (
    DISABLED,
    FinLimitInput,
    FinState,
    LimitSetting,
    PeriodStarted,
    SettingChanged,
    Transition,
    UsageChanged,
    next_fin_state,
)
from ..metering import usage_in
from ..metric_kinds import FIN_RESOLUTIONS
from ..periods import BillingPeriod
from ..workspace import WorkspaceState
from .alerting import actor_of


def fin_state(state: WorkspaceState, workspace_id: str) -> FinState:
    return state.fin or FinState.initial(workspace_id)


def limit_state(state: WorkspaceState, workspace_id: str, metric: str) -> FinState:
    """The limit state of ``metric``: Fin's, or another metric's (initial if none was set)."""
    if metric == FIN_RESOLUTIONS:
        return fin_state(state, workspace_id)
    return state.limits.get(metric) or FinState.initial(workspace_id, metric)


def is_limited(state: WorkspaceState, metric: str) -> bool:
    """Whether a change of ``metric``'s usage feeds a limit state: always Fin's, another metric's
    once a limit was set on it."""
    return metric == FIN_RESOLUTIONS or metric in state.limits


def feed(
    state: WorkspaceState, workspace_id: str, event: FinLimitInput, metric: str = FIN_RESOLUTIONS
) -> tuple[WorkspaceState, Transition | None]:
    updated, transition = next_fin_state(limit_state(state, workspace_id, metric), event)
    if metric == FIN_RESOLUTIONS:
        return replace(state, fin=updated), transition
    return replace(state, limits=MappingProxyType({**state.limits, metric: updated})), transition


def on_usage(
    state: WorkspaceState, workspace_id: str, usage: int, period: Any, at: datetime, metric: str = FIN_RESOLUTIONS
) -> tuple[WorkspaceState, Transition | None]:
    return feed(state, workspace_id, UsageChanged(usage, period, at), metric)


def on_limit_settings(
    state: WorkspaceState, workspace_id: str, command: dict[str, Any], at: datetime
) -> tuple[WorkspaceState, Transition | None, dict[str, Any]]:
    metric = command.get("metric", FIN_RESOLUTIONS)
    period = _current_period(state, workspace_id, metric, at)
    usage = usage_in(state.usage.tallies.get(metric), period)
    setting = LimitSetting(command["limit"], command["enabled"], actor_of(command), at)
    state, transition = feed(state, workspace_id, SettingChanged(setting, usage, period, at), metric)
    return state, transition, command_result(command["command_id"], "applied")


def on_period_tick(
    state: WorkspaceState, workspace_id: str, at: datetime
) -> tuple[WorkspaceState, list[tuple[str, Transition]]]:
    """A new period for Fin and every limited metric: the transitions it makes, by metric."""
    period = state.profile.cycle.period_containing(at)
    transitions: list[tuple[str, Transition]] = []
    for metric in (FIN_RESOLUTIONS, *sorted(state.limits)):
        state, transition = feed(state, workspace_id, PeriodStarted(period, at), metric)
        if transition is not None:
            transitions.append((metric, transition))
    return state, transitions


def period_tick_due(state: WorkspaceState) -> datetime | None:
    """When a new period must re-enable Fin or a limited metric even without events: the
    earliest end of a period one of them was disabled in (None while all are enabled)."""
    ends = [
        limit.period.end
        for limit in (state.fin, *state.limits.values())
        if limit is not None and limit.state == DISABLED and limit.period is not None
    ]
    return min(ends, default=None)


def limit_bounds(state: WorkspaceState, metric: str, period: BillingPeriod) -> tuple[int, int] | None:
    """``(floor, ceiling)``: while ``metric``'s usage in ``period`` moves within ``floor <=
    usage < ceiling``, feeding it to the limit state changes no state (only the usage it
    holds); None when even that cannot be known without judging. Without a limit on the
    metric, any usage is quiet."""
    unbounded = (0, 2**63)
    if metric == FIN_RESOLUTIONS:
        return None
    limit = state.limits.get(metric)
    if limit is None or limit.period is None:
        return unbounded
    setting = limit.setting
    if period.start < limit.period.start:
        return unbounded  # an earlier period: its usage is not judged
    if period.start > limit.period.start and limit.state == DISABLED:
        return None  # the new period re-enables it
    if setting is None or not setting.enabled:
        return unbounded
    if limit.state == DISABLED:
        return (setting.limit, unbounded[1])
    return (0, setting.limit)


def _current_period(state: WorkspaceState, workspace_id: str, metric: str, at: datetime) -> Any:
    period = state.profile.cycle.period_containing(at)
    known = limit_state(state, workspace_id, metric).period
    return known if known is not None and known.start > period.start else period
