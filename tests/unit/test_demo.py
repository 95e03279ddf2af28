"""The demo's usage: the backfilled period and the live story, as pure functions of time and chance."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterwatch.models.usage_event import UsageEvent

from meterwatch.demo import (
    CONTRACT_WORKSPACES,
    COST_ALERT_AMOUNT,
    COST_ALERT_USAGE,
    COST_METRIC,
    COST_WORKSPACE,
    FIN_LIMIT,
    FIN_WORKSPACE,
    INCLUDED_MESSAGES,
    SMS_THRESHOLD,
    SMS_WORKSPACE,
    WORKSPACES,
    Backfill,
    LiveUsage,
    backfill,
    cycle_of,
)

NOW = datetime(2026, 12, 4, 16, 30, tzinfo=UTC)
instants = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC))


def counted(events: list[dict]) -> Counter[tuple[str, str]]:
    """What meterwatch counts for the additive metrics: each event_id once."""
    seen: set[str] = set()
    totals: Counter[tuple[str, str]] = Counter()
    for event in events:
        if event["event_id"] not in seen and event["metric"] not in ("seats", "fin_resolutions"):
            seen.add(event["event_id"])
            totals[event["workspace_id"], event["metric"]] += event["quantity"]
    return totals


@given(now=instants, seed=st.integers(0, 2**32))
@settings(max_examples=60, deadline=None)
def test_every_backfilled_event_is_valid_and_falls_in_its_workspaces_current_period(now: datetime, seed: int) -> None:
    filled = backfill(now, random.Random(seed))
    for event in filled.events:
        UsageEvent.model_validate(event)  # the contract's schema
        occurred = datetime.fromisoformat(event["occurred_at"])
        assert cycle_of(event["workspace_id"]).period_containing(now).contains(occurred), event
        assert occurred <= now, event
    assert counted(filled.events) == +filled.totals  # the duplicate counted once, the correction taken off


@given(now=instants, seed=st.integers(0, 2**32))
@settings(max_examples=60, deadline=None)
def test_usage_never_goes_below_zero_in_the_order_it_is_published(now: datetime, seed: int) -> None:
    running: Counter[tuple[str, str]] = Counter()
    for event in backfill(now, random.Random(seed)).events:
        if event["metric"] not in ("seats", "fin_resolutions"):
            running[event["workspace_id"], event["metric"]] += event["quantity"]
            assert running[event["workspace_id"], event["metric"]] >= 0, event


def test_the_backfill_leaves_each_story_just_short_of_its_turn() -> None:
    filled = backfill(NOW, random.Random(7))
    contract_messages = sum(filled.totals[w, "messages_sent"] for w in CONTRACT_WORKSPACES)
    assert 0.7 * INCLUDED_MESSAGES <= contract_messages < 0.8 * INCLUDED_MESSAGES
    assert 0.5 * SMS_THRESHOLD <= filled.totals[SMS_WORKSPACE, "sms"] < 0.8 * SMS_THRESHOLD
    # The WhatsApp cost alert: past 50% of its amount, short of 80%.
    assert 0.5 * COST_ALERT_USAGE <= filled.totals[COST_WORKSPACE, COST_METRIC] < 0.8 * COST_ALERT_USAGE
    assert FIN_LIMIT - 10 <= len(filled.conversations[FIN_WORKSPACE]) < FIN_LIMIT
    resolutions = [e for e in filled.events if e["workspace_id"] == FIN_WORKSPACE and e["metric"] == "fin_resolutions"]
    assert (
        len({e["conversation_id"] for e in resolutions}) == len(resolutions) == len(filled.conversations[FIN_WORKSPACE])
    )


def test_working_days_carry_more_usage_than_weekends_and_nights_are_quiet() -> None:
    filled = backfill(NOW, random.Random(7))
    by_day: Counter[str] = Counter()
    by_hour: Counter[int] = Counter()
    for event in filled.events:
        if event["workspace_id"] == "ws_acme_eu" and event["metric"] == "messages_sent":
            local = datetime.fromisoformat(event["occurred_at"]).astimezone(ZoneInfo("Europe/Dublin"))
            by_day["weekend" if local.weekday() >= 5 else "weekday"] += event["quantity"]
            by_hour[local.hour] += event["quantity"]
    weekdays, weekend_days = 14, 6  # 15 November to 3 December 2026, today aside
    assert by_day["weekday"] / weekdays > 2 * by_day["weekend"] / weekend_days
    assert sum(by_hour[h] for h in range(0, 6)) == 0


def test_seats_change_once_halfway_and_are_reported_each_day() -> None:
    filled = backfill(NOW, random.Random(7))
    seats = [e["quantity"] for e in filled.events if e["workspace_id"] == "ws_acme_eu" and e["metric"] == "seats"]
    assert len(seats) == 20  # 15 November to 4 December
    assert seats == [8] * 10 + [11] * 10


def story(filled: Backfill, ticks: int) -> tuple[LiveUsage, list[tuple[int, dict, str]]]:
    live = LiveUsage(filled, random.Random(3))
    told = []
    for tick in range(ticks):
        event, note = live.next(NOW + timedelta(seconds=tick / 20))
        if note is not None:
            told.append((tick, event, note))
    return live, told


def test_the_live_story_disables_fin_at_its_limit_then_a_retraction_enables_it() -> None:
    filled = backfill(NOW, random.Random(7))
    live, told = story(filled, 1500)
    fin = [event for _, event, _ in told if event["metric"] == "fin_resolutions"]
    resolved = len(filled.conversations[FIN_WORKSPACE])
    assert [e["quantity"] for e in fin] == [1] * (FIN_LIMIT - resolved) + [-1]
    assert fin[-1]["conversation_id"] == fin[-2]["conversation_id"]
    assert len(live.conversations[FIN_WORKSPACE]) == FIN_LIMIT - 1
    late = [event for _, event, note in told if note.startswith("a late event")]
    assert len(late) == 1 and datetime.fromisoformat(late[0]["occurred_at"]) < NOW - timedelta(hours=12)


@pytest.mark.parametrize("seed", range(20))
def test_by_event_900_the_sms_alert_and_the_contract_have_passed_80_percent(seed: int) -> None:
    filled = backfill(NOW, random.Random(seed))
    live = LiveUsage(filled, random.Random(seed))
    events = [live.next(NOW)[0] for _ in range(901)]
    totals = counted([*filled.events, *events])
    assert totals[SMS_WORKSPACE, "sms"] >= 0.8 * SMS_THRESHOLD
    assert sum(totals[w, "messages_sent"] for w in CONTRACT_WORKSPACES) >= 0.8 * INCLUDED_MESSAGES
    assert all(event["workspace_id"] in WORKSPACES for event in events)


@pytest.mark.parametrize("seed", range(20))
def test_by_event_750_the_whatsapp_cost_has_passed_its_cost_alert(seed: int) -> None:
    filled = backfill(NOW, random.Random(seed))
    live = LiveUsage(filled, random.Random(seed))
    events = [live.next(NOW)[0] for _ in range(751)]
    whatsapp = counted([*filled.events, *events])[COST_WORKSPACE, COST_METRIC]
    # 0.03 USD a WhatsApp message and nothing included (the demo's prices).
    assert whatsapp * Decimal("0.03") >= Decimal(COST_ALERT_AMOUNT)
    assert COST_ALERT_USAGE * Decimal("0.03") == Decimal(COST_ALERT_AMOUNT)
