"""The Fin hard limit for a workspace: feeding the pure state machine (``core.fin_limit``) with
usage, settings and period ticks. Its transitions become ``usage.limits`` and
``usage.notifications`` records in ``models/outputs.py``."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from ...models.outputs import command_result
from ..fin_limit import (
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
from ..workspace import WorkspaceState
from .alerting import actor_of


def fin_state(state: WorkspaceState, workspace_id: str) -> FinState:
    return state.fin or FinState.initial(workspace_id)


def feed(state: WorkspaceState, workspace_id: str, event: FinLimitInput) -> tuple[WorkspaceState, Transition | None]:
    updated, transition = next_fin_state(fin_state(state, workspace_id), event)
    return replace(state, fin=updated), transition


def on_usage(
    state: WorkspaceState, workspace_id: str, usage: int, period: Any, at: datetime
) -> tuple[WorkspaceState, Transition | None]:
    return feed(state, workspace_id, UsageChanged(usage, period, at))


def on_limit_settings(
    state: WorkspaceState, workspace_id: str, command: dict[str, Any], at: datetime
) -> tuple[WorkspaceState, Transition | None, dict[str, Any]]:
    period = _current_period(state, workspace_id, at)
    usage = usage_in(state.usage.tallies.get(FIN_RESOLUTIONS), period)
    setting = LimitSetting(command["limit"], command["enabled"], actor_of(command), at)
    state, transition = feed(state, workspace_id, SettingChanged(setting, usage, period, at))
    return state, transition, command_result(command["command_id"], "applied")


def on_period_tick(state: WorkspaceState, workspace_id: str, at: datetime) -> tuple[WorkspaceState, Transition | None]:
    period = state.profile.cycle.period_containing(at)
    return feed(state, workspace_id, PeriodStarted(period, at))


def period_tick_due(state: WorkspaceState) -> datetime | None:
    """When a new period must re-enable Fin even without events: the end of the period it was
    disabled in (None while it is enabled)."""
    fin = state.fin
    if fin is None or fin.state != "disabled" or fin.period is None:
        return None
    return fin.period.end


def _current_period(state: WorkspaceState, workspace_id: str, at: datetime) -> Any:
    period = state.profile.cycle.period_containing(at)
    known = fin_state(state, workspace_id).period
    return known if known is not None and known.start > period.start else period
