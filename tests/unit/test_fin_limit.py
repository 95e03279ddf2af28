import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meterwatch.core.fin_limit import (
    DISABLED,
    ENABLED,
    FinState,
    LimitSetting,
    PeriodStarted,
    SettingChanged,
    Transition,
    UsageChanged,
    fin_state_by_rule,
    next_fin_state,
    should_notify,
    transition_id,
)
from meterwatch.core.periods import CALENDAR_MONTH_UTC
from meterwatch.core.steps.fin import limit_bounds
from meterwatch.core.workspace import WorkspaceState

WS = "ws_42"
JAN = CALENDAR_MONTH_UTC.period_containing(datetime(2026, 1, 10, tzinfo=UTC))
FEB = CALENDAR_MONTH_UTC.next_period(JAN)
MAR = CALENDAR_MONTH_UTC.next_period(FEB)
PERIODS = (JAN, FEB, MAR)


def at(period, minutes=0):
    return period.start + timedelta(hours=1, minutes=minutes)


def on(limit):
    return LimitSetting(limit, True)


def off(limit):
    return LimitSetting(limit, False)


def stored(usage, setting, period=JAN, transitions_in_period=0):
    """A consistent stored state: its `state` follows from usage and setting."""
    return FinState(WS, fin_state_by_rule(setting, usage), period, usage, setting, transitions_in_period)


def usage(value, period=JAN):
    return UsageChanged(value, period, at(period, value))


def setting(limit_setting, current_usage, period=JAN):
    return SettingChanged(limit_setting, current_usage, period, at(period, 30))


def started(period):
    return PeriodStarted(period, period.start)


# --- every reason, in order, on one workspace ------------------------------------------------

LIFECYCLE = [
    # (input, Fin's state afterwards, reason of the transition or None)
    (setting(on(5), 0), ENABLED, None),
    (usage(4), ENABLED, None),
    (usage(5), DISABLED, "limit_reached"),  # usage exactly at the limit
    (usage(4), ENABLED, "usage_dropped"),  # a counted conversation retracted: -1
    (setting(on(3), 4), DISABLED, "limit_lowered"),
    (setting(on(10), 4), ENABLED, "limit_raised"),
    (setting(on(4), 4), DISABLED, "limit_lowered"),  # a limit at exactly current usage
    (setting(off(4), 4), ENABLED, "limit_turned_off"),
    (setting(on(6), 4), ENABLED, None),  # re-enabled above usage: nothing to publish
    (usage(6), DISABLED, "limit_reached"),  # reached again after the re-enable
    (started(FEB), ENABLED, "new_period"),
]


def test_lifecycle_emits_every_reason_in_order_with_numbered_ids():
    state = FinState.initial(WS)
    emitted = []
    for step, (event, expected_state, expected_reason) in enumerate(LIFECYCLE):
        state, transition = next_fin_state(state, event)
        assert state.state == expected_state, step
        if expected_reason is None:
            assert transition is None, step
            continue
        assert transition is not None, step
        assert (transition.state, transition.reason) == (expected_state, expected_reason)
        assert transition.usage == state.usage
        assert transition.limit == state.setting.limit
        assert transition.period == state.period
        assert transition.at == event.at
        emitted.append(transition)

    assert [t.reason for t in emitted] == [
        "limit_reached",
        "usage_dropped",
        "limit_lowered",
        "limit_raised",
        "limit_lowered",
        "limit_turned_off",
        "limit_reached",
        "new_period",
    ]
    # Seven transitions in January, then the count restarts for February.
    expected_ids = [transition_id(WS, JAN.start, n) for n in range(1, 8)]
    expected_ids.append(transition_id(WS, FEB.start, 1))
    assert [t.transition_id for t in emitted] == expected_ids
    assert (state.period, state.usage, state.transitions_in_period) == (FEB, 0, 1)


def test_replaying_the_same_inputs_yields_the_same_transitions():
    def run():
        state, out = FinState.initial(WS), []
        for event, _, _ in LIFECYCLE:
            state, transition = next_fin_state(state, event)
            out.append(transition)
        return state, out

    assert run() == run()


# --- single steps ----------------------------------------------------------------------------

