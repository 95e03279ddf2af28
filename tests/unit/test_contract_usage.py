"""A contract's usage (CONTRACT 3.3 "Contracted usage"): the sum of its members' latest reports,
one sum per billing period of the contract's own cycle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterwatch.core.contract_usage import (
    ContractUsage,
    WorkspaceReport,
    change_membership,
    counts_towards,
    record_report,
)
from meterwatch.core.contracts import ContractTerms
from meterwatch.core.periods import CALENDAR_MONTH_UTC, BillingCycle

DUBLIN_15TH = BillingCycle(15, "Europe/Dublin")
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
CONTRACT_PERIOD = DUBLIN_15TH.period_containing(NOW)  # 15 Nov 00:00 Dublin .. 15 Dec
CALENDAR_PERIOD = CALENDAR_MONTH_UTC.period_containing(NOW)  # 1 Nov UTC .. 1 Dec


def contract(*members: str, cycle: BillingCycle = DUBLIN_15TH) -> ContractUsage:
    terms = ContractTerms(contract_id="c_acme", cycle=cycle, currency="USD", workspace_ids=members)
    state, _ = change_membership(ContractUsage(terms=terms), members)
    return state


def report(workspace: str, usage: int, position: int, period=CONTRACT_PERIOD, metric: str = "seats") -> WorkspaceReport:
    return WorkspaceReport(workspace, metric, period, usage, position)


def total(state: ContractUsage, period=CONTRACT_PERIOD, metric: str = "seats") -> int:
    summed = state.for_period(period)
    return summed.total(metric) if summed else 0


@pytest.mark.parametrize(
    ("reports", "expected_total"),
    [
        pytest.param([("eu", 4, 1)], 4, id="one-member"),
        pytest.param([("eu", 4, 1), ("us", 6, 1)], 10, id="two-members-summed"),
        pytest.param([("eu", 4, 1), ("eu", 9, 2)], 9, id="absolute-not-added"),
        pytest.param([("eu", 4, 1), ("eu", 4, 1)], 4, id="replay-changes-nothing"),
        pytest.param([("eu", 9, 2), ("eu", 4, 1)], 9, id="older-position-late-is-ignored"),
        pytest.param([("eu", 9, 2), ("eu", 2, 2)], 9, id="same-position-again-is-ignored"),
        pytest.param([("eu", 4, 1), ("stranger", 50, 1)], 4, id="non-member-not-summed"),
    ],
)
def test_sums_the_latest_report_of_each_member(reports: list[tuple[str, int, int]], expected_total: int) -> None:
    state = contract("eu", "us")
    for workspace, usage, position in reports:
        state, _ = record_report(state, report(workspace, usage, position), NOW)
    assert total(state) == expected_total


def test_a_period_of_another_cycle_is_not_summed_and_changes_nothing() -> None:
    # A workspace that counted usage before it heard of the contract counted it in calendar
    # months, and reports that period when it joins: the contract's own period alone is summed.
    state = contract("eu", "us")
    after, change = record_report(state, report("eu", 10, 5, period=CALENDAR_PERIOD), NOW)
    assert after == state
    assert change.before == change.after == 0
    after, change = record_report(after, report("eu", 13, 6), NOW)
    assert (change.before, change.after) == (0, 13)
    assert [summed.period for summed in after.periods] == [CONTRACT_PERIOD]


@pytest.mark.parametrize(
    ("members", "cycle", "workspace", "period", "counts"),
    [
        pytest.param(("eu",), DUBLIN_15TH, "eu", CONTRACT_PERIOD, True, id="member-own-period"),
        pytest.param(("eu",), DUBLIN_15TH, "eu", CALENDAR_PERIOD, False, id="member-calendar-period"),
        pytest.param(("eu",), DUBLIN_15TH, "us", CONTRACT_PERIOD, False, id="not-a-member"),
        pytest.param(("eu",), CALENDAR_MONTH_UTC, "eu", CALENDAR_PERIOD, True, id="contract-on-calendar-months"),
        pytest.param(
            ("eu",),
            DUBLIN_15TH,
            "eu",
            DUBLIN_15TH.next_period(CONTRACT_PERIOD),
            True,
            id="member-next-period",
        ),
        pytest.param(
            ("eu",),
            BillingCycle(15, "America/New_York"),
            "eu",
            CONTRACT_PERIOD,
            False,
            id="same-day-other-time-zone",
        ),
    ],
)
def test_which_reports_count_towards_the_contract(
    members: tuple[str, ...], cycle: BillingCycle, workspace: str, period, counts: bool
) -> None:
    assert counts_towards(contract(*members, cycle=cycle), report(workspace, 1, 1, period=period)) is counts


def test_without_terms_nothing_counts() -> None:
    state, _ = change_membership(ContractUsage(), ("eu",))
    assert not counts_towards(state, report("eu", 1, 1))


def test_a_member_that_leaves_stops_counting() -> None:
    state = contract("eu", "us")
    state, _ = record_report(state, report("eu", 4, 1), NOW)
    state, _ = record_report(state, report("us", 6, 1), NOW)
    state, membership = change_membership(state, ("eu",))
    assert membership.left == ("us",)
    assert total(state) == 4
    state, change = record_report(state, report("us", 8, 2), NOW)
    assert total(state) == 4 and change.before == change.after


def test_an_old_period_is_dropped_once_past_the_late_event_grace() -> None:
    state = contract("eu")
    previous = DUBLIN_15TH.previous_period(CONTRACT_PERIOD)
    state, _ = record_report(state, report("eu", 3, 1, period=previous), previous.end - timedelta(hours=1))
    state, _ = record_report(state, report("eu", 5, 2), previous.end + timedelta(days=1))
    assert [summed.period for summed in state.periods] == [previous, CONTRACT_PERIOD]
    state, _ = record_report(state, report("eu", 6, 3), previous.end + timedelta(days=8))
    assert [summed.period for summed in state.periods] == [CONTRACT_PERIOD]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(("eu", "us", "apac")), st.integers(0, 10**6), st.integers(0, 50)),
        max_size=40,
    )
)
def test_the_sum_is_each_members_report_with_the_highest_position_in_any_order(
    reports: list[tuple[str, int, int]],
) -> None:
    # Replays and reordering change nothing: the first report at a member's highest position wins.
    state = contract("eu", "us", "apac")
    for workspace, usage, position in reports:
        state, _ = record_report(state, report(workspace, usage, position), NOW)
    expected: dict[str, tuple[int, int]] = {}
    for workspace, usage, position in reports:
        if workspace not in expected or position > expected[workspace][1]:
            expected[workspace] = (usage, position)
    assert total(state) == sum(usage for usage, _ in expected.values())
