"""A contract's usage: the sum over its workspaces of each one's latest reported usage.

Workspaces report absolute usage (not deltas) with the position that produced it, so a report
delivered twice, or an older one arriving late, changes nothing: the newest position wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType

from .alerts import ContractAlertState
from .command_replay import NO_COMMANDS, RecentCommands
from .contracts import ContractTerms
from .periods import LATE_EVENT_GRACE, BillingPeriod


@dataclass(frozen=True, slots=True)
class WorkspaceReport:
    workspace_id: str
    metric: str
    period: BillingPeriod
    usage: int
    position: int


@dataclass(frozen=True, slots=True)
class ContractPeriod:
    period: BillingPeriod
    # metric -> workspace_id -> (usage, position)
    reports: Mapping[str, Mapping[str, tuple[int, int]]] = field(default_factory=lambda: MappingProxyType({}))

    def total(self, metric: str) -> int:
        return sum(usage for usage, _ in self.reports.get(metric, {}).values())

    def usage_of(self, metric: str, workspace_id: str) -> int:
        return self.reports.get(metric, {}).get(workspace_id, (0, -1))[0]


@dataclass(frozen=True, slots=True)
class ContractUsage:
    periods: tuple[ContractPeriod, ...] = ()
    # The workspaces of the latest subscription; their reports are the ones summed.
    workspace_ids: tuple[str, ...] = ()
    terms: ContractTerms | None = None
    # Each member's billing contacts, as it last reported them: contract alerts go to all.
    contacts: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    alerts: Mapping[str, ContractAlertState] = field(default_factory=lambda: MappingProxyType({}))
    # Signed subscriptions applied lately (core/command_replay.py); empty unless commands are signed.
    recent_commands: RecentCommands = field(default_factory=lambda: NO_COMMANDS)

    def recipients(self) -> tuple[str, ...]:
        """Every member's contacts, each address once (compared without case)."""
        seen: dict[str, str] = {}
        for workspace_id in self.workspace_ids:
            for address in self.contacts.get(workspace_id, ()):
                seen.setdefault(address.lower(), address)
        return tuple(seen.values())

    def latest(self) -> ContractPeriod | None:
        return self.periods[-1] if self.periods else None

    def for_period(self, period: BillingPeriod) -> ContractPeriod | None:
        for candidate in self.periods:
            if candidate.period == period:
                return candidate
        return None


@dataclass(frozen=True, slots=True)
class ContractTotalChange:
    metric: str
    period: BillingPeriod
    before: int
    after: int


def counts_towards(state: ContractUsage, report: WorkspaceReport) -> bool:
    """Whether a report is summed: it must come from a member, for one of the contract's periods.

    A workspace that has left may still report before it hears of it. A workspace that counted
    usage before it heard of the contract counted it in calendar months (or an earlier
    contract's cycle), and reports those periods when it joins; summed, such a period would be
    a second "current" period for the contract, and its levels would alert a second time.
    """
    if state.terms is None or report.workspace_id not in state.workspace_ids:
        return False
    return state.terms.cycle.has_period(report.period)


def record_report(
    state: ContractUsage, report: WorkspaceReport, now: datetime
) -> tuple[ContractUsage, ContractTotalChange]:
    current = state.for_period(report.period) or ContractPeriod(report.period)
    before = current.total(report.metric)
    by_workspace = dict(current.reports.get(report.metric, {}))
    _, known_position = by_workspace.get(report.workspace_id, (0, -1))
    if not counts_towards(state, report) or report.position <= known_position:
        return state, ContractTotalChange(report.metric, report.period, before, before)
    by_workspace[report.workspace_id] = (report.usage, report.position)
    current = replace(
        current, reports=MappingProxyType({**current.reports, report.metric: MappingProxyType(by_workspace)})
    )
    after = current.total(report.metric)
    others = [p for p in state.periods if p.period != report.period]
    newest = max([p.period.start for p in others] + [report.period.start])
    kept = [p for p in [*others, current] if p.period.start == newest or p.period.end + LATE_EVENT_GRACE >= now]
    periods = tuple(sorted(kept, key=lambda p: p.period.start))
    return replace(state, periods=periods), ContractTotalChange(report.metric, report.period, before, after)


@dataclass(frozen=True, slots=True)
class MembershipChange:
    joined: tuple[str, ...]
    left: tuple[str, ...]


def change_membership(state: ContractUsage, workspace_ids: tuple[str, ...]) -> tuple[ContractUsage, MembershipChange]:
    """A new subscription: who joined and who left; those who left no longer count."""
    wanted = tuple(dict.fromkeys(workspace_ids))
    left = tuple(ws for ws in state.workspace_ids if ws not in wanted)
    periods = tuple(
        replace(
            p,
            reports=MappingProxyType(
                {
                    metric: MappingProxyType({ws: entry for ws, entry in by_ws.items() if ws not in left})
                    for metric, by_ws in p.reports.items()
                }
            ),
        )
        for p in state.periods
    )
    contacts = MappingProxyType({ws: c for ws, c in state.contacts.items() if ws not in left})
    return replace(state, periods=periods, workspace_ids=wanted, contacts=contacts), MembershipChange(
        joined=wanted, left=left
    )
