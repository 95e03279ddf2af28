"""One contract's messages of a batch, judged in order: a pure, synchronous step.

Subscriptions (who is a member, on what terms), the contract's alert settings, members' usage
reports and their billing contacts change the contract's state; a change of its sums is judged
against the contract's included amounts and alert settings, and once the batch is judged every
member hears what the others have used.
Outputs go to ``RecordedOutputs``; the agent (``streams/pipeline/contracts.py``) reads and writes
the table, dead-letters a message whose step failed, and hands the recording to the sinks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ...models.internal import (
    CONTACTS,
    CONTRACT_ALERT_SETTINGS,
    SUBSCRIPTION,
    ContractMessage,
    command_message,
    contract_left_command,
    contract_others_command,
    contract_terms_command,
    read_report,
)
from ...models.outputs import ALERT, RecordedOutputs, alert_record, command_result
from ..alerts import (
    CONTRACT_SCOPE,
    ContractAlertSetting,
    ContractAlertState,
    LevelReached,
    apply_contract_setting,
    judge_contract_usage,
)
from ..contract_usage import ContractTotalChange, ContractUsage, change_membership, record_report
from ..contracts import ContractTerms
from ..costs import estimated_cost, money
from .commands import admit_once, contract_terms, replayed


class ContractStep:
    """``apply`` each message in order (with its Kafka time, in milliseconds and as a datetime),
    then ``tell_members``.

    ``alerts`` (per level) and ``results`` (per command type and status) count what happened, for
    the metrics. A message whose ``apply`` raises leaves the step as it was before it
    (``mark``/``restore``)."""

    def __init__(
        self,
        contract_id: str,
        state: ContractUsage,
        mail_enabled: bool,
        outputs: RecordedOutputs,
        command_max_age_ms: int | None = None,
    ) -> None:
        self.contract_id = contract_id
        self.state = state
        self.mail_enabled = mail_enabled
        # METERWATCH_COMMAND_MAX_AGE when commands are signed (each then applied once), else None
        self.command_max_age_ms = command_max_age_ms
        self.outputs = outputs
        self.sums_changed = False
        self.alerts: Counter[str] = Counter()
        self.results: Counter[tuple[str, str]] = Counter()

    def mark(self) -> tuple[Any, ...]:
        return (self.state, self.sums_changed, len(self.outputs), self.alerts.copy(), self.results.copy())

    def restore(self, mark: tuple[Any, ...]) -> None:
        self.state, self.sums_changed, outputs, self.alerts, self.results = mark
        self.outputs.truncate(outputs)

    def apply(self, message: ContractMessage, at_ms: int, now: datetime) -> None:
        kind = message["kind"]
        if kind == SUBSCRIPTION:
            self.sums_changed = self._subscribe(message["command"], at_ms) or self.sums_changed
        elif kind == CONTRACT_ALERT_SETTINGS:
            self._set_alerts(message["command"], now)
        elif kind == CONTACTS:
            contacts = {**self.state.contacts, message["workspace_id"]: tuple(message["emails"])}
            self.state = replace(self.state, contacts=MappingProxyType(contacts))
        else:
            self.state, change = record_report(self.state, read_report(message), now)  # type: ignore[arg-type]
            if change.after != change.before:
                self.sums_changed = True
                self._judge(change, now)

    def tell_members(self, at_ms: int) -> None:
        """Each member's copy of what the others have used, if the sums changed."""
        latest = self.state.latest()
        if not self.sums_changed or latest is None:
            return
        metrics = set(latest.reports)
        for workspace_id in self.state.workspace_ids:
            others = {m: latest.total(m) - latest.usage_of(m, workspace_id) for m in metrics}
            message = contract_others_command(self.contract_id, latest.period, others)
            self.outputs.workspace_message(workspace_id, command_message(at_ms, message))

    def _admit(self, command: dict[str, Any]) -> bool:
        """Whether to apply a command; a signed one applied already is answered as a replay."""
        if self.command_max_age_ms is None:
            return True
        recent = admit_once(self.state.recent_commands, command, self.command_max_age_ms)
        if recent is None:
            self._answer(command, replayed(command))
            return False
        self.state = replace(self.state, recent_commands=recent)
        return True

    def _answer(self, command: dict[str, Any], result: dict[str, Any]) -> None:
        self.outputs.command_result(command["contract_id"], result)
        self.results[command["type"], result["status"]] += 1

    def _subscribe(self, command: dict[str, Any], at_ms: int) -> bool:
        """Apply a subscription; False if it is a signed one applied already."""
        if not self._admit(command):
            return False
        state, membership = change_membership(self.state, tuple(command["workspace_ids"]))
        self.state = replace(state, terms=contract_terms(command))
        terms = contract_terms_command(command)
        for workspace_id in membership.joined:
            self.outputs.workspace_message(workspace_id, command_message(at_ms, terms))
        left = contract_left_command(command["contract_id"], command["command_id"])
        for workspace_id in membership.left:
            self.outputs.workspace_message(workspace_id, command_message(at_ms, left))
        self._answer(command, command_result(command["command_id"], "applied"))
        return True

    def _set_alerts(self, command: dict[str, Any], now: datetime) -> None:
        """Apply a ``contract_alert_settings`` command: always at once (``apply_contract_setting``)."""
        if not self._admit(command):
            return
        metric = command["metric"]
        setting = ContractAlertSetting(
            tuple(command["levels"]), command["enabled"], changed_by=command["actor"]["id"], changed_at=now
        )
        terms = self.state.terms
        current = self.state.alerts.get(metric, ContractAlertState())
        period = None
        if terms is not None:
            period = terms.cycle.period_containing(now)
            if current.period is not None and current.period.start > period.start:
                period = current.period  # a report up to 5 minutes ahead moved the contract on
        usages = self.state.for_period(period) if period is not None else None
        usage_now = usages.total(metric) if usages is not None else 0
        included = terms.included(metric) if terms is not None else None
        judged = apply_contract_setting(current, metric, setting, usage_now, included, period)
        self._set_alert_state(metric, judged)
        self._answer(command, command_result(command["command_id"], "applied"))

    def _set_alert_state(self, metric: str, judged: ContractAlertState) -> None:
        self.state = replace(self.state, alerts=MappingProxyType({**self.state.alerts, metric: judged}))

    def _judge(self, change: ContractTotalChange, now: datetime) -> None:
        terms = self.state.terms
        included = terms.included(change.metric) if terms else None
        current = self.state.alerts.get(change.metric, ContractAlertState())
        judged, reached = judge_contract_usage(
            current, change.metric, change.before, change.after, included, change.period
        )
        self._set_alert_state(change.metric, judged)
        if reached is None or terms is None:
            return
        record = contract_alert_record(
            self.contract_id, terms, change.metric, reached, list(self.state.recipients()), now
        )
        self.alerts[str(reached.level)] += 1
        self.outputs.alert(self.contract_id, record)
        if self.mail_enabled and record["recipients"]:
            self.outputs.mail_request(ALERT, record, record["recipients"])


def contract_alert_record(
    contract_id: str, terms: ContractTerms, metric: str, reached: LevelReached, recipients: list[str], at: datetime
) -> dict[str, Any]:
    price = terms.prices.get(metric)
    cost = None
    if price is not None:
        amount = estimated_cost(reached.usage, price.unit_price, terms.included(metric))
        cost = {"amount": money(amount), "currency": terms.currency}
    return alert_record(
        CONTRACT_SCOPE,
        contract_id,
        metric,
        reached,
        workspace_id=None,
        contract_id=contract_id,
        estimated_cost=cost,
        recipients=recipients,
        triggered_at=at,
        cause_event_id=None,
    )
