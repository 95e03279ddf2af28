"""The hard limit: one workspace's state machine for one metric, as a single pure function.

With an enabled limit, Fin (or the limited metric) is disabled while the current period's
usage of the metric is at or above the limit, and enabled otherwise (CONTRACT 3.3 "Hard
limit"). The caller stores one `FinState` per workspace and limited metric, feeds every change
of usage, setting or period to `next_fin_state`, replaces the stored state with the one
returned, and publishes the `Transition`, if any, to `usage.limits` (CONTRACT 5.2).

Nothing here reads a clock or does I/O: times arrive inside the inputs, and transition ids
are derived from the state, so replaying the same inputs yields the same transitions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypeAlias

from .metric_kinds import FIN_RESOLUTIONS
from .periods import BillingPeriod, _require_aware

__all__ = [
    "ENABLED",
    "DISABLED",
    "FinAgentState",
    "TransitionReason",
    "LimitSetting",
    "FinState",
    "UsageChanged",
    "SettingChanged",
    "PeriodStarted",
    "FinLimitInput",
    "Transition",
    "next_fin_state",
    "fin_state_by_rule",
    "transition_id",
    "should_notify",
]

FinAgentState: TypeAlias = Literal["enabled", "disabled"]
ENABLED: FinAgentState = "enabled"
DISABLED: FinAgentState = "disabled"

TransitionReason: TypeAlias = Literal[
    "limit_reached",
    "limit_lowered",
    "usage_dropped",
    "limit_raised",
    "limit_turned_off",
    "new_period",
]

# uuid5 needs a namespace; deriving it from a fixed name keeps ids stable across releases
# and separate from any other uuid5 ids meterwatch makes.
_TRANSITION_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "meterwatch:fin-limit-transition")

# Unit separator: the message models reject C0 controls in identifiers, and neither an
# ISO timestamp nor a decimal number contains it, so joined fields can never run together.
_ID_FIELD_SEPARATOR = "\x1f"


def _require_count(value: object, name: str) -> int:
    # bool is an int subclass; True as a usage or limit is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


def _require_period(value: object, name: str) -> BillingPeriod:
    if not isinstance(value, BillingPeriod):
        raise TypeError(f"{name} must be a BillingPeriod, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class LimitSetting:
    """A workspace's hard limit on Fin resolutions; `enabled=False` keeps the number but
    enforces nothing."""

    limit: int
    enabled: bool
    # Who set it and when (the command's actor and receipt); not part of what the setting is.
    changed_by: str | None = field(default=None, compare=False)
    changed_at: datetime | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _require_count(self.limit, "limit")
        if not isinstance(self.enabled, bool):
            raise TypeError(f"enabled must be a bool, got {type(self.enabled).__name__}")


def fin_state_by_rule(setting: LimitSetting | None, usage: int) -> FinAgentState:
    """The state the contract demands: disabled iff an enabled limit is reached.

    `usage >= limit` makes a limit of 0 disable Fin at once, even before any resolution.
    """
    if setting is not None and setting.enabled and usage >= setting.limit:
        return DISABLED
    return ENABLED


@dataclass(frozen=True, slots=True)
class FinState:
    """What the caller stores per workspace and limited metric, replaced as a whole on every
    change.

    `period` is None until the first input names one. `transitions_in_period` counts the
    transitions already emitted in `period`; it numbers the next one, so its id is the same
    on every replay. `metric` is the limited metric, `fin_resolutions` for Fin.
    """

    workspace_id: str
    state: FinAgentState
    period: BillingPeriod | None
    usage: int
    setting: LimitSetting | None
    transitions_in_period: int = 0
    metric: str = FIN_RESOLUTIONS

    def __post_init__(self) -> None:
        _require_workspace_id(self.workspace_id)
        if self.state not in (ENABLED, DISABLED):
            raise ValueError(f"state must be 'enabled' or 'disabled', got {self.state!r}")
        if self.period is not None:
            _require_period(self.period, "period")
        _require_count(self.usage, "usage")
        if self.setting is not None and not isinstance(self.setting, LimitSetting):
            raise TypeError(f"setting must be a LimitSetting, got {type(self.setting).__name__}")
        _require_count(self.transitions_in_period, "transitions_in_period")
        _require_metric(self.metric)
        # A stored state that contradicts its own usage and setting would make the next
        # transition's reason (and whether there is one) meaningless, so it cannot exist.
        expected = fin_state_by_rule(self.setting, self.usage)
        if self.state != expected:
            raise ValueError(
                f"state {self.state!r} contradicts usage {self.usage} and setting "
                f"{self.setting}; the rule gives {expected!r}"
            )

    @classmethod
    def initial(cls, workspace_id: str, metric: str = FIN_RESOLUTIONS) -> FinState:
        """A workspace never seen before: no limit, no usage, enabled."""
        return cls(workspace_id, ENABLED, None, 0, None, 0, metric)


@dataclass(frozen=True, slots=True)
class UsageChanged:
    """The workspace's `fin_resolutions` usage in `period` is now `usage` (a total, not a
    delta, so a redelivered input changes nothing)."""

    usage: int
    period: BillingPeriod
    at: datetime

    def __post_init__(self) -> None:
        _require_count(self.usage, "usage")
        _require_period(self.period, "period")
        _require_aware(self.at, "at")


@dataclass(frozen=True, slots=True)
class SettingChanged:
    """A `limit_settings` command took effect; `usage` is the usage of `period` at that time."""

    setting: LimitSetting
    usage: int
    period: BillingPeriod
    at: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.setting, LimitSetting):
            raise TypeError(f"setting must be a LimitSetting, got {type(self.setting).__name__}")
        _require_count(self.usage, "usage")
        _require_period(self.period, "period")
        _require_aware(self.at, "at")


@dataclass(frozen=True, slots=True)
class PeriodStarted:
    """A timer saw `period` begin; nothing has been used in it yet."""

    period: BillingPeriod
    at: datetime

    def __post_init__(self) -> None:
        _require_period(self.period, "period")
        _require_aware(self.at, "at")


FinLimitInput: TypeAlias = UsageChanged | SettingChanged | PeriodStarted


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of Fin's state, as published on `usage.limits`.

    `limit` is the configured limit after the change (also for `limit_turned_off`, where it
    is the number that stopped being enforced); `usage` and `period` are the current ones.
    """

    state: FinAgentState
    reason: TransitionReason
    limit: int
    usage: int
    period: BillingPeriod
    at: datetime
    transition_id: str


