"""Counting usage (CONTRACT 1, 3.1, 3.3): how accepted events change a workspace's tallies.

Everything here is pure: the billing cycle and the time of counting are passed in.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterwatch.core.metering import (
    MetricTally,
    Reading,
    UsageChange,
    WorkspaceUsage,
    count_reading,
    daily_usage,
    usage_in,
)
from meterwatch.core.periods import LATE_EVENT_GRACE, BillingCycle, BillingPeriod

UTC_MONTHS = BillingCycle(1, "UTC")
# Anchored on the 15th in New York: clocks went forward on 2024-03-10, so mid-March is UTC-4.
NEW_YORK_15TH = BillingCycle(15, "America/New_York")
TOKYO_1ST = BillingCycle(1, "Asia/Tokyo")

COUNTED_METRICS = ["messages_sent", "phone", "sms", "whatsapp", "email"]


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)


def period(start: datetime, end: datetime) -> BillingPeriod:
    return BillingPeriod(start, end)


MARCH_UTC = period(utc(2024, 3, 1), utc(2024, 4, 1))
APRIL_UTC = period(utc(2024, 4, 1), utc(2024, 5, 1))
FEBRUARY_UTC = period(utc(2024, 2, 1), utc(2024, 3, 1))

_ids = iter(range(10**9))


def reading(metric: str, quantity: int, at: datetime, conversation: str | None = None) -> Reading:
    return Reading(f"evt-{next(_ids)}", metric, quantity, at, conversation)


def count_all(
    metric: str,
    events: list[tuple[int, datetime] | tuple[int, datetime, str]],
    cycle: BillingCycle = UTC_MONTHS,
    counted_at: datetime | None = None,
    tally: MetricTally | None = None,
) -> MetricTally:
    """Count (quantity, occurred_at[, conversation_id]) events in order, each counted at ``counted_at`` or else when it occurred."""
    tally = tally or MetricTally(metric)
    for quantity, at, *conversation in events:
        tally, _ = count_reading(tally, reading(metric, quantity, at, *conversation), cycle, counted_at or at)
    return tally


def snapshot(tally: MetricTally) -> tuple:
    """A deep, plain copy of everything a tally holds, to check that nothing mutated it."""
    return (
        tally.metric,
        tuple(
            (t.period, t.usage, t.last_updated, dict(t.daily), frozenset(t.conversations), t.seats_carried_in)
            for t in tally.periods
        ),
    )


# --- counted metrics: sums and corrections -------------------------------------------------


@pytest.mark.parametrize("metric", COUNTED_METRICS)
def test_usage_is_the_sum_of_quantities_in_the_period(metric: str) -> None:
    tally = count_all(metric, [(3, utc(2024, 3, 2, 9)), (5, utc(2024, 3, 2, 17)), (10, utc(2024, 3, 20))])

    assert usage_in(tally, MARCH_UTC) == 18


@pytest.mark.parametrize(
    "quantities, expected_usage",
    [
        ([10, -4], 6),
        ([10, -10], 0),
        ([10, -15], 0),  # a correction larger than the usage stops at zero
        ([-5], 0),  # a correction on nothing counted
        ([-5, 3], 3),  # the earlier correction is not held against later usage
        ([10, -15, 4], 4),
        ([2, 2, -1, -1, -1, -1, 7], 7),
    ],
)
def test_corrections_never_take_usage_below_zero(quantities: list[int], expected_usage: int) -> None:
    events = [(q, utc(2024, 3, 5, hour)) for hour, q in enumerate(quantities)]

    tally = count_all("sms", events)

    assert usage_in(tally, MARCH_UTC) == expected_usage


def test_the_daily_record_holds_what_a_correction_really_applied() -> None:
    tally = count_all(
        "sms",
        [(10, utc(2024, 3, 4, 9)), (-15, utc(2024, 3, 5, 9)), (4, utc(2024, 3, 6, 9))],
    )
    march = tally.for_period(MARCH_UTC)

    assert dict(march.daily) == {date(2024, 3, 4): 10, date(2024, 3, 5): -10, date(2024, 3, 6): 4}
    days = [date(2024, 3, d) for d in range(3, 8)]
    assert daily_usage("sms", march, days) == [
        (date(2024, 3, 3), 0),
        (date(2024, 3, 4), 10),
        (date(2024, 3, 5), 0),
        (date(2024, 3, 6), 4),
        (date(2024, 3, 7), 4),
    ]


@pytest.mark.parametrize(
    "metric, events",
    [
        # Counted in this order; the correction is dated a day before the usage it corrects.
        ("sms", [(5, utc(2024, 3, 2, 9)), (-5, utc(2024, 3, 1, 9))]),
        ("sms", [(5, utc(2024, 3, 2, 9)), (-8, utc(2024, 3, 1, 9)), (2, utc(2024, 3, 3, 9))]),
        ("fin_resolutions", [(1, utc(2024, 3, 2, 9), "c1"), (-1, utc(2024, 3, 1, 9), "c1")]),
    ],
)
def test_daily_usage_never_shows_negative_usage_when_a_correction_is_dated_earlier(metric: str, events: list) -> None:
    tally = count_all(metric, events, counted_at=utc(2024, 3, 3, 10))
    march = tally.for_period(MARCH_UTC)

    per_day = daily_usage(metric, march, [date(2024, 3, d) for d in (1, 2, 3)])

    assert all(value >= 0 for _, value in per_day), per_day
    assert per_day[-1][1] == usage_in(tally, MARCH_UTC)


def test_a_correction_on_zero_usage_records_nothing_and_changes_nothing() -> None:
    tally, change = count_reading(MetricTally("sms"), reading("sms", -3, utc(2024, 3, 5)), UTC_MONTHS, utc(2024, 3, 5))

    assert (change.before, change.after) == (0, 0)
    assert usage_in(tally, MARCH_UTC) == 0
    assert dict(tally.for_period(MARCH_UTC).daily) == {}


def test_the_change_reports_usage_before_and_after_and_the_event() -> None:
    tally = count_all("email", [(7, utc(2024, 3, 1))])
    event = Reading("evt-42", "email", 5, utc(2024, 3, 3))

    _, change = count_reading(tally, event, UTC_MONTHS, utc(2024, 3, 3, 0, 0, 1))

    assert change == UsageChange(metric="email", period=MARCH_UTC, before=7, after=12, event_id="evt-42")


def test_last_updated_is_when_the_latest_event_was_counted() -> None:
    tally = count_all("sms", [(1, utc(2024, 3, 5))], counted_at=utc(2024, 3, 5, 0, 0, 2))
    tally, _ = count_reading(tally, reading("sms", 1, utc(2024, 3, 6)), UTC_MONTHS, utc(2024, 3, 6, 0, 0, 3))

    assert tally.for_period(MARCH_UTC).last_updated == utc(2024, 3, 6, 0, 0, 3)


def test_metrics_count_from_zero_in_a_new_period() -> None:
    tally = count_all("sms", [(40, utc(2024, 3, 31, 23, 59)), (2, utc(2024, 4, 1))])

    assert usage_in(tally, MARCH_UTC) == 40
    assert usage_in(tally, APRIL_UTC) == 2


# --- fin_resolutions: one per conversation per period ----------------------------------------


@pytest.mark.parametrize(
    "actions, expected_usage",
    [
        ([("c1", +1)], 1),
        ([("c1", +1), ("c1", +1)], 1),  # resolved twice counts once
        ([("c1", +1), ("c1", +1), ("c1", +1)], 1),
        ([("c1", +1), ("c1", -1)], 0),
        ([("c1", -1)], 0),  # nothing counted, nothing to retract
        ([("c1", -1), ("c1", +1)], 1),  # the early retraction does not cancel a later resolution
        ([("c1", +1), ("c1", -1), ("c1", -1)], 0),  # retracting twice undoes one resolution only
        ([("c1", +1), ("c1", -1), ("c1", +1)], 1),  # resolve → retract → resolve counts 1
        ([("c1", +1), ("c2", +1), ("c3", +1)], 3),
        ([("c1", +1), ("c2", -1)], 1),  # a retraction of another conversation undoes nothing
        ([("c1", +1), ("c2", +1), ("c1", -1), ("c2", +1)], 1),
    ],
)
def test_fin_resolutions_count_each_conversation_at_most_once(
    actions: list[tuple[str, int]], expected_usage: int
) -> None:
    events = [(q, utc(2024, 3, 10, 8, minute), conversation) for minute, (conversation, q) in enumerate(actions)]

    tally = count_all("fin_resolutions", events)

    assert usage_in(tally, MARCH_UTC) == expected_usage


def test_a_retraction_of_an_uncounted_conversation_changes_nothing() -> None:
    tally = count_all("fin_resolutions", [(1, utc(2024, 3, 10), "c1")])

    _, change = count_reading(
        tally, reading("fin_resolutions", -1, utc(2024, 3, 11), "c2"), UTC_MONTHS, utc(2024, 3, 11)
    )

    assert (change.before, change.after) == (1, 1)


def test_a_conversation_resolved_again_in_a_new_period_counts_in_that_period() -> None:
    tally = count_all("fin_resolutions", [(1, utc(2024, 3, 30), "c1"), (1, utc(2024, 4, 2), "c1")])

    assert usage_in(tally, MARCH_UTC) == 1
    assert usage_in(tally, APRIL_UTC) == 1


def test_fin_daily_record_follows_resolutions_and_retractions() -> None:
    tally = count_all(
        "fin_resolutions",
        [
            (1, utc(2024, 3, 4, 9), "c1"),
            (1, utc(2024, 3, 4, 10), "c2"),
            (1, utc(2024, 3, 4, 11), "c2"),  # already counted
            (-1, utc(2024, 3, 6, 9), "c1"),
            (-1, utc(2024, 3, 6, 10), "c9"),  # never counted
        ],
    )
    march = tally.for_period(MARCH_UTC)

    assert daily_usage("fin_resolutions", march, [date(2024, 3, d) for d in (4, 5, 6)]) == [
        (date(2024, 3, 4), 2),
        (date(2024, 3, 5), 2),
        (date(2024, 3, 6), 1),
    ]


# --- seats: a count, not a sum ----------------------------------------------------------------


@pytest.mark.parametrize(
    "reports, expected_usage, expected_daily",
    [
        # (quantity, day of March); all reports at different hours
        ([(10, 3)], 10, {3: 10}),
        ([(10, 3), (7, 3)], 10, {3: 10}),  # the day's count is the largest reported that day
        ([(7, 3), (10, 3)], 10, {3: 10}),
        ([(10, 3), (8, 5)], 8, {3: 10, 5: 8}),  # usage is the latest day's count
        ([(10, 3), (8, 5), (20, 4)], 8, {3: 10, 4: 20, 5: 8}),  # a late report for an earlier day
        ([(10, 3), (0, 4)], 0, {3: 10, 4: 0}),  # zero seats is a real count
        ([(5, 3), (5, 3), (5, 3)], 5, {3: 5}),
    ],
)
def test_seats_usage_is_the_latest_days_count(
    reports: list[tuple[int, int]], expected_usage: int, expected_daily: dict[int, int]
) -> None:
    events = [(q, utc(2024, 3, day, hour)) for hour, (q, day) in enumerate(reports)]

    tally = count_all("seats", events, counted_at=utc(2024, 3, 6))

    assert usage_in(tally, MARCH_UTC) == expected_usage
    assert dict(tally.for_period(MARCH_UTC).daily) == {date(2024, 3, d): q for d, q in expected_daily.items()}


def test_seats_are_not_summed() -> None:
    tally = count_all("seats", [(10, utc(2024, 3, 3)), (12, utc(2024, 3, 4)), (11, utc(2024, 3, 5))])

    assert usage_in(tally, MARCH_UTC) == 11


def test_a_new_period_carries_the_last_seat_count_in() -> None:
    tally = count_all("seats", [(10, utc(2024, 2, 10)), (12, utc(2024, 2, 27)), (9, utc(2024, 2, 27, 1))])

    # No report yet in March: the count at the end of February holds.
    assert usage_in(tally, MARCH_UTC) == 12

    # March's first report comes on the 10th; the days before it hold February's last count.
    tally = count_all("seats", [(12, utc(2024, 3, 10))], tally=tally)
    march = tally.for_period(MARCH_UTC)
    assert march.seats_carried_in == 12
    assert daily_usage("seats", march, [date(2024, 3, d) for d in (1, 2, 10, 11)]) == [
        (date(2024, 3, 1), 12),
        (date(2024, 3, 2), 12),
        (date(2024, 3, 10), 12),
        (date(2024, 3, 11), 12),
    ]


def test_a_new_periods_first_seat_report_replaces_the_carried_count() -> None:
    tally = count_all("seats", [(12, utc(2024, 2, 27)), (15, utc(2024, 3, 4))])

    march = tally.for_period(MARCH_UTC)
    assert usage_in(tally, MARCH_UTC) == 15
    assert daily_usage("seats", march, [date(2024, 3, d) for d in (1, 3, 4, 5)]) == [
        (date(2024, 3, 1), 12),
        (date(2024, 3, 3), 12),
        (date(2024, 3, 4), 15),
        (date(2024, 3, 5), 15),
    ]


def test_a_late_seat_report_for_the_previous_period_updates_what_the_new_period_carries_in() -> None:
    # February's last report says 10, and March has its first report (11 on 2 March). Then a
    # late report for 28 February arrives saying 12. 1 March had no report, so it carries the
    # last count forward (CONTRACT 3.3): 12, not the 10 known when March opened.
    tally = count_all("seats", [(10, utc(2024, 2, 20)), (11, utc(2024, 3, 2))])

    tally, _ = count_reading(tally, reading("seats", 12, utc(2024, 2, 28, 12)), UTC_MONTHS, counted_at=utc(2024, 3, 3))

    assert usage_in(tally, FEBRUARY_UTC) == 12
    assert usage_in(tally, MARCH_UTC) == 11
    march = tally.for_period(MARCH_UTC)
    assert daily_usage("seats", march, [date(2024, 3, 1), date(2024, 3, 2)]) == [
        (date(2024, 3, 1), 12),
        (date(2024, 3, 2), 11),
    ]


def test_seats_with_no_report_ever_are_zero() -> None:
    assert usage_in(MetricTally("seats"), MARCH_UTC) == 0
    assert usage_in(None, MARCH_UTC) == 0


def test_usage_in_a_period_without_events_is_zero_for_counted_metrics() -> None:
    tally = count_all("sms", [(5, utc(2024, 3, 5))])

    assert usage_in(tally, APRIL_UTC) == 0
    assert usage_in(tally, FEBRUARY_UTC) == 0


# --- routing to periods, including non-UTC cycles ----------------------------------------------


@pytest.mark.parametrize(
    "cycle, occurred_at, expected_period, expected_day",
    [
        (UTC_MONTHS, utc(2024, 3, 31, 23, 59, 59), MARCH_UTC, date(2024, 3, 31)),
        (UTC_MONTHS, utc(2024, 4, 1), APRIL_UTC, date(2024, 4, 1)),
        # 23:00 on 14 March in New York is still the period that started 15 February.
        (
            NEW_YORK_15TH,
            utc(2024, 3, 15, 3),
            period(utc(2024, 2, 15, 5), utc(2024, 3, 15, 4)),
            date(2024, 3, 14),
        ),
        # Local midnight on the 15th (EDT, UTC-4) starts the next period.
        (
            NEW_YORK_15TH,
            utc(2024, 3, 15, 4),
            period(utc(2024, 3, 15, 4), utc(2024, 4, 15, 4)),
            date(2024, 3, 15),
        ),
        # 00:30 on 1 April in Tokyo (UTC+9) is April there, still March in UTC.
        (
            TOKYO_1ST,
            utc(2024, 3, 31, 15, 30),
            period(utc(2024, 3, 31, 15), utc(2024, 4, 30, 15)),
            date(2024, 4, 1),
        ),
        (
            TOKYO_1ST,
            utc(2024, 3, 31, 14, 59, 59),
            period(utc(2024, 2, 29, 15), utc(2024, 3, 31, 15)),
            date(2024, 3, 31),
        ),
    ],
)
def test_an_event_counts_in_the_period_and_local_day_containing_occurred_at(
    cycle: BillingCycle, occurred_at: datetime, expected_period: BillingPeriod, expected_day: date
) -> None:
    tally, change = count_reading(MetricTally("sms"), reading("sms", 4, occurred_at), cycle, occurred_at)

    assert change.period == expected_period
    assert usage_in(tally, expected_period) == 4
    assert dict(tally.for_period(expected_period).daily) == {expected_day: 4}


def test_events_either_side_of_a_local_period_boundary_land_in_different_periods() -> None:
    before_midnight = utc(2024, 3, 15, 3, 59)  # 23:59 EDT on 14 March
    after_midnight = utc(2024, 3, 15, 4, 1)  # 00:01 EDT on 15 March
    tally = count_all("whatsapp", [(2, before_midnight), (3, after_midnight)], cycle=NEW_YORK_15TH)

    assert usage_in(tally, NEW_YORK_15TH.period_containing(before_midnight)) == 2
    assert usage_in(tally, NEW_YORK_15TH.period_containing(after_midnight)) == 3


# --- late events and old periods ------------------------------------------------------------


def test_a_late_event_counts_in_its_own_period_within_the_grace() -> None:
    tally = count_all("sms", [(10, utc(2024, 2, 20)), (1, utc(2024, 3, 2))])

    tally, change = count_reading(
        tally, reading("sms", 5, utc(2024, 2, 29, 23)), UTC_MONTHS, counted_at=utc(2024, 3, 7)
    )

    assert change.period == FEBRUARY_UTC
    assert (change.before, change.after) == (10, 15)
    assert usage_in(tally, FEBRUARY_UTC) == 15
    assert usage_in(tally, MARCH_UTC) == 1


def test_a_late_event_in_a_non_utc_cycle_counts_in_its_local_period() -> None:
    previous = period(utc(2024, 2, 15, 5), utc(2024, 3, 15, 4))
    current = period(utc(2024, 3, 15, 4), utc(2024, 4, 15, 4))
    tally = count_all("phone", [(1, utc(2024, 3, 16))], cycle=NEW_YORK_15TH)

    # 22:00 on 14 March in New York, counted a few days later.
    tally, change = count_reading(
        tally, reading("phone", 6, utc(2024, 3, 15, 2)), NEW_YORK_15TH, counted_at=utc(2024, 3, 20)
    )

    assert change.period == previous
    assert usage_in(tally, previous) == 6
    assert usage_in(tally, current) == 1


@pytest.mark.parametrize(
    "counted_at, previous_kept",
    [
        (utc(2024, 3, 1) + LATE_EVENT_GRACE - timedelta(hours=1), True),
        (utc(2024, 3, 1) + LATE_EVENT_GRACE, True),  # exactly 7 days after its end: still open
        (utc(2024, 3, 1) + LATE_EVENT_GRACE + timedelta(microseconds=1), False),
        (utc(2024, 3, 20), False),
    ],
)
def test_a_period_is_dropped_once_it_ended_more_than_seven_days_ago(counted_at: datetime, previous_kept: bool) -> None:
    tally = count_all("sms", [(10, utc(2024, 2, 20))])

    tally, _ = count_reading(tally, reading("sms", 1, utc(2024, 3, 2)), UTC_MONTHS, counted_at)

    assert (tally.for_period(FEBRUARY_UTC) is not None) == previous_kept
    assert usage_in(tally, MARCH_UTC) == 1


def test_a_correction_counted_on_the_last_day_of_the_grace_still_applies() -> None:
    tally = count_all("sms", [(10, utc(2024, 2, 20))])

    # February ended on 1 March; 8 March is the last moment it accepts events.
    tally, _ = count_reading(tally, reading("sms", -1, utc(2024, 2, 21)), UTC_MONTHS, counted_at=utc(2024, 3, 8))

    assert usage_in(tally, FEBRUARY_UTC) == 9
    assert [t.period for t in tally.periods] == [FEBRUARY_UTC]


def test_seats_still_carry_in_after_the_previous_period_is_dropped() -> None:
    tally = count_all("seats", [(12, utc(2024, 2, 20))])
    tally = count_all("seats", [(12, utc(2024, 3, 2))], tally=tally, counted_at=utc(2024, 3, 20))

    assert tally.for_period(FEBRUARY_UTC) is None
    assert usage_in(tally, APRIL_UTC) == 12


def test_periods_are_kept_in_order() -> None:
    tally = count_all("sms", [(1, utc(2024, 3, 2)), (1, utc(2024, 4, 2))], counted_at=utc(2024, 4, 2))
    tally, _ = count_reading(tally, reading("sms", 1, utc(2024, 3, 30)), UTC_MONTHS, utc(2024, 4, 3))

    assert [t.period for t in tally.periods] == [MARCH_UTC, APRIL_UTC]
    assert tally.latest().period == APRIL_UTC


# --- immutability ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metric, quantity, conversation",
    [
        ("sms", 5, None),
        ("sms", -20, None),
        ("fin_resolutions", 1, "c2"),
        ("fin_resolutions", -1, "c1"),
        ("seats", 30, None),
    ],
)
def test_counting_leaves_the_input_tally_unchanged(metric: str, quantity: int, conversation: str | None) -> None:
    seed = (
        [(1, utc(2024, 3, 2), "c1")] if metric == "fin_resolutions" else [(10, utc(2024, 2, 27)), (7, utc(2024, 3, 2))]
    )
    before = count_all(metric, seed, counted_at=utc(2024, 3, 2))
    frozen = snapshot(before)

    after, _ = count_reading(
        before, reading(metric, quantity, utc(2024, 3, 2, 5), conversation), UTC_MONTHS, utc(2024, 3, 2, 5)
    )

    assert snapshot(before) == frozen
    assert after is not before


def test_tallies_cannot_be_changed_in_place() -> None:
    tally = count_all("sms", [(3, utc(2024, 3, 2))])
    march = tally.for_period(MARCH_UTC)

    with pytest.raises(dataclasses.FrozenInstanceError):
        march.usage = 99  # type: ignore[misc]
    with pytest.raises(TypeError):
        march.daily[date(2024, 3, 2)] = 99  # type: ignore[index]
    assert usage_in(tally, MARCH_UTC) == 3


# --- the workspace value ----------------------------------------------------------------------


def test_a_workspace_without_counts_has_empty_tallies() -> None:
    workspace = WorkspaceUsage()

    assert workspace.applied_through == -1
    assert workspace.tally("sms") == MetricTally("sms")
    assert usage_in(workspace.tally("seats"), MARCH_UTC) == 0


def test_a_workspace_gives_back_the_tally_it_holds() -> None:
    sms = count_all("sms", [(3, utc(2024, 3, 2))])
    workspace = WorkspaceUsage(tallies={"sms": sms}, applied_through=41)

    assert workspace.tally("sms") is sms
    assert workspace.tally("email") == MetricTally("email")


# --- properties -------------------------------------------------------------------------------

nonzero_quantities = st.integers(min_value=-1_000, max_value=1_000).filter(lambda q: q != 0)
march_instants = st.integers(min_value=0, max_value=31 * 24 * 3600 - 1).map(
    lambda seconds: utc(2024, 3, 1) + timedelta(seconds=seconds)
)


@settings(max_examples=200)
@given(st.lists(st.tuples(nonzero_quantities, march_instants), max_size=60))
def test_usage_is_the_running_sum_floored_at_zero(events: list[tuple[int, datetime]]) -> None:
    expected = 0
    tally = MetricTally("sms")
    for quantity, at in events:
        tally, change = count_reading(tally, reading("sms", quantity, at), UTC_MONTHS, at)
        assert change.before == expected
        expected = max(0, expected + quantity)
        assert change.after == expected
        assert usage_in(tally, MARCH_UTC) >= 0

    assert usage_in(tally, MARCH_UTC) == expected
    if events:
        # The days add up to the usage: each day records what was really applied.
        assert sum(tally.for_period(MARCH_UTC).daily.values()) == expected


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["c1", "c2", "c3", "c4"]), st.sampled_from([1, -1])), max_size=60))
def test_fin_usage_is_the_conversations_whose_last_action_was_a_resolve(actions: list[tuple[str, int]]) -> None:
    at = utc(2024, 3, 10)
    tally = MetricTally("fin_resolutions")
    last_action: dict[str, int] = {}
    for step, (conversation, quantity) in enumerate(actions):
        when = at + timedelta(minutes=step)
        tally, _ = count_reading(tally, reading("fin_resolutions", quantity, when, conversation), UTC_MONTHS, when)
        last_action[conversation] = quantity
        assert usage_in(tally, MARCH_UTC) >= 0

    resolved = {c for c, q in last_action.items() if q == 1}
    assert usage_in(tally, MARCH_UTC) == len(resolved)
    if actions:
        assert tally.for_period(MARCH_UTC).conversations == resolved


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.sampled_from(COUNTED_METRICS + ["fin_resolutions"]), nonzero_quantities, march_instants),
        max_size=40,
    )
)
def test_usage_is_never_negative(events: list[tuple[str, int, datetime]]) -> None:
    tallies: dict[str, MetricTally] = {}
    for metric, quantity, at in events:
        if metric == "fin_resolutions":
            quantity, conversation = (1 if quantity > 0 else -1), f"c{abs(quantity) % 3}"
        else:
            conversation = None
        tally = tallies.get(metric, MetricTally(metric))
        tallies[metric], change = count_reading(tally, reading(metric, quantity, at, conversation), UTC_MONTHS, at)
        assert change.after >= 0
    for tally in tallies.values():
        assert usage_in(tally, MARCH_UTC) >= 0
        march = tally.for_period(MARCH_UTC)
        days = UTC_MONTHS.days_in(MARCH_UTC)
        assert all(value >= 0 for _, value in daily_usage(tally.metric, march, days))


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=500), march_instants), min_size=1, max_size=40))
def test_seats_usage_is_the_largest_count_of_the_latest_reported_day(reports: list[tuple[int, datetime]]) -> None:
    tally = MetricTally("seats")
    for seats, at in reports:
        tally, _ = count_reading(tally, reading("seats", seats, at), UTC_MONTHS, utc(2024, 4, 1))

    latest_day = max(at.date() for _, at in reports)
    assert usage_in(tally, MARCH_UTC) == max(s for s, at in reports if at.date() == latest_day)
    march = tally.for_period(MARCH_UTC)
    for day, count in march.daily.items():
        assert count == max(s for s, at in reports if at.date() == day)


@settings(max_examples=100)
@given(
    st.lists(st.tuples(nonzero_quantities, march_instants), min_size=1, max_size=20),
    st.tuples(nonzero_quantities, march_instants),
)
def test_counting_never_changes_the_tally_it_was_given(
    seed: list[tuple[int, datetime]], event: tuple[int, datetime]
) -> None:
    before = count_all("sms", seed, counted_at=utc(2024, 3, 31))
    frozen = snapshot(before)

    count_reading(before, reading("sms", event[0], event[1]), UTC_MONTHS, utc(2024, 3, 31))

    assert snapshot(before) == frozen