STEPS = [
    # (id, stored state, input, state afterwards, reason or None)
    ("limit 0 disables at once", FinState.initial(WS), setting(on(0), 0), DISABLED, "limit_lowered"),
    ("limit 0 stays disabled in a new period", stored(0, on(0)), started(FEB), DISABLED, None),
    ("usage exactly at the limit", stored(9, on(10)), usage(10), DISABLED, "limit_reached"),
    ("usage jumps past the limit", stored(9, on(10)), usage(12), DISABLED, "limit_reached"),
    ("retraction of a counted conversation", stored(10, on(10)), usage(9), ENABLED, "usage_dropped"),
    ("retraction that stays at the limit", stored(11, on(10)), usage(10), DISABLED, None),
    ("repeated usage while enabled", stored(3, on(10)), usage(3), ENABLED, None),
    ("repeated usage while disabled", stored(10, on(10)), usage(10), DISABLED, None),
    ("same setting again while enabled", stored(3, on(10)), setting(on(10), 3), ENABLED, None),
    ("same setting again while disabled", stored(10, on(10)), setting(on(10), 10), DISABLED, None),
    ("disabled-limit setting while enabled", stored(3, None), setting(off(1), 3), ENABLED, None),
    ("limit above usage while enabled", stored(3, None), setting(on(4), 3), ENABLED, None),
    ("new limit below usage", stored(3, None), setting(on(2), 3), DISABLED, "limit_lowered"),
    ("turned-off limit re-enabled below usage", stored(3, off(2)), setting(on(2), 3), DISABLED, "limit_lowered"),
    ("raised but still reached", stored(10, on(5)), setting(on(8), 10), DISABLED, None),
    ("turned off while enabled", stored(3, on(10)), setting(off(10), 3), ENABLED, None),
    ("new period while enabled", stored(3, on(10)), started(FEB), ENABLED, None),
    ("new period while disabled", stored(10, on(10)), started(FEB), ENABLED, "new_period"),
    ("first period is adopted, not a new period", FinState.initial(WS), started(JAN), ENABLED, None),
    # a command carrying both a new setting and new usage names the actual cause
    ("setting with higher usage, same limit", stored(4, on(5)), setting(on(5), 5), DISABLED, "limit_reached"),
    ("setting raised but usage rose past it", stored(3, on(5)), setting(on(6), 7), DISABLED, "limit_reached"),
    ("setting with lower usage, same limit", stored(5, on(5)), setting(on(5), 4), ENABLED, "usage_dropped"),
    # a period change that coincides with a usage change
    ("later-period usage below the limit", stored(10, on(10)), usage(2, FEB), ENABLED, "new_period"),
    ("later-period usage still at the limit", stored(10, on(10)), usage(10, FEB), DISABLED, None),
    ("later-period usage reaches the limit", stored(3, on(10)), usage(10, FEB), DISABLED, "limit_reached"),
    ("later-period setting lowers the limit", stored(3, on(10)), setting(on(1), 1, FEB), DISABLED, "limit_lowered"),
    ("later-period setting off, limit 0", stored(0, on(0)), setting(off(0), 0, FEB), ENABLED, "limit_turned_off"),
    ("later-period setting off, new period", stored(10, on(10)), setting(off(10), 2, FEB), ENABLED, "new_period"),
]


@pytest.mark.parametrize(
    ("before", "event", "expected_state", "expected_reason"),
    [step[1:] for step in STEPS],
    ids=[step[0] for step in STEPS],
)
def test_single_step(before, event, expected_state, expected_reason):
    after, transition = next_fin_state(before, event)
    assert after.state == expected_state
    assert after.state == fin_state_by_rule(after.setting, after.usage)
    if expected_reason is None:
        assert transition is None
        return
    assert transition.state == expected_state
    assert transition.reason == expected_reason
    assert after.transitions_in_period >= 1
    assert transition.transition_id == transition_id(WS, after.period.start, after.transitions_in_period)


def test_a_roll_over_restarts_usage_and_the_transition_count():
    before = stored(10, on(10), JAN, transitions_in_period=3)
    after, transition = next_fin_state(before, usage(10, FEB))
    assert transition is None
    assert (after.period, after.usage, after.transitions_in_period) == (FEB, 10, 0)

    after, transition = next_fin_state(before, started(FEB))
    assert (after.period, after.usage, after.transitions_in_period) == (FEB, 0, 1)
    assert transition.transition_id == transition_id(WS, FEB.start, 1)


@pytest.mark.parametrize(
    "before",
    [stored(10, on(10), FEB, 2), stored(3, on(10), FEB, 1), stored(0, None, FEB)],
    ids=["disabled", "enabled", "no setting"],
)
@pytest.mark.parametrize(
    "event",
    [usage(0, JAN), usage(100, JAN), started(JAN), started(FEB)],
    ids=["late drop", "late rise", "stale timer", "repeated timer"],
)
def test_inputs_for_an_earlier_or_already_started_period_change_nothing(before, event):
    assert next_fin_state(before, event) == (before, None)


