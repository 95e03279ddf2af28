"""The per-contract step, through its recorded outputs: what a contract's owner publishes for
subscriptions, alert settings, members' reports and contacts, and what a failed message leaves
behind."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from meterwatch.core.contract_usage import ContractUsage, WorkspaceReport
from meterwatch.core.periods import BillingPeriod
from meterwatch.core.steps.contract import ContractStep
from meterwatch.models.internal import contacts_message, contract_command_message, report_message
from meterwatch.models.outputs import Kind, RecordedOutputs

PERIOD = BillingPeriod(datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
AT = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
AT_MS = int(AT.timestamp() * 1000)


def subscription(workspace_ids: list[str], command_id: str = "sub-1") -> dict:
    return {
        "type": "subscription",
        "command_id": command_id,
        "contract_id": "acme",
        "workspace_ids": workspace_ids,
        "billing_anchor": "2026-01-01",
        "timezone": "UTC",
        "currency": "EUR",
        "prices": {"sms": {"unit_price": "0.05", "included": 1000}, "seats": {"unit_price": "39", "included": 10}},
        "messages_included": None,
    }


def alert_settings(levels: list[int], enabled: bool = True, metric: str = "sms", command_id: str = "cas-1") -> dict:
    return {
        "type": "contract_alert_settings",
        "command_id": command_id,
        "issued_at": AT.isoformat(),
        "contract_id": "acme",
        "actor": {"id": "admin", "billing_permission": True},
        "metric": metric,
        "levels": levels,
        "enabled": enabled,
    }


def run(messages: list[bytes], state: ContractUsage | None = None, mail: bool = True) -> ContractStep:
    step = ContractStep("acme", state or ContractUsage(), mail, RecordedOutputs())
    for message in messages:
        step.apply(orjson.loads(message), AT_MS, AT)
    step.tell_members(AT_MS)
    return step


def report(workspace_id: str, usage: int, position: int, metric: str = "sms") -> bytes:
    return report_message(WorkspaceReport(workspace_id, metric, PERIOD, usage, position))


def inbox_commands(step: ContractStep) -> list[tuple[str, dict]]:
    return [
        (output.key, orjson.loads(output.record)["command"])
        for output in step.outputs
        if output.kind is Kind.WORKSPACE_MESSAGE
    ]


def test_a_subscription_is_answered_once_and_every_member_gets_the_terms() -> None:
    step = run([contract_command_message(subscription(["ws-a", "ws-b"]))])
    assert step.outputs.of(Kind.COMMAND_RESULT) == [{"command_id": "sub-1", "status": "applied"}]
    terms = [(key, command["type"]) for key, command in inbox_commands(step) if command["type"] == "contract_terms"]
    assert terms == [("ws-a", "contract_terms"), ("ws-b", "contract_terms")]
    assert step.results == {("subscription", "applied"): 1}


def test_a_member_left_out_of_a_new_subscription_is_told_it_left() -> None:
    first = run([contract_command_message(subscription(["ws-a", "ws-b"]))])
    step = run([contract_command_message(subscription(["ws-a"], "sub-2"))], first.state)
    left = [key for key, command in inbox_commands(step) if command["type"] == "contract_left"]
    assert left == ["ws-b"]


@pytest.mark.parametrize(
    ("usages", "levels"),
    [
        ([(400, 399)], []),  # a contract alerts at 80 % and 100 % of what it includes (1,000)
        ([(400, 400)], ["80"]),
        ([(600, 500)], ["100"]),  # a jump past both levels alerts the highest only
        ([(300, 300), (500, 300)], ["80"]),
        ([(400, 400), (600, 400)], ["80", "100"]),
    ],
)
def test_contract_alerts_are_judged_on_the_sum_of_its_members(usages: list[tuple[int, int]], levels: list[str]) -> None:
    subscribed = run(
        [
            contract_command_message(subscription(["ws-a", "ws-b"])),
            contacts_message("ws-a", ("billing@a.example",)),
        ]
    ).state
    messages = []
    for position, (a, b) in enumerate(usages, start=1):
        messages += [report("ws-a", a, position), report("ws-b", b, position)]
    step = run(messages, subscribed)
    alerts = step.outputs.of(Kind.ALERT)
    assert [str(alert["level"]) for alert in alerts] == levels
    assert all(alert["scope"] == "contract" and alert["recipients"] == ["billing@a.example"] for alert in alerts)
    assert len(step.outputs.of(Kind.MAIL_REQUEST)) == len(levels)
    others = {key: command["usage"] for key, command in inbox_commands(step) if command["type"] == "contract_others"}
    a, b = usages[-1]
    assert others == {"ws-a": {"sms": b}, "ws-b": {"sms": a}}


def test_no_mail_request_without_mail() -> None:
    subscribed = run(
        [contract_command_message(subscription(["ws-a"])), contacts_message("ws-a", ("b@a.example",))]
    ).state
    step = run([report("ws-a", 900, 1)], subscribed, mail=False)
    assert len(step.outputs.of(Kind.ALERT)) == 1
    assert step.outputs.of(Kind.MAIL_REQUEST) == []


def test_a_replayed_report_changes_nothing() -> None:
    subscribed = run([contract_command_message(subscription(["ws-a"]))]).state
    once = run([report("ws-a", 600, 7)], subscribed)
    again = run([report("ws-a", 600, 7)], once.state)
    assert again.state == once.state
    assert len(again.outputs) == 0


def test_a_failed_message_leaves_the_step_as_it_was() -> None:
    subscribed = run([contract_command_message(subscription(["ws-a"]))]).state
    step = ContractStep("acme", subscribed, True, RecordedOutputs())
    step.apply(orjson.loads(report("ws-a", 900, 1)), AT_MS, AT)
    mark = step.mark()
    broken = subscription(["ws-a", "ws-b"])
    del broken["command_id"]  # fails after ws-b was told its terms and the membership changed
    with pytest.raises(KeyError):
        step.apply(orjson.loads(contract_command_message(broken)), AT_MS, AT)
    assert len(step.outputs) > mark[2]  # the failed message had recorded ws-b's terms
    step.restore(mark)
    assert step.mark() == mark
    assert step.state.workspace_ids == ("ws-a",)
    assert [output.kind for output in step.outputs] == [Kind.ALERT]


def signed_run(messages: list[bytes], state: ContractUsage | None = None) -> ContractStep:
    step = ContractStep("acme", state or ContractUsage(), True, RecordedOutputs(), command_max_age_ms=300_000)
    for message in messages:
        step.apply(orjson.loads(message), AT_MS, AT)
    return step


def issued(command: dict, at: datetime = AT) -> dict:
    return {**command, "issued_at": at.isoformat()}


def test_with_signed_commands_a_subscription_applies_once_and_its_copy_is_refused() -> None:
    first = issued(subscription(["ws-a"]))
    step = signed_run([contract_command_message(first)])
    again = signed_run([contract_command_message(issued(subscription(["ws-a", "ws-b"])))], step.state)
    assert again.outputs.of(Kind.COMMAND_RESULT) == [
        {
            "command_id": "sub-1",
            "status": "rejected",
            "reason": "replayed: a command with this command_id was applied already",
        }
    ]
    assert again.state == step.state and again.results == {("subscription", "rejected"): 1}
    assert inbox_commands(again) == []  # no member told anything


def test_without_signed_commands_a_copy_is_applied_again_as_before() -> None:
    first = run([contract_command_message(issued(subscription(["ws-a"])))])
    again = run([contract_command_message(issued(subscription(["ws-a"])))], first.state)
    assert again.outputs.of(Kind.COMMAND_RESULT) == [{"command_id": "sub-1", "status": "applied"}]
    assert again.state.recent_commands == {}


@pytest.mark.parametrize(
    ("settings", "usages", "levels"),
    [
        ([], [500, 850, 1000], [80, 100]),  # without a setting: 80 % and 100 %
        ([alert_settings([50])], [499, 500, 850, 1000], [50]),
        ([alert_settings([50, 80, 100])], [500, 850, 1000], [50, 80, 100]),
        ([alert_settings([100])], [850, 1200], [100]),
        ([alert_settings([50, 80, 100], enabled=False)], [500, 850, 1000], []),
        ([alert_settings([80], enabled=False), alert_settings([80], command_id="cas-2")], [900], [80]),
    ],
)
def test_a_contract_alerts_only_at_the_levels_it_chose(
    settings: list[dict], usages: list[int], levels: list[int]
) -> None:
    subscribed = run([contract_command_message(subscription(["ws-a"]))]).state
    configured = run([contract_command_message(command) for command in settings], subscribed)
    assert configured.outputs.of(Kind.COMMAND_RESULT) == [
        {"command_id": command["command_id"], "status": "applied"} for command in settings
    ]
    step = run([report("ws-a", usage, position) for position, usage in enumerate(usages, 1)], configured.state)
    alerts = step.outputs.of(Kind.ALERT)
    assert [alert["level"] for alert in alerts] == levels
    assert all(alert["scope"] == "contract" and alert["threshold"] == 1000 for alert in alerts)


def test_seats_past_their_included_quantity_raise_no_contract_alert() -> None:
    subscribed = run([contract_command_message(subscription(["ws-a", "ws-b"]))]).state
    step = run([report("ws-a", 9, 1, "seats"), report("ws-b", 6, 1, "seats")], subscribed)
    assert step.state.latest().total("seats") == 15
    assert step.outputs.of(Kind.ALERT) == []


def test_a_setting_is_kept_in_the_contracts_state_with_who_set_it_and_when() -> None:
    step = run([contract_command_message(alert_settings([50, 100]))])  # before any subscription
    setting = step.state.alerts["sms"].setting
    assert setting is not None
    assert (setting.levels, setting.enabled, setting.changed_by, setting.changed_at) == ((50, 100), True, "admin", AT)
    assert step.results == {("contract_alert_settings", "applied"): 1}
    subscribed = run([contract_command_message(subscription(["ws-a"]))], step.state)
    assert [alert["level"] for alert in run([report("ws-a", 600, 1)], subscribed.state).outputs.of(Kind.ALERT)] == [50]


def test_levels_usage_has_already_reached_when_a_setting_applies_do_not_alert() -> None:
    subscribed = run([contract_command_message(subscription(["ws-a"])), report("ws-a", 600, 1)]).state
    step = run(
        [contract_command_message(alert_settings([50, 80])), report("ws-a", 700, 2), report("ws-a", 800, 3)], subscribed
    )
    assert step.outputs.of(Kind.COMMAND_RESULT) == [{"command_id": "cas-1", "status": "applied"}]
    assert [alert["level"] for alert in step.outputs.of(Kind.ALERT)] == [80]


def test_with_signed_commands_a_contract_alert_setting_applies_once() -> None:
    subscribed = signed_run([contract_command_message(issued(subscription(["ws-a"])))]).state
    first = signed_run([contract_command_message(alert_settings([50]))], subscribed)
    again = signed_run([contract_command_message(alert_settings([80, 100]))], first.state)
    assert [r["status"] for r in again.outputs.of(Kind.COMMAND_RESULT)] == ["rejected"]
    assert again.results == {("contract_alert_settings", "rejected"): 1}
    assert again.state == first.state
