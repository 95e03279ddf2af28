"""When a workspace needs a period tick even without events (streams/pipeline/period_timer.py):
Fin and other limited metrics re-enabled by a new period, and the forecast warnings judged after each local midnight."""

from __future__ import annotations

from datetime import datetime

from ..plain import PlainWorkspace
from ..workspace import WorkspaceState
from .alerting import forecast_tick_due
from .fin import period_tick_due


def tick_due(state: WorkspaceState | PlainWorkspace) -> datetime | None:
    """The earliest time a tick is due for ``state``; None when none ever is without events."""
    if type(state) is PlainWorkspace or state.fin is None and not state.limits and not state.alerts:
        return None  # no limit to re-enable, no forecast to judge
    return min((at for at in (period_tick_due(state), forecast_tick_due(state)) if at is not None), default=None)