def test_a_setting_for_an_earlier_period_is_judged_on_current_usage():
    before = stored(3, on(10), FEB, 1)
    after, transition = next_fin_state(before, setting(on(2), 50, JAN))
    assert (after.period, after.usage, after.setting) == (FEB, 3, on(2))
    assert (transition.state, transition.reason, transition.usage) == (DISABLED, "limit_lowered", 3)
    assert transition.transition_id == transition_id(WS, FEB.start, 2)


def test_same_start_adopts_the_inputs_period():
    # A contract change can move a period's end without moving its start.
    longer = type(JAN)(JAN.start, JAN.end + timedelta(days=3))
    after, transition = next_fin_state(stored(3, on(10)), usage(4, longer))
    assert transition is None
    assert (after.period, after.usage) == (longer, 4)


# --- transition ids and notification ---------------------------------------------------------


def test_transition_id_is_a_stable_uuid():
    first = transition_id(WS, JAN.start, 1)
    assert first == transition_id(WS, JAN.start, 1)
    assert uuid.UUID(first).version == 5


def test_transition_id_is_the_same_instant_in_any_zone():
    in_new_york = JAN.start.astimezone(ZoneInfo("America/New_York"))
    assert transition_id(WS, in_new_york, 1) == transition_id(WS, JAN.start, 1)


@pytest.mark.parametrize(
    "other",
    [("ws_42", FEB.start, 1), ("ws_42", JAN.start, 2), ("ws_43", JAN.start, 1)],
    ids=["period", "sequence", "workspace"],
)
def test_transition_ids_differ_across_period_sequence_and_workspace(other):
    assert transition_id(*other) != transition_id(WS, JAN.start, 1)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("ws\x1f1", JAN.start, 1), ValueError),
        (("", JAN.start, 1), ValueError),
        ((WS, JAN.start.replace(tzinfo=None), 1), ValueError),
        ((WS, JAN.start, -1), ValueError),
        ((WS, JAN.start, True), TypeError),
    ],
    ids=["separator in workspace", "empty workspace", "naive start", "negative", "bool"],
)
def test_transition_id_rejects_ambiguous_input(args, error):
    with pytest.raises(error):
        transition_id(*args)


@pytest.mark.parametrize(
    ("state", "reason", "notify"),
    [
        (DISABLED, "limit_reached", True),
        (DISABLED, "limit_lowered", True),
        (ENABLED, "usage_dropped", False),
        (ENABLED, "limit_raised", False),
        (ENABLED, "limit_turned_off", False),
        (ENABLED, "new_period", False),
    ],
)
def test_should_notify_only_when_fin_becomes_disabled(state, reason, notify):
    transition = Transition(state, reason, 5, 5, JAN, at(JAN), transition_id(WS, JAN.start, 1))
    assert should_notify(transition) is notify


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: LimitSetting(-1, True), ValueError),
        (lambda: LimitSetting(True, True), TypeError),
        (lambda: LimitSetting(5, 1), TypeError),
        (lambda: FinState(WS, DISABLED, JAN, 3, on(10)), ValueError),
        (lambda: FinState(WS, ENABLED, JAN, 10, on(10)), ValueError),
        (lambda: FinState(WS, "paused", JAN, 0, None), ValueError),
        (lambda: FinState(WS, ENABLED, JAN, -1, None), ValueError),
        (lambda: UsageChanged(-1, JAN, at(JAN)), ValueError),
        (lambda: UsageChanged(1, JAN, datetime(2026, 1, 2)), ValueError),
        (lambda: PeriodStarted(JAN.start, JAN.start), TypeError),
        (lambda: SettingChanged(5, 0, JAN, at(JAN)), TypeError),
    ],
    ids=[
        "negative limit",
        "bool limit",
        "int enabled",
        "disabled below the limit",
        "enabled at the limit",
        "unknown state",
        "negative usage",
        "negative usage input",
        "naive time",
        "period not a BillingPeriod",
        "setting not a LimitSetting",
    ],
)
def test_invalid_values_are_rejected(build, error):
    with pytest.raises(error):
        build()


def test_an_unknown_input_is_rejected():
    with pytest.raises(TypeError):
        next_fin_state(FinState.initial(WS), object())


# --- property: any sequence of inputs --------------------------------------------------------

periods = st.sampled_from(PERIODS)
settings = st.builds(LimitSetting, st.integers(0, 6), st.booleans())
inputs = st.one_of(
    st.builds(lambda p, u: UsageChanged(u, p, at(p)), periods, st.integers(0, 8)),
    st.builds(lambda p, s, u: SettingChanged(s, u, p, at(p)), periods, settings, st.integers(0, 8)),
    st.builds(lambda p: PeriodStarted(p, p.start), periods),
)


