"""Cost alerts: the pure decisions of core.cost_alerts, hand-computed in Decimal, and the
per-workspace step applying cost_alert_settings and judging estimated costs event by event."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal as D
from types import MappingProxyType
from typing import Any

import orjson
import pytest
from meterwatch.core.contracts import ContractTerms, Price, WorkspaceProfile
from meterwatch.core.cost_alerts import (
    CostAlertSetting,
    CostAlertState,
    CostScheduled,
    amount_shown,
    amount_text,
    apply_cost_setting,
    cost_alert_id,
    judge_cost,
    reaches_cost_level,
    roll_cost_to,
)
from meterwatch.core.dedupe import FirstSeen
from meterwatch.core.periods import BillingCycle, BillingPeriod
from meterwatch.core.steps.workspace import BatchOutputs, CommandMessage, StepConfig, rows_by_workspace, step
from meterwatch.core.workspace import WorkspaceState
from meterwatch.models.internal import RowPacker
from meterwatch.models.outputs import Kind
from meterwatch.streams.codec import decode_workspace, encode_workspace
from meterwatch.streams.http.usage_view import settings_document

DEC = BillingPeriod(datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
JAN = BillingPeriod(datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC))
NOV = BillingPeriod(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


def _setting(amount: str, enabled: bool = True, currency: str = "USD") -> CostAlertSetting:
    return CostAlertSetting(D(amount), currency, enabled)


def _armed(amount: str, alerted: frozenset[tuple[D, int]] = frozenset()) -> CostAlertState:
    return CostAlertState(DEC, _setting(amount), None, alerted)


@pytest.mark.parametrize(
    ("cost", "level", "amount", "reached"),
    [
        ("20.00", 50, "40", True),  # exactly half
        ("19.99", 50, "40", False),
        ("31.99", 80, "40", False),
        ("32", 80, "40", True),
        ("39.999999999999", 100, "40", False),  # a float would call this 40
        ("40.000000000000", 100, "40", True),
        ("0.005", 50, "0.01", True),
        ("0.004999", 50, "0.01", False),
        ("800000000000000.00", 80, "1000000000000000", True),
    ],
)
def test_a_level_is_reached_exactly(cost: str, level: int, amount: str, reached: bool) -> None:
    assert reaches_cost_level(D(cost), level, D(amount)) is reached


@pytest.mark.parametrize(
    ("before", "after", "alerted", "level", "alerted_after"),
    [
        ("0", "19.99", set(), None, set()),
        ("19.99", "20", set(), 50, {50}),
        ("20", "25", {50}, None, {50}),  # 50 is alerted once per period
        ("25", "32.5", {50}, 80, {50, 80}),
        ("0", "32", set(), 80, {50, 80}),  # a jump alerts only the highest; 50 is used up
        ("10", "41.2", set(), 100, {50, 80, 100}),
        ("41.2", "45", {50, 80, 100}, None, {50, 80, 100}),
        ("45", "30", set(), None, set()),  # a fall never alerts
        ("30", "30", set(), None, set()),
    ],
)
def test_judging_a_cost_change(
    before: str, after: str, alerted: set[int], level: int | None, alerted_after: set[int]
) -> None:
    state = _armed("40", frozenset((D(40), n) for n in alerted))
    judged, reached = judge_cost(state, D(before), D(after), DEC, "USD")
    assert (reached.level if reached else None) == level
    assert judged.alerted == frozenset((D(40), n) for n in alerted_after)
    if reached is not None:
        assert reached.cost == D(after)
        assert reached.amount == D(40)
        assert reached.period == DEC


def test_nothing_is_judged_without_a_setting_when_off_in_another_currency_or_of_an_earlier_period() -> None:
    assert judge_cost(CostAlertState(), D(0), D(100), DEC, "USD")[1] is None
    off = CostAlertState(DEC, _setting("40", enabled=False))
    assert judge_cost(off, D(0), D(100), DEC, "USD")[1] is None
    assert judge_cost(_armed("40"), D(0), D(100), DEC, "EUR")[1] is None
    assert judge_cost(_armed("40"), D(0), D(100), DEC, None)[1] is None
    late, reached = judge_cost(_armed("40"), D(0), D(100), NOV, "USD")
    assert reached is None and late == _armed("40")


def test_a_new_period_starts_every_level_afresh() -> None:
    state = _armed("40", frozenset({(D(40), 50), (D(40), 80), (D(40), 100)}))
    judged, reached = judge_cost(state, D(0), D(21), JAN, "USD")
    assert reached is not None and reached.level == 50 and reached.period == JAN
    assert judged.period == JAN and judged.alerted == {(D(40), 50)}


NEXT = JAN.start


@pytest.mark.parametrize(
    ("in_force", "amount", "enabled", "cost_now", "status", "alerted"),
    [
        (None, "40", True, "10", "applied", set()),
        (None, "40", True, "25", "applied", {50}),  # 50 already reached: never alerts this period
        (None, "40", True, "40", "scheduled", set()),  # lowered to the cost: next period
        (None, "40", True, "55.10", "scheduled", set()),
        ("100", "40", True, "39.99", "applied", {50, 80}),
        ("100", "40", True, "41", "scheduled", set()),  # lowered below: next period
        ("40", "40.00", True, "41", "applied", {50, 80, 100}),  # the same amount: at once
        ("40", "40", False, "41", "applied", set()),  # turning off: at once
        ("40", "500", True, "41", "applied", set()),  # raised: at once
    ],
)
def test_applying_a_cost_setting(
    in_force: str | None, amount: str, enabled: bool, cost_now: str, status: str, alerted: set[int]
) -> None:
    state = CostAlertState(DEC, _setting(in_force) if in_force else None)
    setting = _setting(amount, enabled)
    applied, outcome = apply_cost_setting(state, setting, D(cost_now), DEC, NEXT)
    assert outcome.status == status
    if status == "scheduled":
        assert outcome.effective_from == NEXT
        assert applied.scheduled == CostScheduled(setting, NEXT)
        assert applied.setting == state.setting
        rolled = roll_cost_to(applied, JAN)
        assert rolled.setting == setting and rolled.scheduled is None
    else:
        assert applied.setting == setting and applied.scheduled is None
        assert applied.alerted == frozenset((D(amount), n) for n in alerted)


def test_a_setting_replaces_a_pending_schedule() -> None:
    scheduled, _ = apply_cost_setting(_armed("100"), _setting("10"), D(50), DEC, NEXT)
    raised, outcome = apply_cost_setting(scheduled, _setting("200"), D(50), DEC, NEXT)
    assert outcome.status == "applied" and raised.scheduled is None and raised.setting == _setting("200")


def test_amounts_must_be_decimals_above_zero() -> None:
    with pytest.raises(TypeError):
        CostAlertSetting(40.0, "USD", True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CostAlertSetting(D(0), "USD", True)
    with pytest.raises(TypeError):
        judge_cost(_armed("40"), 0, 1, DEC, "USD")  # type: ignore[arg-type]


def test_the_alert_id_is_deterministic_and_one_per_amount_level_and_period() -> None:
    one = cost_alert_id("ws_1", "total", DEC.start, D("40"), 80)
    assert one == cost_alert_id("ws_1", "total", DEC.start, D("40.00"), 80)
    assert uuid.UUID(one).version == 5
    others = {
        cost_alert_id("ws_1", "total", DEC.start, D("40"), 100),
        cost_alert_id("ws_1", "sms", DEC.start, D("40"), 80),
        cost_alert_id("ws_1", "total", JAN.start, D("40"), 80),
        cost_alert_id("ws_1", "total", DEC.start, D("40.01"), 80),
        cost_alert_id("ws_2", "total", DEC.start, D("40"), 80),
    }
    assert one not in others and len(others) == 5


# ---------------------------------------------------------------------------------------------
# the per-workspace step

WS = "ws_1"
CONFIG = StepConfig(window_ms=24 * 3600 * 1000, mail_enabled=True)
AT = datetime(2026, 12, 4, 12, tzinfo=UTC)
AT_MS = int(AT.timestamp() * 1000)
CONTRACT = ContractTerms(
    "c_1",
    BillingCycle(1, "UTC"),
    "USD",
    MappingProxyType({"sms": Price(D("0.0075")), "phone": Price(D("0.25"), included=10), "seats": Price(D("31"))}),
    (WS,),
)
STATE = WorkspaceState(profile=WorkspaceProfile(CONTRACT, ("billing@example.com",)))


def _command(metric: str, amount: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "cost_alert_settings",
        "command_id": f"cmd-{metric}-{amount}",
        "workspace_id": WS,
        "actor": {"id": "u_1", "billing_permission": True},
        "metric": metric,
        "amount": amount,
        "currency": None,
        "enabled": True,
        **extra,
    }


def _rows(offset: int, events: list[tuple[str, str, int]]) -> Any:
    packer = RowPacker()
    packer.add_origin("usage.events", 0, offset, b"key", AT_MS)
    for event_id, metric, quantity in events:
        packer.add_row(WS, event_id, metric, quantity, AT.isoformat(), None)
    (record,) = packer.records()
    document = orjson.loads(record)
    (message,) = rows_by_workspace(offset, document["rows"], document["origins"], []).values()
    return message


def _run(state: WorkspaceState, messages: list[Any], batched: bool = True) -> tuple[WorkspaceState, BatchOutputs]:
    out = BatchOutputs()
    seen: dict[str, FirstSeen] = {}
    new_state, _ = step(WS, state, messages, seen, CONFIG, out, batched=batched)
    return new_state, out


def _results(out: BatchOutputs) -> list[dict[str, Any]]:
    return out.outputs.of(Kind.COMMAND_RESULT)


def test_an_sms_cost_alert_fires_each_level_once_with_its_causing_event() -> None:
    # 0.0075 USD an SMS; threshold 0.30 USD: 50% at 20 SMS (0.15), 80% at 32 (0.24), 100% at 40.
    messages = [
        CommandMessage(0, _command("sms", "0.30"), AT_MS),
        _rows(1, [("e1", "sms", 19), ("e2", "sms", 1), ("e3", "sms", 11), ("e4", "sms", 1), ("e5", "sms", 20)]),
    ]
    for batched in (True, False):
        state, out = _run(STATE, messages, batched)
        assert [r["status"] for r in _results(out)] == ["applied"]
        alerts = list(out.outputs.of(Kind.ALERT))
        assert [(a["level"], a["cause_event_id"]) for a in alerts] == [(50, "e2"), (80, "e4"), (100, "e5")]
        first = alerts[0]
        assert first["kind"] == "cost" and first["metric"] == "sms" and first["threshold"] is None
        assert first["cost_threshold"] == {"amount": "0.30", "currency": "USD"}
        assert first["estimated_cost"] == {"amount": "0.15", "currency": "USD"}
        assert first["usage"] == 20
        assert first["alert_id"] == cost_alert_id(WS, "sms", DEC.start, D("0.30"), 50)
        assert first["recipients"] == ["billing@example.com"]
        assert len(list(out.outputs.of(Kind.MAIL_REQUEST))) == 3


def test_the_total_counts_every_priced_metric_and_a_jump_alerts_only_its_highest_level() -> None:
    # phone: 10 included, 0.25 each above; sms 0.0075 each. Total threshold 1.00 USD.
    messages = [
        CommandMessage(0, _command("total", "1.00"), AT_MS),
        _rows(1, [("e1", "phone", 12), ("e2", "sms", 40), ("e3", "phone", 1), ("e4", "email", 5)]),
    ]
    state, out = _run(STATE, messages)
    alerts = list(out.outputs.of(Kind.ALERT))
    # e1: 2 phone above included = 0.50 -> 50%; e2: 0.50 + 0.30 = 0.80 -> 80%; e3: 1.05 -> 100%
    assert [(a["level"], a["cause_event_id"], a["estimated_cost"]["amount"]) for a in alerts] == [
        (50, "e1", "0.50"),
        (80, "e2", "0.80"),
        (100, "e3", "1.05"),
    ]
    assert alerts[0]["usage"] is None and alerts[0]["metric"] == "total"
    _, jump = _run(STATE, [CommandMessage(0, _command("total", "1.00"), AT_MS), _rows(1, [("e1", "phone", 15)])])
    assert [a["level"] for a in jump.outputs.of(Kind.ALERT)] == [100]


@pytest.mark.parametrize(
    ("state", "command", "reason"),
    [
        (WorkspaceState(), _command("sms", "10"), "no_contract_currency"),
        (STATE, _command("sms", "10", currency="EUR"), "currency_mismatch"),
        (STATE, _command("whatsapp", "10"), "metric_not_priced"),
    ],
)
def test_a_cost_alert_the_workspace_cannot_judge_is_rejected(
    state: WorkspaceState, command: dict[str, Any], reason: str
) -> None:
    new_state, out = _run(state, [CommandMessage(0, command, AT_MS)])
    (result,) = _results(out)
    assert result["status"] == "rejected" and result["reason"].startswith(f"{reason}: ")
    assert new_state.cost_alerts == state.cost_alerts


def test_a_threshold_lowered_below_the_current_cost_is_scheduled_for_the_next_period() -> None:
    state, _ = _run(STATE, [_rows(0, [("e1", "sms", 100)])])  # 0.75 USD
    state, out = _run(state, [CommandMessage(1, _command("sms", "0.50"), AT_MS), _rows(2, [("e2", "sms", 100)])])
    (result,) = _results(out)
    assert result["status"] == "scheduled" and result["effective_from"] == "2027-01-01T00:00:00Z"
    assert list(out.outputs.of(Kind.ALERT)) == []


def test_cost_alert_state_survives_the_table_codec() -> None:
    state, _ = _run(STATE, [CommandMessage(0, _command("total", "1.00"), AT_MS), _rows(1, [("e1", "phone", 12)])])
    state, _ = _run(state, [CommandMessage(2, _command("phone", "0.10"), AT_MS)])
    assert state.cost_alerts["total"].alerted == {(D("1.00"), 50)}
    decoded = decode_workspace(encode_workspace(state))
    assert decoded == state
    assert decoded is not None and decoded.cost_alerts["phone"].scheduled is not None


def test_the_settings_document_shows_each_cost_alert_with_the_cost_it_is_judged_against() -> None:
    state, _ = _run(STATE, [_rows(0, [("e1", "sms", 100)])])  # 0.75 USD
    messages = [CommandMessage(1, _command("total", "5"), AT_MS), CommandMessage(2, _command("sms", "0.50"), AT_MS)]
    state, _ = _run(state, messages)
    shown = settings_document(WS, state, AT)["cost_alerts"]
    assert shown["total"] == {
        "amount": "5.00",
        "currency": "USD",
        "enabled": True,
        "changed_by": "u_1",
        "changed_at": "2026-12-04T12:00:00Z",
        "scheduled": None,
        "estimated_cost": {"amount": "0.75", "currency": "USD"},
    }
    assert shown["sms"]["amount"] is None and shown["sms"]["scheduled"]["amount"] == "0.50"
    assert shown["sms"]["scheduled"]["effective_from"] == "2027-01-01T00:00:00Z"
    # From the next period on the scheduled amount is the one in force.
    january = settings_document(WS, state, datetime(2027, 1, 2, tzinfo=UTC))["cost_alerts"]
    assert january["sms"]["amount"] == "0.50" and january["sms"]["scheduled"] is None


@pytest.mark.parametrize(
    ("amount", "shown", "text"),
    [
        ("6", "6.00", "6"),
        ("6.00", "6.00", "6"),
        ("0.3", "0.30", "0.3"),
        ("0.005", "0.005", "0.005"),
        ("1E+3", "1000.00", "1000"),
    ],
)
def test_amounts_are_shown_in_cents_unless_finer_and_never_rounded(amount: str, shown: str, text: str) -> None:
    assert amount_shown(D(amount)) == shown
    assert amount_text(D(amount)) == text