def _require_workspace_id(workspace_id: object) -> str:
    if not isinstance(workspace_id, str) or not workspace_id:
        raise ValueError(f"workspace_id must be a non-empty string, got {workspace_id!r}")
    if _ID_FIELD_SEPARATOR in workspace_id:
        # Would let two different (workspace, period, sequence) triples share an id.
        raise ValueError("workspace_id must not contain the unit separator \\x1f")
    return workspace_id


def _require_metric(metric: object) -> str:
    if not isinstance(metric, str) or not metric or _ID_FIELD_SEPARATOR in metric:
        raise ValueError(f"metric must be a non-empty string without \\x1f, got {metric!r}")
    return metric


def transition_id(workspace_id: str, period_start: datetime, sequence: int, metric: str = FIN_RESOLUTIONS) -> str:
    """The id of the `sequence`-th (1-based) transition of a workspace's limit on `metric` in
    the period that starts at `period_start`. Equal instants in different zones give the same
    id. Fin's ids name no metric; every other metric's name it, so no two metrics share an id."""
    _require_workspace_id(workspace_id)
    start_utc = _require_aware(period_start, "period_start").astimezone(UTC)
    _require_count(sequence, "sequence")
    parts = (workspace_id, start_utc.isoformat(), str(sequence))
    if _require_metric(metric) != FIN_RESOLUTIONS:
        parts = (*parts, metric)
    return str(uuid.uuid5(_TRANSITION_ID_NAMESPACE, _ID_FIELD_SEPARATOR.join(parts)))


def should_notify(transition: Transition) -> bool:
    """Whether to email the billing contacts and notify in-app (CONTRACT 3.3, 5.3, 5.6):
    only when Fin becomes disabled; re-enabling is published but not notified."""
    return transition.state == DISABLED