@given(st.lists(inputs, max_size=40))
def test_any_sequence_alternates_states_and_ends_where_the_rule_says(events):
    state = FinState.initial(WS)
    transitions = []
    # An independent model of the rule: the latest period seen, its latest usage, the
    # latest setting (whatever period its command named).
    model_period, model_usage, model_setting = None, 0, None
    for event in events:
        if model_period is None or event.period.start > model_period.start:
            model_period = event.period
            model_usage = 0 if isinstance(event, PeriodStarted) else event.usage
        elif event.period == model_period and not isinstance(event, PeriodStarted):
            model_usage = event.usage
        if isinstance(event, SettingChanged):
            model_setting = event.setting

        state, transition = next_fin_state(state, event)
        if transition is not None:
            transitions.append(transition)
            assert transition.state == state.state
            assert transition.period == state.period

    published = [ENABLED] + [t.state for t in transitions]
    assert all(a != b for a, b in zip(published, published[1:], strict=False))
    for t in transitions:
        expected = (
            {"limit_reached", "limit_lowered"}
            if t.state == DISABLED
            else {"usage_dropped", "limit_raised", "limit_turned_off", "new_period"}
        )
        assert t.reason in expected
    assert len({t.transition_id for t in transitions}) == len(transitions)

    assert (state.period, state.usage, state.setting) == (model_period, model_usage, model_setting)
    reached = model_setting is not None and model_setting.enabled and model_usage >= model_setting.limit
    assert state.state == (DISABLED if reached else ENABLED)
    # The latest published message is the real state (or nothing was ever published and
    # Fin was never disabled).
    assert (transitions[-1].state if transitions else ENABLED) == state.state


# --- limits on other metrics -------------------------------------------------------------------


def test_fins_transition_ids_name_no_metric():
    name = "\x1f".join((WS, JAN.start.isoformat(), "1"))
    expected = str(uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL, "meterwatch:fin-limit-transition"), name))
    assert transition_id(WS, JAN.start, 1) == transition_id(WS, JAN.start, 1, "fin_resolutions") == expected


def test_transition_ids_differ_across_metrics():
    ids = {transition_id(WS, JAN.start, 1, metric) for metric in ("fin_resolutions", "sms", "whatsapp", "email")}
    assert len(ids) == 4


@given(st.lists(inputs, max_size=40), st.sampled_from(["sms", "whatsapp", "messages_sent"]))
def test_a_limit_on_another_metric_makes_the_same_decisions_as_fins_with_ids_of_its_own(events, metric):
    fin, other = FinState.initial(WS), FinState.initial(WS, metric)
    for event in events:
        fin, fin_transition = next_fin_state(fin, event)
        other, other_transition = next_fin_state(other, event)
        assert other.metric == metric
        assert (other.state, other.usage, other.period) == (fin.state, fin.usage, fin.period)
        assert (fin_transition is None) == (other_transition is None)
        if fin_transition is not None:
            assert (other_transition.state, other_transition.reason) == (fin_transition.state, fin_transition.reason)
            assert other_transition.transition_id == transition_id(
                WS, other.period.start, other.transitions_in_period, metric
            )
            assert other_transition.transition_id != fin_transition.transition_id


@pytest.mark.parametrize(
    "limits, period, bounds",
    [
        pytest.param({}, JAN, (0, 2**63), id="no-limit"),
        pytest.param({"sms": stored(3, None)}, JAN, (0, 2**63), id="no-setting"),
        pytest.param({"sms": stored(3, off(5))}, JAN, (0, 2**63), id="turned-off"),
        pytest.param({"sms": stored(3, on(5))}, JAN, (0, 5), id="enabled-below"),
        pytest.param({"sms": stored(7, on(5))}, JAN, (5, 2**63), id="disabled-above"),
        pytest.param({"sms": stored(7, on(5), FEB)}, JAN, (0, 2**63), id="earlier-period"),
        pytest.param({"sms": stored(3, on(5))}, FEB, (0, 5), id="enabled-rolls-over"),
        pytest.param({"sms": stored(7, on(5))}, FEB, None, id="disabled-rolls-over"),
    ],
)
def test_the_quiet_bounds_of_a_limit_on_another_metric(limits, period, bounds):
    limits = {metric: replace(limit, metric=metric) for metric, limit in limits.items()}
    assert limit_bounds(WorkspaceState(limits=limits), "sms", period) == bounds


def test_fin_is_always_judged_event_by_event():
    assert limit_bounds(WorkspaceState(), "fin_resolutions", JAN) is None
