"""Applying a workspace's commands, in inbox order, to its profile, and a contract's news of the
other members' usage to its state."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from ...models.internal import CONTRACT_LEFT, CONTRACT_TERMS
from ...models.outputs import command_result
from ..command_replay import RecentCommands, admit
from ..contracts import ContractTerms, Price, WorkspaceProfile
from ..periods import BillingCycle, BillingPeriod
from ..rejections import RejectCode
from ..workspace import ContractOthers, WorkspaceState

# Commands from usage.control (CONTRACT 3.2), as opposed to the internal ones workers send.
SENT_BY_PEOPLE = frozenset({"alert_settings", "limit_settings", "billing_contacts", "cost_alert_settings"})


def admit_once(recent: RecentCommands, command: dict[str, Any], max_age_ms: int) -> RecentCommands | None:
    """``recent`` with ``command`` remembered, or None if it was applied already (a replay)."""
    issued_ms = int(datetime.fromisoformat(command["issued_at"]).timestamp() * 1000)
    return admit(recent, command["command_id"], issued_ms, max_age_ms)


def replayed(command: dict[str, Any]) -> dict[str, Any]:
    return command_result(
        command["command_id"], "rejected", reason="replayed: a command with this command_id was applied already"
    )


def apply_to_profile(
    profile: WorkspaceProfile, workspace_id: str, command: dict[str, Any], max_contacts: int | None = None
) -> tuple[WorkspaceProfile, dict[str, Any] | None]:
    """``profile`` with ``command`` applied, and the command's answer (None for an internal one).
    A ``billing_contacts`` command with more than ``max_contacts`` addresses (each counted once)
    is rejected and changes nothing."""
    kind = command["type"]
    if kind == CONTRACT_TERMS:
        return WorkspaceProfile(contract=contract_terms(command), billing_contacts=profile.billing_contacts), None
    if kind == CONTRACT_LEFT:
        if profile.contract is not None and profile.contract.contract_id == command["contract_id"]:
            return WorkspaceProfile(contract=None, billing_contacts=profile.billing_contacts), None
        return profile, None
    if kind == "billing_contacts":
        # Each address once, in the order given.
        contacts = tuple(dict.fromkeys(command["emails"]))
        if max_contacts is not None and len(contacts) > max_contacts:
            return profile, command_result(
                command["command_id"],
                "rejected",
                reason=f"{RejectCode.TOO_MANY_CONTACTS}: {len(contacts)} billing contacts, at most {max_contacts}",
            )
        return WorkspaceProfile(contract=profile.contract, billing_contacts=contacts), command_result(
            command["command_id"], "applied"
        )
    return profile, command_result(
        command["command_id"], "rejected", reason=f"unsupported_command: {kind} is not handled by this version"
    )


def contract_terms(command: dict[str, Any]) -> ContractTerms:
    anchor_day = int(command["billing_anchor"][8:10])
    return ContractTerms(
        contract_id=command["contract_id"],
        cycle=BillingCycle(anchor_day, command["timezone"]),
        currency=command["currency"],
        prices=MappingProxyType(
            {
                metric: Price(Decimal(str(term["unit_price"])), term.get("included"))
                for metric, term in command.get("prices", {}).items()
            }
        ),
        workspace_ids=tuple(command["workspace_ids"]),
        messages_included=command.get("messages_included"),
    )


def take_contract_others(state: WorkspaceState, command: dict[str, Any]) -> WorkspaceState:
    """A member's copy of the others' usage (only from its current contract)."""
    contract = state.profile.contract
    if contract is None or contract.contract_id != command["contract_id"]:
        return state
    start, end = command["period"]
    period = BillingPeriod(datetime.fromisoformat(start), datetime.fromisoformat(end))
    return replace(state, contract_others=ContractOthers(period, MappingProxyType(dict(command["usage"]))))
