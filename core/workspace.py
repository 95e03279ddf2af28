"""Everything meterwatch keeps about one workspace, as one value.

One value, written once per batch, so that the replay guard (``usage.applied_through``) always
describes exactly the counts, settings and states it was written with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .alerts import AlertState
from .command_replay import NO_COMMANDS, RecentCommands
from .contracts import WorkspaceProfile
from .cost_alerts import CostAlertState
from .fin_limit import FinState
from .mail_cap import MailHour
from .metering import WorkspaceUsage
from .periods import BillingPeriod


@dataclass(frozen=True, slots=True)
class ContractOthers:
    """The other workspaces' usage of the contract, as last told by the contract's owner; it
    prices this workspace's usage above what the contract includes."""

    period: BillingPeriod
    usage: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class WorkspaceState:
    usage: WorkspaceUsage = field(default_factory=WorkspaceUsage)
    profile: WorkspaceProfile = field(default_factory=WorkspaceProfile)
    alerts: Mapping[str, AlertState] = field(default_factory=lambda: MappingProxyType({}))
    contract_others: ContractOthers | None = None
    fin: FinState | None = None
    # The hard limits on metrics other than Fin's, by metric: only metrics a limit was ever set on.
    limits: Mapping[str, FinState] = field(default_factory=lambda: MappingProxyType({}))
    # Signed commands applied lately (core/command_replay.py); empty unless commands are signed.
    recent_commands: RecentCommands = field(default_factory=lambda: NO_COMMANDS)
    # The mails asked for in the latest hour (core/mail_cap.py); None until one is, or uncapped.
    mail_hour: MailHour | None = None
    # Cost alerts (core/cost_alerts.py), by metric or "total": only those a setting was ever sent for.
    cost_alerts: Mapping[str, CostAlertState] = field(default_factory=lambda: MappingProxyType({}))

    def others_usage(self, metric: str, period: BillingPeriod) -> int:
        others = self.contract_others
        if others is None or others.period != period:
            return 0
        return others.usage.get(metric, 0)
