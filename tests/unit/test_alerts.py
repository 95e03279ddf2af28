"""Usage alerts (CONTRACT 3.2 `alert_settings` and `contract_alert_settings`, 3.3 "Usage alerts"
and "Contracted usage", 5.1).

Most rules are checked as scenarios: a list of steps (a setting command, or the period's usage
moving to a new value) run through the pure functions, compared with the transcript a person
would expect: each command's outcome and each alert, in order.
"""

from __future__ import annotations

import uuid
from dataclasses import FrozenInstanceError, dataclass
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterwatch.core.alerts import (
    CONTRACT_LEVEL_CHOICES,
    CONTRACT_LEVELS,
    AlertSetting,
    AlertState,
    ContractAlertSetting,
    ContractAlertState,
    LevelReached,
    ScheduledSetting,
    SettingOutcome,
    alert_id,
    apply_contract_setting,
    apply_setting,
    contract_levels_of,
    judge_contract_usage,
    judge_usage,
    levels_of,
    onto_cycle,
    reaches_level,
    roll_contract_to,
    roll_to,
)
from meterwatch.core.periods import BillingCycle, BillingPeriod


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)


P1 = BillingPeriod(utc(2026, 11, 1), utc(2026, 12, 1))
P2 = BillingPeriod(utc(2026, 12, 1), utc(2027, 1, 1))
P3 = BillingPeriod(utc(2027, 1, 1), utc(2027, 2, 1))
NAMES = {P1: "P1", P2: "P2", P3: "P3"}


# ---------------------------------------------------------------------------------------------
# Scenario steps and the transcript they produce


@dataclass(frozen=True)
class Set:
    """An `alert_settings` command, judged against the period's usage so far."""

    threshold: int
    early_warnings: bool = True
    enabled: bool = True
    period: BillingPeriod = P1


def Off(threshold: int = 1000, period: BillingPeriod = P1) -> Set:
    return Set(threshold, early_warnings=True, enabled=False, period=period)


@dataclass(frozen=True)
class Use:
    """The period's usage moves to `usage` (one event; lower than before is a correction)."""

    usage: int
    period: BillingPeriod = P1


APPLIED = "applied"


def scheduled(period: BillingPeriod) -> tuple[str, str]:
    return ("scheduled", NAMES[period])


def alert(level: int, threshold: int, usage: int, period: BillingPeriod = P1) -> tuple[int, int, int, str]:
    return (level, threshold, usage, NAMES[period])


def run(steps: list[Set | Use], state: AlertState | None = None) -> tuple[AlertState, list[object]]:
    state = state or AlertState()
    usage: dict[BillingPeriod, int] = {}
    transcript: list[object] = []
    for step in steps:
        before = usage.get(step.period, 0)
        if isinstance(step, Set):
            setting = AlertSetting(step.threshold, step.early_warnings, step.enabled)
            state, outcome = apply_setting(state, setting, before, step.period, step.period.end)
            if outcome.status == "applied":
                assert outcome.effective_from is None
                transcript.append(APPLIED)
            else:
                transcript.append(("scheduled", NAMES[_period_starting(outcome.effective_from)]))
        else:
            usage[step.period] = step.usage
            state, reached = judge_usage(state, before, step.usage, step.period)
            if reached is not None:
                transcript.append((reached.level, reached.threshold, reached.usage, NAMES[reached.period]))
    return state, transcript


def _period_starting(at: datetime | None) -> BillingPeriod:
    return next(p for p in NAMES if p.start == at)


# ---------------------------------------------------------------------------------------------
# Levels


@pytest.mark.parametrize(
    "usage, level, threshold, expected",
    [
        (499, 50, 1000, False),
        (500, 50, 1000, True),
        (799, 80, 1000, False),
        (800, 80, 1000, True),
        (999, 100, 1000, False),
        (1000, 100, 1000, True),
        # Odd thresholds: 50% of 7 is 3.5, 80% of 7 is 5.6; nothing is rounded down to reach.
        (3, 50, 7, False),
        (4, 50, 7, True),
        (5, 80, 7, False),
        (6, 80, 7, True),
        (1, 50, 1, True),
        (0, 50, 1, False),
        # Beyond float precision: 80% of 5 * 10**17 + 1 needs one more than 4 * 10**17.
        (4 * 10**17, 80, 5 * 10**17 + 1, False),
        (4 * 10**17 + 1, 80, 5 * 10**17 + 1, True),
    ],
)
def test_a_level_is_reached_at_its_exact_share_of_the_threshold(
    usage: int, level: int, threshold: int, expected: bool
) -> None:
    assert reaches_level(usage, level, threshold) is expected


