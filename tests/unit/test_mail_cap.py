"""The caps that keep mail from being abused: billing contacts per workspace, and mails per
workspace per hour of UTC (held back, never dropped silently)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from meterwatch.config.settings import ConfigError, load_settings
from meterwatch.core.mail_cap import MailHour, hour_of, take_mails
from meterwatch.core.steps.workspace import BatchOutputs, CommandMessage, StepConfig, step
from meterwatch.core.workspace import WorkspaceState
from meterwatch.models.outputs import Kind

from tests.unit.test_workspace_step import _messages, _run_both

NOON = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
HOUR = hour_of(NOON)
WORKSPACE = "ws_cap"


@pytest.mark.parametrize(
    ("window", "mails", "at", "cap", "after", "fits"),
    [
        (None, 2, NOON, 5, MailHour(HOUR, 2), True),
        (MailHour(HOUR, 3), 2, NOON + timedelta(minutes=59), 5, MailHour(HOUR, 5), True),
        (MailHour(HOUR, 4), 2, NOON + timedelta(minutes=30), 5, MailHour(HOUR, 4), False),  # held back, not used up
        (MailHour(HOUR, 5), 1, NOON + timedelta(hours=1), 5, MailHour(HOUR + 1, 1), True),  # the next hour
        (MailHour(HOUR, 5), 1, NOON - timedelta(minutes=1), 5, MailHour(HOUR, 5), False),  # late: counts in the window
        (None, 6, NOON, 5, None, False),  # more than a whole hour's mails
        (MailHour(HOUR, 5), 1, NOON, None, MailHour(HOUR, 5), True),  # no cap
        (None, 1, NOON, None, None, True),
    ],
)
def test_mails_fit_the_hour_or_are_held_back(
    window: MailHour | None, mails: int, at: datetime, cap: int | None, after: MailHour | None, fits: bool
) -> None:
    assert take_mails(window, mails, at, cap) == (after, fits)


def test_an_hour_is_an_hour_of_utc_whatever_the_zone_of_the_time() -> None:
    from zoneinfo import ZoneInfo

    assert hour_of(NOON.astimezone(ZoneInfo("America/St_Johns"))) == HOUR  # a half-hour offset
    assert hour_of(NOON - timedelta(microseconds=1)) == HOUR - 1
    with pytest.raises(ValueError):
        hour_of(datetime(2026, 12, 4, 12))


@given(
    st.lists(st.tuples(st.integers(1, 4), st.integers(-30, 4 * 60)), max_size=40),
    st.integers(1, 10),
)
def test_no_hour_ever_gets_more_mails_than_the_cap(requests: list[tuple[int, int]], cap: int) -> None:
    window: MailHour | None = None
    sent: dict[int, int] = defaultdict(int)
    for mails, minutes in requests:
        at = NOON + timedelta(minutes=minutes)
        before = window
        window, fits = take_mails(window, mails, at, cap)
        if fits:
            assert window is not None
            sent[window.hour] += mails
            assert window.hour >= hour_of(at) or (before is not None and window.hour == before.hour)
        else:
            assert window == before  # what is held back uses nothing up
    assert all(n <= cap for n in sent.values())


# --- through the workspace step -----------------------------------------------------------------

CAPPED = StepConfig(window_ms=24 * 3600 * 1000, mail_enabled=True, max_billing_contacts=3, max_mails_per_hour=4)


def contacts(command_id: str, emails: list[str]) -> dict[str, Any]:
    return {"type": "billing_contacts", "command_id": command_id, "emails": emails}


def alert_settings(threshold: int) -> dict[str, Any]:
    return {"type": "alert_settings", "command_id": "a1", "metric": "sms", "threshold": threshold,
            "early_warnings": True, "enabled": True}  # fmt: skip


def run(state: WorkspaceState, messages: list[Any], config: StepConfig = CAPPED) -> tuple[WorkspaceState, BatchOutputs]:
    out = BatchOutputs()
    state, _ = step(WORKSPACE, state, messages, {}, config, out)
    return state, out


def commands(state: WorkspaceState, *given: dict[str, Any], at: datetime = NOON) -> tuple[WorkspaceState, BatchOutputs]:
    first = state.usage.applied_through + 1
    ms = int(at.timestamp() * 1000)
    return run(state, [CommandMessage(first + i, c, ms) for i, c in enumerate(given)])


@pytest.mark.parametrize(
    ("emails", "status", "kept"),
    [
        (["a@example.com", "b@example.com", "c@example.com"], "applied", 3),
        (["a@example.com", "b@example.com", "c@example.com", "a@example.com"], "applied", 3),  # each counted once
        (["a@example.com", "b@example.com", "c@example.com", "d@example.com"], "rejected", 1),
        ([f"x{i}@example.com" for i in range(100)], "rejected", 1),
        ([], "applied", 0),
    ],
)
def test_more_billing_contacts_than_the_cap_are_rejected_and_change_nothing(
    emails: list[str], status: str, kept: int
) -> None:
    state, _ = commands(WorkspaceState(), contacts("c0", ["keep@example.com"]))
    state, out = commands(state, contacts("c1", emails))
    [answer] = out.outputs.of(Kind.COMMAND_RESULT)
    assert answer["status"] == status
    assert len(state.profile.billing_contacts) == kept
    if status == "rejected":
        assert answer["reason"] == f"too_many_contacts: {len(set(emails))} billing contacts, at most 3"
        assert state.profile.billing_contacts == ("keep@example.com",)


def sms_events(state: WorkspaceState, quantities: list[int], at: datetime) -> tuple[WorkspaceState, BatchOutputs]:
    """One event a minute from ``at``, through the real packed row encoding."""
    rows = [
        {"event_id": f"e{at:%H}-{i}", "metric": "sms", "quantity": q, "occurred_at": (at + timedelta(minutes=i)).isoformat(),
         "conversation_id": None, "received_ms": int((at + timedelta(minutes=i)).timestamp() * 1000)}
        for i, q in enumerate(quantities)
    ]  # fmt: skip
    return run(state, _messages([("rows", rows)], state.usage.applied_through + 1))


def requests(out: BatchOutputs) -> list[dict[str, Any]]:
    return [orjson.loads(r) for r in out.outputs.of(Kind.MAIL_REQUEST)]


def test_mail_over_the_hourly_cap_is_held_back_with_its_reason_and_the_next_hour_mails_again() -> None:
    state, _ = commands(WorkspaceState(), contacts("c1", ["a@example.com", "b@example.com"]), alert_settings(100))
    # 50%, 80% and 100% within one hour, to two contacts each: 6 mails, the cap is 4.
    state, out = sms_events(state, [50, 30, 20], NOON + timedelta(minutes=5))
    made = requests(out)
    assert [r["record"]["level"] for r in made] == [50, 80, 100]
    assert ["held_back" in r for r in made] == [False, False, True]
    assert made[2]["held_back"] == (
        "mail_rate_limited: 2 mail(s) would pass the cap of 4 mails per workspace in the hour from 2026-12-04T12:00Z"
    )
    assert made[2]["recipients"] == ["a@example.com", "b@example.com"]  # the request is kept whole, to dead-letter
    assert len(out.outputs.of(Kind.ALERT)) == 3  # the alerts themselves are all published
    assert state.mail_hour == MailHour(HOUR, 4)


def test_the_next_hour_has_a_fresh_budget() -> None:
    state, _ = commands(WorkspaceState(), contacts("c1", ["a@example.com", "b@example.com"]), alert_settings(100))
    state, _ = sms_events(state, [50, 30], NOON)
    state, _ = commands(state, {**alert_settings(1000), "command_id": "a2", "metric": "email"})
    state, out = run(state, [])
    row = {"event_id": "late", "metric": "email", "quantity": 500, "occurred_at": (NOON + timedelta(hours=1)).isoformat(),
           "conversation_id": None, "received_ms": int((NOON + timedelta(hours=1)).timestamp() * 1000)}  # fmt: skip
    state, out = run(state, _messages([("rows", [row])], state.usage.applied_through + 1))
    [made] = requests(out)
    assert "held_back" not in made
    assert state.mail_hour == MailHour(HOUR + 1, 2)


def test_without_mail_no_hour_is_kept() -> None:
    config = StepConfig(window_ms=24 * 3600 * 1000, mail_enabled=False, max_mails_per_hour=4)
    state, _ = commands(WorkspaceState(), contacts("c1", ["a@example.com"]), alert_settings(100))
    state, out = run(state, [], config)
    row = {"event_id": "e", "metric": "sms", "quantity": 100, "occurred_at": NOON.isoformat(), "conversation_id": None,
           "received_ms": int(NOON.timestamp() * 1000)}  # fmt: skip
    state, out = run(state, _messages([("rows", [row])], state.usage.applied_through + 1), config)
    assert requests(out) == [] and state.mail_hour is None


@pytest.mark.parametrize(
    ("environ", "contacts_cap", "mails_cap"),
    [
        ({}, 20, 200),
        ({"METERWATCH_MAX_BILLING_CONTACTS": "2", "METERWATCH_MAX_MAILS_PER_WORKSPACE_HOUR": "4"}, 2, 4),
    ],
)
def test_the_caps_are_set_from_the_environment(environ: dict[str, str], contacts_cap: int, mails_cap: int) -> None:
    settings = load_settings(environ)
    assert (settings.max_billing_contacts, settings.max_mails_per_workspace_hour) == (contacts_cap, mails_cap)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"METERWATCH_MAX_BILLING_CONTACTS": "0"}, "METERWATCH_MAX_BILLING_CONTACTS"),
        ({"METERWATCH_MAX_BILLING_CONTACTS": "101"}, "METERWATCH_MAX_BILLING_CONTACTS"),
        ({"METERWATCH_MAX_MAILS_PER_WORKSPACE_HOUR": "0"}, "METERWATCH_MAX_MAILS_PER_WORKSPACE_HOUR"),
        ({"METERWATCH_MAX_MAILS_PER_WORKSPACE_HOUR": "5"}, "METERWATCH_MAX_MAILS_PER_WORKSPACE_HOUR (5) is below"),
    ],
)
def test_caps_that_make_no_sense_are_refused(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        load_settings(environ)


def test_batched_counting_holds_back_the_same_mail_as_judging_every_event() -> None:
    setup = [
        ("command", (contacts("c1", ["a@example.com", "b@example.com"]), int(NOON.timestamp() * 1000))),
        ("command", (alert_settings(100), int(NOON.timestamp() * 1000))),
    ]
    rows = [
        {"event_id": f"e{i}", "metric": "sms", "quantity": 7, "occurred_at": (NOON + timedelta(minutes=i)).isoformat(),
         "conversation_id": None, "received_ms": int((NOON + timedelta(minutes=i, seconds=1)).timestamp() * 1000)}
        for i in range(20)
    ]  # fmt: skip
    # _run_both asserts that both paths give the same state and outputs; its caps: 3 contacts, 5 mails an hour.
    (_, counted) = _run_both([setup, [("rows", rows)]], replay_first=False)
    made = requests(counted.out)
    assert [(r["record"]["level"], "held_back" in r) for r in made] == [(50, False), (80, False), (100, True)]
    assert counted.state.mail_hour == MailHour(HOUR, 4)