def next_fin_state(current: FinState, event: FinLimitInput) -> tuple[FinState, Transition | None]:
    """Apply one input to a workspace's Fin state; return the new state and the transition
    to publish, if Fin's state changed.

    Periods are ordered by their start:
    - An input for a later period than the state's rolls over to it first: usage restarts
      from the input's usage (0 for `PeriodStarted`) and the transition count from 0.
    - An input for an earlier period (late usage, a stale timer) does not touch the current
      period's usage or state. A `SettingChanged` for an earlier period still applies its
      setting, because a setting is not scoped to a period: it is judged against the
      current period's usage.

    At most one transition comes out, and it is always the final state, so the latest
    message per workspace on `usage.limits` is Fin's real state. When a roll-over and a
    usage change coincide and Fin ends where it started (disabled in the old period, and
    the new period's usage already reaches the limit), nothing is emitted: publishing
    `enabled` then `disabled` is impossible in one call, and publishing `enabled` alone
    would be wrong. A caller that wants the new period's own `disabled` transition (and its
    notification) feeds `PeriodStarted` at the boundary before the new period's usage.
    """
    if not isinstance(current, FinState):
        raise TypeError(f"current must be a FinState, got {type(current).__name__}")
    if not isinstance(event, (UsageChanged, SettingChanged, PeriodStarted)):
        raise TypeError(f"unknown input to the Fin limit: {type(event).__name__}")

    if current.period is None or event.period.start > current.period.start:
        # Nothing counted yet, or a new period: the input's period becomes the current one.
        # A first period is adopted, not rolled into: Fin was never disabled before it.
        rolled = current.period is not None
        period = event.period
        usage = 0 if isinstance(event, PeriodStarted) else event.usage
        transitions_in_period = 0 if rolled else current.transitions_in_period
    elif event.period.start < current.period.start:
        if not isinstance(event, SettingChanged):
            return current, None
        rolled = False
        period = current.period
        usage = current.usage
        transitions_in_period = current.transitions_in_period
    else:
        if isinstance(event, PeriodStarted):
            # The timer fired again (a replay or a restart) for the period already current;
            # resetting usage to 0 here would re-enable Fin wrongly.
            return current, None
        rolled = False
        # Same start: adopt the input's period, in case a changed contract moved its end.
        period = event.period
        usage = event.usage
        transitions_in_period = current.transitions_in_period

    setting = event.setting if isinstance(event, SettingChanged) else current.setting
    state = fin_state_by_rule(setting, usage)

    if state == current.state:
        unchanged = FinState(current.workspace_id, state, period, usage, setting, transitions_in_period, current.metric)
        return unchanged, None

    # Only a disabled state or a setting change makes a change of state possible, and both
    # leave a setting in place, so a transition always has a limit to report.
    assert setting is not None
    reason = _reason(
        new_state=state,
        setting_caused=fin_state_by_rule(current.setting, usage) != state,
        setting=setting,
        rolled=rolled,
    )
    sequence = transitions_in_period + 1
    new_state = FinState(current.workspace_id, state, period, usage, setting, sequence, current.metric)
    transition = Transition(
        state=state,
        reason=reason,
        limit=setting.limit,
        usage=usage,
        period=period,
        at=event.at,
        transition_id=transition_id(current.workspace_id, period.start, sequence, current.metric),
    )
    return new_state, transition


def _reason(*, new_state: FinAgentState, setting_caused: bool, setting: LimitSetting, rolled: bool) -> TransitionReason:
    """Why Fin's state changed.

    The setting is the cause when the previous setting, applied to the new usage, would
    have kept Fin as it was; otherwise usage (or the new period) is. This names the cause
    correctly when one command changes both, e.g. a setting carrying a higher usage.
    """
    if new_state == DISABLED:
        # A new limit, a re-enabled limit or a lower one all count as lowering what Fin
        # may use; a previous limit that the new usage would have reached is usage's doing.
        return "limit_lowered" if setting_caused else "limit_reached"
    if setting_caused:
        return "limit_raised" if setting.enabled else "limit_turned_off"
    if rolled:
        return "new_period"
    return "usage_dropped"