@pytest.mark.parametrize(
    "setting, expected",
    [
        (AlertSetting(1000, early_warnings=True, enabled=True), (50, 80, 100)),
        (AlertSetting(1000, early_warnings=False, enabled=True), (100,)),
        (AlertSetting(1000, early_warnings=True, enabled=False), ()),
    ],
)
def test_the_levels_of_a_setting(setting: AlertSetting, expected: tuple[int, ...]) -> None:
    assert levels_of(setting) == expected


@pytest.mark.parametrize("threshold", [0, -1, True, 1.5, "10"])
def test_a_threshold_must_be_a_positive_integer(threshold: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        AlertSetting(threshold, early_warnings=False, enabled=True)  # type: ignore[arg-type]


def test_states_are_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        AlertState().alerted = frozenset()  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Workspace alerts: scenarios

SCENARIOS = [
    pytest.param(
        [Set(1000), Use(499), Use(500), Use(799), Use(800), Use(999), Use(1000), Use(1500), Use(3000)],
        [APPLIED, alert(50, 1000, 500), alert(80, 1000, 800), alert(100, 1000, 1000)],
        id="50-80-100-once-each-at-exact-boundaries",
    ),
    pytest.param(
        [Set(1000, early_warnings=False), Use(500), Use(800), Use(999), Use(1000), Use(2000)],
        [APPLIED, alert(100, 1000, 1000)],
        id="early-warnings-off-alerts-only-100",
    ),
    pytest.param(
        [Set(1000), Use(400), Use(1200), Use(0), Use(500), Use(800), Use(1000)],
        [APPLIED, alert(100, 1000, 1200)],
        id="jump-40-to-120-alerts-only-100-and-uses-up-50-and-80",
    ),
    pytest.param(
        [Set(1000), Use(600), Use(850), Use(1000)],
        [APPLIED, alert(50, 1000, 600), alert(80, 1000, 850), alert(100, 1000, 1000)],
        id="one-level-per-event-when-each-event-reaches-one",
    ),
    pytest.param(
        [Set(1000), Use(600), Use(950)],
        [APPLIED, alert(50, 1000, 600), alert(80, 1000, 950)],
        id="jump-over-one-level-alerts-it",
    ),
    pytest.param(
        [Set(1000), Use(850), Use(400), Use(850), Use(1000), Use(0), Use(1000), Use(5000)],
        [APPLIED, alert(80, 1000, 850), alert(100, 1000, 1000)],
        id="corrections-down-and-up-again-do-not-re-alert",
    ),
    pytest.param(
        [Set(1000), Use(600), Use(500), Use(499), Use(500)],
        [APPLIED, alert(50, 1000, 600)],
        id="dropping-below-a-level-and-back-does-not-re-arm-it",
    ),
    pytest.param(
        [Set(1000), Use(1000), Use(500, P2), Use(800, P2), Use(1000, P2), Use(1000, P3)],
        [
            APPLIED,
            alert(100, 1000, 1000),
            alert(50, 1000, 500, P2),
            alert(80, 1000, 800, P2),
            alert(100, 1000, 1000, P2),
            alert(100, 1000, 1000, P3),
        ],
        id="new-period-re-arms-every-level",
    ),
    pytest.param(
        [Set(1000), Use(600), Set(500), Use(800), Use(1000), Use(250, P2), Use(500, P2)],
        [
            APPLIED,
            alert(50, 1000, 600),
            scheduled(P2),
            alert(80, 1000, 800),
            alert(100, 1000, 1000),
            alert(50, 500, 250, P2),
            alert(100, 500, 500, P2),
        ],
        id="lowering-below-usage-is-scheduled-old-threshold-alerts-meanwhile-new-one-next-period",
    ),
    pytest.param(
        [Set(1000), Use(600), Set(600), Use(700), Use(300, P2)],
        [APPLIED, alert(50, 1000, 600), scheduled(P2), alert(50, 600, 300, P2)],
        id="lowering-to-exactly-current-usage-is-scheduled",
    ),
    pytest.param(
        [Set(1000), Use(600), Set(500), Set(400), Use(200, P2)],
        [APPLIED, alert(50, 1000, 600), scheduled(P2), scheduled(P2), alert(50, 400, 200, P2)],
        id="a-later-schedule-replaces-a-pending-one",
    ),
    pytest.param(
        [Set(1000), Use(600), Set(500), Set(2000), Use(1000), Use(600, P2), Use(1000, P2)],
        [APPLIED, alert(50, 1000, 600), scheduled(P2), APPLIED, alert(50, 2000, 1000), alert(50, 2000, 1000, P2)],
        id="a-raise-applied-at-once-cancels-a-pending-schedule",
    ),
    pytest.param(
        [Set(1000), Use(1000), Set(2000), Use(1100), Use(1600), Use(2000)],
        [APPLIED, alert(100, 1000, 1000), APPLIED, alert(80, 2000, 1600), alert(100, 2000, 2000)],
        id="raising-applies-at-once-and-levels-already-reached-stay-silent",
    ),
    pytest.param(
        [Set(100), Use(600), Set(1000), Use(700), Use(800), Use(1000)],
        [APPLIED, alert(100, 100, 600), APPLIED, alert(80, 1000, 800), alert(100, 1000, 1000)],
        id="raising-to-a-threshold-usage-is-60-percent-of-50-never-fires-80-and-100-do",
    ),
    pytest.param(
        [Use(5000), Set(1000), Use(6000), Use(400, P2), Use(500, P2)],
        [scheduled(P2), alert(50, 1000, 500, P2)],
        id="first-setting-at-or-below-usage-is-scheduled-nothing-alerts-until-next-period",
    ),
    pytest.param(
        [Use(300), Set(1000), Use(500)],
        [APPLIED, alert(50, 1000, 500)],
        id="first-setting-above-usage-applies-at-once",
    ),
    pytest.param(
        [Set(1000), Use(400), Off(), Use(500), Use(800), Use(2000), Use(2000, P2)],
        [APPLIED, APPLIED],
        id="turned-off-stays-silent-also-next-period",
    ),
    pytest.param(
        [Set(1000), Use(600), Set(500), Off(500), Use(1000), Use(2000, P2)],
        [APPLIED, alert(50, 1000, 600), scheduled(P2), APPLIED],
        id="turning-off-cancels-a-schedule",
    ),
    pytest.param(
        [Set(1000), Use(800), Off(), Use(700), Set(1000), Use(800), Use(1000)],
        [APPLIED, alert(80, 1000, 800), APPLIED, APPLIED, alert(100, 1000, 1000)],
        id="turning-back-on-does-not-re-arm-what-alerted-for-that-threshold",
    ),
    pytest.param(
        [Set(1000), Use(1200), Off(), Set(1000), Use(1300), Use(100, P2), Use(500, P2)],
        [APPLIED, alert(100, 1000, 1200), APPLIED, scheduled(P2), alert(50, 1000, 500, P2)],
        id="turning-back-on-at-or-below-usage-is-scheduled",
    ),
    pytest.param(
        [Set(1000), Use(800), Use(700), Set(1000), Use(800), Use(1000)],
        [APPLIED, alert(80, 1000, 800), APPLIED, alert(100, 1000, 1000)],
        id="same-setting-again-does-not-re-arm",
    ),
    pytest.param(
        [Set(1000), Use(1500), Set(1000), Use(2000)],
        [APPLIED, alert(100, 1000, 1500), APPLIED],
        id="same-setting-again-above-usage-is-applied-not-scheduled",
    ),
    pytest.param(
        [Set(1000), Use(600), Set(500), Set(1000), Use(300, P2), Use(500, P2)],
        [APPLIED, alert(50, 1000, 600), scheduled(P2), APPLIED, alert(50, 1000, 500, P2)],
        id="same-setting-again-withdraws-a-pending-schedule",
    ),
    pytest.param(
        [Set(1000, early_warnings=False), Use(600), Set(1000, early_warnings=True), Use(700), Use(800)],
        [APPLIED, APPLIED, alert(80, 1000, 800)],
        id="early-warnings-turned-on-50-already-reached-stays-silent",
    ),
    pytest.param(
        [Set(1000, early_warnings=False), Use(1200), Set(1000, early_warnings=True), Use(1300)],
        [APPLIED, alert(100, 1000, 1200), APPLIED],
        id="early-warnings-toggled-with-usage-past-the-threshold-applies-at-once-silently",
    ),
    pytest.param(
        [Set(1000), Use(800), Set(2000), Use(700), Set(1000), Use(800), Use(1000)],
        [APPLIED, alert(80, 1000, 800), APPLIED, APPLIED, alert(100, 1000, 1000)],
        id="threshold-changed-away-and-back-does-not-re-alert-in-the-period",
    ),
    pytest.param(
        [Set(1000), Use(600), Set(500), Use(100, P3), Use(300, P3)],
        [APPLIED, alert(50, 1000, 600), scheduled(P2), alert(50, 500, 300, P3)],
        id="a-schedule-takes-effect-even-when-periods-are-skipped",
    ),
    pytest.param(
        [Set(1000), Use(600), Set(500), Set(500, period=P2), Use(300, P2)],
        [APPLIED, alert(50, 1000, 600), scheduled(P2), APPLIED, alert(50, 500, 300, P2)],
        id="the-scheduled-setting-sent-again-next-period-is-in-force-already",
    ),
    pytest.param(
        [Use(100), Use(5000), Use(10, P2)],
        [],
        id="no-setting-no-alerts",
    ),
    pytest.param(
        [Set(1), Use(1)],
        [APPLIED, alert(100, 1, 1)],
        id="threshold-of-one-the-first-unit-alerts-100",
    ),
    pytest.param(
        [Set(1000), Use(700), Use(100, P2), Use(1000), Use(600, P2)],
        [APPLIED, alert(50, 1000, 700), alert(50, 1000, 600, P2)],
        id="late-event-for-previous-period-is-judged-against-nothing",
    ),
    pytest.param(
        [Set(1000), Use(100, P2), Use(850, P2), Use(900), Use(700, P2), Use(850, P2), Use(999, P2)],
        [APPLIED, alert(80, 1000, 850, P2)],
        id="late-event-does-not-re-arm-the-current-period",
    ),
]


@pytest.mark.parametrize("steps, expected", SCENARIOS)
def test_usage_alert_scenarios(steps: list[Set | Use], expected: list[object]) -> None:
    _, transcript = run(steps)
    assert transcript == expected


# ---------------------------------------------------------------------------------------------
# Workspace alerts: what the state holds


def test_lowering_below_usage_schedules_from_the_next_period_and_keeps_the_old_setting() -> None:
    state, _ = run([Set(1000), Use(600)])
    lowered = AlertSetting(500, early_warnings=True, enabled=True)
    state, outcome = apply_setting(state, lowered, 600, P1, P2.start)
    assert outcome == SettingOutcome("scheduled", P2.start)
    assert state.setting == AlertSetting(1000, early_warnings=True, enabled=True)
    assert state.scheduled == ScheduledSetting(lowered, P2.start)


def test_the_view_after_rolling_to_the_current_period_shows_a_schedule_that_fell_due() -> None:
    state, _ = run([Set(1000), Use(600), Set(500)])
    view = roll_to(state, P2)
    assert view.setting == AlertSetting(500, early_warnings=True, enabled=True)
    assert view.scheduled is None
    # Within the same period the schedule is still waiting.
    assert roll_to(state, P1) is state


def test_turning_off_keeps_the_setting_shown_as_off_and_drops_the_schedule() -> None:
    state, _ = run([Set(1000), Use(600), Set(500), Off(1000)])
    assert state.setting == AlertSetting(1000, early_warnings=True, enabled=False)
    assert state.scheduled is None


def test_rolling_clears_what_was_alerted() -> None:
    state, _ = run([Set(1000), Use(900)])
    assert state.alerted == {(1000, 50), (1000, 80)}
    rolled = roll_to(state, P2)
    assert rolled.period == P2
    assert rolled.alerted == frozenset()
    assert rolled.setting == state.setting


def test_rolling_to_an_earlier_period_changes_nothing() -> None:
    state, _ = run([Set(1000), Use(900, P2)])
    assert roll_to(state, P1) is state


def test_a_schedule_not_yet_due_stays_scheduled_through_a_roll() -> None:
    later = ScheduledSetting(AlertSetting(10, early_warnings=False, enabled=True), P3.start)
    state = AlertState(period=P1, setting=AlertSetting(1000, True, True), scheduled=later)
    rolled = roll_to(state, P2)
    assert rolled.scheduled == later
    assert roll_to(rolled, P3).setting == later.setting


def test_a_late_event_leaves_the_state_as_it_is() -> None:
    state, _ = run([Set(1000), Use(850, P2)])
    after, reached = judge_usage(state, 0, 5000, P1)
    assert reached is None
    assert after is state


def test_only_a_rise_alerts_even_for_a_state_that_missed_a_change() -> None:
    # A state that never saw usage pass 1000 (e.g. restored from an older table value): the
    # correction that follows says nothing new, the next rise announces the level once.
    missed = AlertState(period=P1, setting=AlertSetting(1000, early_warnings=True, enabled=True))
    state, reached = judge_usage(missed, 1200, 1100, P1)
    assert reached is None
    state, reached = judge_usage(state, 1100, 1100, P1)
    assert reached is None
    state, reached = judge_usage(state, 1100, 1150, P1)
    assert reached == LevelReached(100, 1000, 1150, P1)
    assert state.alerted == {(1000, 50), (1000, 80), (1000, 100)}


def test_an_alert_carries_the_usage_that_caused_it_and_its_period() -> None:
    state, _ = run([Set(1000)])
    _, reached = judge_usage(state, 700, 812, P1)
    assert reached == LevelReached(level=80, threshold=1000, usage=812, period=P1)


def test_a_setting_for_a_period_older_than_the_state_is_a_callers_mistake() -> None:
    state, _ = run([Set(1000), Use(10, P2)])
    with pytest.raises(ValueError, match="already at"):
        apply_setting(state, AlertSetting(500, True, True), 0, P1, P2.start)


@pytest.mark.parametrize(
    "next_period_start",
    [datetime(2026, 12, 1), P1.start, P1.start - timedelta(days=1)],
    ids=["naive", "period-start", "before-period"],
)
def test_next_period_start_must_be_an_aware_instant_after_the_period_starts(next_period_start: datetime) -> None:
    with pytest.raises(ValueError):
        apply_setting(AlertState(), AlertSetting(500, True, True), 0, P1, next_period_start)


def test_effective_from_is_given_in_utc() -> None:
    cycle = BillingCycle(15, "America/New_York")
    period = cycle.period_containing(utc(2026, 11, 20))
    next_start = period.end.astimezone(ZoneInfo("America/New_York"))
    _, outcome = apply_setting(AlertState(), AlertSetting(10, True, True), 50, period, next_start)
    assert outcome == SettingOutcome("scheduled", period.end)
    assert outcome.effective_from is not None and outcome.effective_from.utcoffset() == timedelta(0)


# ---------------------------------------------------------------------------------------------
# Contract alerts


@dataclass(frozen=True)
class ContractUse:
    """The contract's usage moves to `usage` with `included` in its subscription."""

    usage: int
    included: int | None = 1000
    period: BillingPeriod = P1


@dataclass(frozen=True)
class ContractSet:
    """A `contract_alert_settings` command, applied in `period` (None: before any subscription)
    against the contract's usage of that period so far."""

    levels: tuple[int, ...] = CONTRACT_LEVELS
    enabled: bool = True
    included: int | None = 1000
    period: BillingPeriod | None = P1


def ContractOff(period: BillingPeriod = P1) -> ContractSet:
    return ContractSet(enabled=False, period=period)


def run_contract(steps: list[ContractUse | ContractSet], metric: str = "sms") -> list[tuple[int, int, int, str]]:
    state = ContractAlertState()
    usage: dict[BillingPeriod, int] = {}
    alerts = []
    for step in steps:
        if isinstance(step, ContractSet):
            setting = ContractAlertSetting(step.levels, step.enabled)
            usage_now = usage.get(step.period, 0) if step.period else 0
            state = apply_contract_setting(state, metric, setting, usage_now, step.included, step.period)
            continue
        before = usage.get(step.period, 0)
        usage[step.period] = step.usage
        state, reached = judge_contract_usage(state, metric, before, step.usage, step.included, step.period)
        if reached is not None:
            alerts.append((reached.level, reached.threshold, reached.usage, NAMES[reached.period]))
    return alerts


CONTRACT_SCENARIOS = [
    pytest.param(
        [ContractUse(500), ContractUse(799), ContractUse(800), ContractUse(999), ContractUse(1000), ContractUse(2000)],
        [alert(80, 1000, 800), alert(100, 1000, 1000)],
        id="80-and-100-once-each-no-50",
    ),
    pytest.param(
        [ContractUse(700), ContractUse(1100), ContractUse(900), ContractUse(1200)],
        [alert(100, 1000, 1100)],
        id="jump-alerts-only-100",
    ),
    pytest.param(
        [ContractUse(850), ContractUse(100), ContractUse(850), ContractUse(1000), ContractUse(0), ContractUse(1000)],
        [alert(80, 1000, 850), alert(100, 1000, 1000)],
        id="corrections-do-not-re-alert",
    ),
    pytest.param(
        [ContractUse(1000), ContractUse(800, period=P2), ContractUse(1000, period=P2)],
        [alert(100, 1000, 1000), alert(80, 1000, 800, P2), alert(100, 1000, 1000, P2)],
        id="new-period-afresh",
    ),
    pytest.param(
        [ContractUse(850), ContractUse(900, included=2000), ContractUse(1600, included=2000)],
        [alert(80, 1000, 850), alert(80, 2000, 1600)],
        id="raised-included-is-judged-afresh",
    ),
    pytest.param(
        [ContractUse(2000, included=5000), ContractUse(2100, included=1000)],
        [alert(100, 1000, 2100)],
        id="lowered-included-below-usage-alerts-100-on-the-next-rise",
    ),
    pytest.param(
        [ContractUse(5000, included=None), ContractUse(6000, included=0)],
        [],
        id="no-included-quantity-no-contract-alert",
    ),
    pytest.param(
        [ContractUse(850), ContractUse(100, period=P2), ContractUse(1000), ContractUse(800, period=P2)],
        [alert(80, 1000, 850), alert(80, 1000, 800, P2)],
        id="late-change-for-previous-period-is-judged-against-nothing",
    ),
    pytest.param(
        [ContractSet((50,)), ContractUse(499), ContractUse(500), ContractUse(800), ContractUse(1000)],
        [alert(50, 1000, 500)],
        id="only-the-chosen-level-alerts",
    ),
    pytest.param(
        [ContractSet((50, 80, 100)), ContractUse(500), ContractUse(850), ContractUse(900), ContractUse(1000)],
        [alert(50, 1000, 500), alert(80, 1000, 850), alert(100, 1000, 1000)],
        id="all-three-levels-once-each",
    ),
    pytest.param(
        [ContractSet((80,)), ContractUse(1200), ContractUse(1300)],
        [alert(80, 1000, 1200)],
        id="a-jump-past-every-chosen-level-alerts-the-highest-chosen",
    ),
    pytest.param(
        [ContractOff(), ContractUse(900), ContractUse(1200), ContractUse(1500, period=P2)],
        [],
        id="turned-off-no-alerts-in-any-period",
    ),
    pytest.param(
        [ContractOff(), ContractUse(850), ContractSet(), ContractUse(900), ContractUse(1000)],
        [alert(100, 1000, 1000)],
        id="re-enabled-levels-already-reached-do-not-alert",
    ),
    pytest.param(
        [ContractUse(600), ContractSet((50, 80, 100)), ContractUse(700), ContractUse(800)],
        [alert(80, 1000, 800)],
        id="an-added-level-usage-has-passed-does-not-alert",
    ),
    pytest.param(
        [ContractUse(850), ContractSet((80, 100)), ContractUse(900), ContractSet((80,)), ContractUse(1000)],
        [alert(80, 1000, 850)],
        id="re-applying-re-arms-nothing-and-a-dropped-level-stays-silent",
    ),
    pytest.param(
        [ContractSet((50,)), ContractUse(500), ContractUse(100, period=P2), ContractUse(500, period=P2)],
        [alert(50, 1000, 500), alert(50, 1000, 500, P2)],
        id="the-setting-stays-for-later-periods",
    ),
    pytest.param(
        [ContractSet((50,), included=None, period=None), ContractUse(600)],
        [alert(50, 1000, 600)],
        id="a-setting-before-the-subscription-applies-once-it-comes",
    ),
    pytest.param(
        [ContractUse(900), ContractSet((80, 100), period=P2), ContractUse(800, period=P2)],
        [alert(80, 1000, 900), alert(80, 1000, 800, P2)],
        id="a-setting-in-a-new-period-starts-it-afresh",
    ),
]


@pytest.mark.parametrize("steps, expected", CONTRACT_SCENARIOS)
def test_contract_alert_scenarios(steps: list[ContractUse], expected: list[object]) -> None:
    assert run_contract(steps) == expected


@pytest.mark.parametrize(
    "steps",
    [
        [ContractUse(800), ContractUse(1000), ContractUse(5000)],
        [ContractSet((50, 80, 100)), ContractUse(500), ContractUse(1000)],
        [ContractUse(2000, included=1), ContractUse(900, period=P2)],
    ],
)
def test_seats_never_raise_a_contract_alert(steps: list[ContractUse | ContractSet]) -> None:
    assert run_contract(steps, metric="seats") == []


@pytest.mark.parametrize(
    ("metric", "setting", "expected"),
    [
        ("sms", None, (80, 100)),
        ("sms", ContractAlertSetting((50,), True), (50,)),
        ("sms", ContractAlertSetting((50, 80, 100), True), (50, 80, 100)),
        ("sms", ContractAlertSetting((50, 80), False), ()),
        ("fin_resolutions", ContractAlertSetting((100,), True), (100,)),
        ("seats", None, ()),
        ("seats", ContractAlertSetting((50, 80, 100), True), ()),
    ],
)
def test_the_levels_a_contract_alerts_at(metric: str, setting: ContractAlertSetting | None, expected: tuple) -> None:
    assert contract_levels_of(metric, setting) == expected


@pytest.mark.parametrize("levels", [(), (80, 50), (80, 80), (60,), (True,), (50, 80, 100, 120), [80]])
def test_contract_levels_are_distinct_choices_lowest_first(levels: tuple) -> None:
    with pytest.raises((TypeError, ValueError)):
        ContractAlertSetting(levels, True)


def test_contract_roll_clears_what_was_alerted_keeps_the_setting_and_never_goes_back() -> None:
    setting = ContractAlertSetting((80,), True, changed_by="admin")
    state = apply_contract_setting(ContractAlertState(), "sms", setting, 0, 1000, P1)
    state, _ = judge_contract_usage(state, "sms", 0, 900, 1000, P1)
    assert state.alerted == {(1000, 80)}
    rolled = roll_contract_to(state, P2)
    assert rolled == ContractAlertState(P2, frozenset(), setting)
    assert rolled.setting is not None and rolled.setting.changed_by == "admin"
    assert roll_contract_to(rolled, P1) is rolled


def test_a_negative_included_quantity_is_refused() -> None:
    with pytest.raises(ValueError):
        judge_contract_usage(ContractAlertState(), "sms", 0, 10, -1, P1)
    with pytest.raises(ValueError):
        apply_contract_setting(ContractAlertState(), "sms", ContractAlertSetting((80,), True), 0, -1, P1)


def test_a_contract_setting_for_a_period_older_than_the_state_is_a_callers_mistake() -> None:
    state = roll_contract_to(ContractAlertState(), P2)
    with pytest.raises(ValueError):
        apply_contract_setting(state, "sms", ContractAlertSetting((80,), True), 0, 1000, P1)


# ---------------------------------------------------------------------------------------------
# Alert ids

BASE_ID_FIELDS = ("workspace", "ws_42", "sms", utc(2026, 11, 1), 1000, 80)


def test_alert_id_is_stable_and_a_uuid() -> None:
    first = alert_id(*BASE_ID_FIELDS)
    assert first == alert_id(*BASE_ID_FIELDS)
    assert uuid.UUID(first).version == 5
    # Pinned: a change here would give every past crossing a new id.
    assert first == alert_id("workspace", "ws_42", "sms", utc(2026, 11, 1), 1000, 80)


def test_alert_id_is_the_same_for_one_instant_in_any_offset() -> None:
    new_york = timezone(timedelta(hours=-5))
    same_instant = utc(2026, 11, 1).astimezone(new_york)
    assert alert_id("workspace", "ws_42", "sms", same_instant, 1000, 80) == alert_id(*BASE_ID_FIELDS)


@pytest.mark.parametrize(
    "index, other",
    [
        (0, "contract"),
        (1, "ws_43"),
        (2, "email"),
        (3, utc(2026, 12, 1)),
        (4, 1001),
        (5, 100),
    ],
    ids=["scope", "owner", "metric", "period", "threshold", "level"],
)
def test_alert_id_differs_when_any_field_differs(index: int, other: object) -> None:
    fields = list(BASE_ID_FIELDS)
    fields[index] = other
    assert alert_id(*fields) != alert_id(*BASE_ID_FIELDS)  # type: ignore[arg-type]


def test_alert_id_fields_cannot_run_into_each_other() -> None:
    # Without a separator these two would join to the same text.
    assert alert_id("workspace", "ws_1", "sms", utc(2026, 11, 1), 12, 50) != alert_id(
        "workspace", "ws_11", "sms", utc(2026, 11, 1), 2, 50
    )


@pytest.mark.parametrize(
    "fields",
    [
        ("workspace", "ws\x1f42", "sms", utc(2026, 11, 1), 1000, 80),
        ("workspace", "", "sms", utc(2026, 11, 1), 1000, 80),
        ("workspace", "ws_42", "sms", datetime(2026, 11, 1), 1000, 80),
        ("workspace", "ws_42", "sms", utc(2026, 11, 1), 0, 80),
    ],
    ids=["separator-in-field", "empty-field", "naive-period-start", "zero-threshold"],
)
def test_alert_id_refuses_fields_that_would_make_it_ambiguous(fields: tuple) -> None:
    with pytest.raises(ValueError):
        alert_id(*fields)


# ---------------------------------------------------------------------------------------------
# Properties


@st.composite
def usage_walks(draw: st.DrawFn) -> tuple[AlertSetting, int, list[int]]:
    """A setting applied at some starting usage below it, and a walk of usage with corrections."""
    threshold = draw(st.integers(min_value=1, max_value=2_000))
    setting = AlertSetting(threshold, draw(st.booleans()), True)
    start = draw(st.integers(min_value=0, max_value=threshold - 1))
    steps = draw(st.lists(st.integers(min_value=-threshold, max_value=threshold), max_size=40))
    walk, usage = [], start
    for step in steps:
        usage = max(0, usage + step)
        walk.append(usage)
    return setting, start, walk


def judge_walk(setting: AlertSetting, start: int, walk: list[int]) -> list[tuple[int, int]]:
    """(step index, level) of every alert when `walk` follows a setting applied at `start`."""
    state, outcome = apply_setting(AlertState(), setting, start, P1, P2.start)
    assert outcome.status == "applied"
    alerts, before = [], start
    for index, after in enumerate(walk):
        state, reached = judge_usage(state, before, after, P1)
        if reached is not None:
            assert reached.usage == after and reached.threshold == setting.threshold
            alerts.append((index, reached.level))
        before = after
    return alerts


@settings(max_examples=300, deadline=None)
@given(usage_walks())
def test_each_level_alerts_at_most_once_in_increasing_order_and_only_when_reached(
    walk_case: tuple[AlertSetting, int, list[int]],
) -> None:
    setting, start, walk = walk_case
    alerts = judge_walk(setting, start, walk)
    levels = [level for _, level in alerts]
    assert levels == sorted(set(levels))
    assert set(levels) <= set(levels_of(setting))
    for index, level in alerts:
        assert reaches_level(walk[index], level, setting.threshold)
        # Usage had not reached it when the setting took effect, nor at any earlier step.
        assert not reaches_level(start, level, setting.threshold)
        assert not any(reaches_level(u, level, setting.threshold) for u in walk[:index])


@settings(max_examples=300, deadline=None)
@given(usage_walks())
def test_the_highest_level_a_walk_reaches_is_always_announced(
    walk_case: tuple[AlertSetting, int, list[int]],
) -> None:
    setting, start, walk = walk_case
    alerts = judge_walk(setting, start, walk)
    newly_reached = [
        level
        for level in levels_of(setting)
        if any(reaches_level(u, level, setting.threshold) for u in walk)
        and not reaches_level(start, level, setting.threshold)
    ]
    if newly_reached:
        assert max(level for _, level in alerts) == max(newly_reached)
    else:
        assert alerts == []


@settings(max_examples=200, deadline=None)
@given(
    included=st.integers(min_value=1, max_value=2_000),
    steps=st.lists(st.integers(min_value=-2_000, max_value=2_000), max_size=40),
)
def test_contract_levels_alert_at_most_once_in_increasing_order(included: int, steps: list[int]) -> None:
    state, usage, levels = ContractAlertState(), 0, []
    for step in steps:
        after = max(0, usage + step)
        state, reached = judge_contract_usage(state, "sms", usage, after, included, P1)
        if reached is not None:
            assert reaches_level(after, reached.level, included)
            levels.append(reached.level)
        usage = after
    assert levels == sorted(set(levels))
    assert set(levels) <= {80, 100}


@settings(max_examples=300, deadline=None)
@given(
    metric=st.sampled_from(["sms", "email", "fin_resolutions", "seats"]),
    chosen=st.sets(st.sampled_from(CONTRACT_LEVEL_CHOICES), min_size=1),
    enabled=st.booleans(),
    included=st.integers(min_value=1, max_value=2_000),
    start=st.integers(min_value=0, max_value=2_500),
    steps=st.lists(st.integers(min_value=-2_000, max_value=2_000), max_size=40),
)
def test_a_contract_alerts_only_at_chosen_levels_newly_reached_once_each(
    metric: str, chosen: set[int], enabled: bool, included: int, start: int, steps: list[int]
) -> None:
    setting = ContractAlertSetting(tuple(sorted(chosen)), enabled)
    state = apply_contract_setting(ContractAlertState(), metric, setting, start, included, P1)
    usage, levels, highest = start, [], start
    for step in steps:
        after = max(0, usage + step)
        state, reached = judge_contract_usage(state, metric, usage, after, included, P1)
        if reached is not None:
            assert reaches_level(after, reached.level, included) and reached.threshold == included
            levels.append(reached.level)
        usage, highest = after, max(highest, after)
    assert levels == sorted(set(levels))
    if metric == "seats" or not enabled:
        assert levels == []
        return
    assert set(levels) <= chosen
    newly_reached = [
        lv for lv in chosen if reaches_level(highest, lv, included) and not reaches_level(start, lv, included)
    ]
    assert (max(levels) if levels else None) == (max(newly_reached) if newly_reached else None)


CYCLES = [BillingCycle(1, "UTC"), BillingCycle(15, "Europe/Dublin"), BillingCycle(31, "America/St_Johns")]


@given(
    at=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)),
    old=st.sampled_from(CYCLES),
    new=st.sampled_from(CYCLES),
    used=st.integers(1, 2000),
)
@settings(max_examples=200, deadline=None)
def test_a_new_billing_cycle_moves_the_alert_onto_its_own_period_and_usage_there_still_alerts(
    at: datetime, old: BillingCycle, new: BillingCycle, used: int
) -> None:
    period = old.period_containing(at)
    state = AlertState(period=period, setting=AlertSetting(100, early_warnings=True, enabled=True))
    moved = onto_cycle(state, new)
    assert new.has_period(moved.period) and moved.period.contains(period.start)
    assert (moved.setting, moved.scheduled, moved.alerted) == (state.setting, state.scheduled, state.alerted)
    _, reached = judge_usage(moved, 0, used, moved.period)
    assert (reached is not None) == (used >= 50)
