"""Contract terms as a workspace sees them: its billing cycle, currency and prices."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

from .periods import CALENDAR_MONTH_UTC, BillingCycle


@dataclass(frozen=True, slots=True)
class Price:
    unit_price: Decimal
    # The contracted quantity shared by all the contract's workspaces; None is pay-as-you-go.
    included: int | None = None


@dataclass(frozen=True, slots=True)
class ContractTerms:
    contract_id: str
    cycle: BillingCycle
    currency: str
    prices: Mapping[str, Price] = field(default_factory=lambda: MappingProxyType({}))
    workspace_ids: tuple[str, ...] = ()
    messages_included: int | None = None

    def included(self, metric: str) -> int | None:
        price = self.prices.get(metric)
        included = price.included if price else None
        if metric == "messages_sent" and included is None:
            # Proactive Support Plus: the base fee covers this many messages.
            return self.messages_included
        return included


@dataclass(frozen=True, slots=True)
class WorkspaceProfile:
    """What a workspace has been told by commands: its contract and billing contacts."""

    contract: ContractTerms | None = None
    billing_contacts: tuple[str, ...] = ()

    @property
    def cycle(self) -> BillingCycle:
        return self.contract.cycle if self.contract else CALENDAR_MONTH_UTC
