"""Forecast warnings (CONTRACT 3.3, 5.1, *Addition: forecast warnings*): which level warns, against
cases worked by hand; once per level and period; when the next judgement is due; the record, its
mail, the setting's way through the command model, the codec and the settings document."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType

import orjson
import pytest
from meterwatch.core.alerts import (
    FORECAST_SCOPE,
    WORKSPACE_SCOPE,
    AlertSetting,
    AlertState,
    LevelReached,
    ScheduledSetting,
    alert_id,
)
from meterwatch.core.contracts import ContractTerms, WorkspaceProfile
from meterwatch.core.fin_limit import FinState, LimitSetting
from meterwatch.core.forecast import ForecastWarning, forecast, judge_forecast
from meterwatch.core.metering import MetricTally, PeriodTally, WorkspaceUsage
from meterwatch.core.periods import BillingCycle
from meterwatch.core.steps.alerting import forecast_tick_due
from meterwatch.core.steps.ticks import tick_due
from meterwatch.core.steps.workspace import BatchOutputs, CommandMessage, StepConfig, step
from meterwatch.core.workspace import WorkspaceState
from meterwatch.models.commands import CommandRejected, parse_command
from meterwatch.models.internal import PERIOD_TICK
from meterwatch.models.outputs import Kind, alert_record
from meterwatch.sinks.email import compose_alert_mail
from meterwatch.streams.codec import decode_workspace, encode_workspace
from meterwatch.streams.http.usage_view import settings_document
from meterwatch.streams.pipeline.period_timer import PeriodTickIndex

UTC_CYCLE = BillingCycle(1, "UTC")
DECEMBER = UTC_CYCLE.period_containing(datetime(2026, 12, 15, tzinfo=UTC))  # Dec 1 to Jan 1
JANUARY = UTC_CYCLE.next_period(DECEMBER)
DEC_22 = datetime(2026, 12, 22, tzinfo=UTC)  # 10 days left; Dec 15-21 are the 7 complete days of the rate
WARNING_SETTING = AlertSetting(400, early_warnings=True, enabled=True, forecast_warnings=True)
WORKSPACE = "ws_1"
CONFIG = StepConfig(window_ms=24 * 3600 * 1000, mail_enabled=True)


def paced(per_day: int, earlier: int = 0) -> PeriodTally:
    """``per_day`` on each of Dec 15-21 and ``earlier`` on Dec 1: the usage at Dec 22 00:00."""
    daily = {date(2026, 12, 1): earlier, **{date(2026, 12, day): per_day for day in range(15, 22)}}
    return PeriodTally(DECEMBER, earlier + 7 * per_day, daily=MappingProxyType(daily))


def judged(
    tally: PeriodTally, setting: AlertSetting, now: datetime = DEC_22, state: AlertState | None = None
) -> tuple[AlertState, ForecastWarning | None]:
    state = state or AlertState(DECEMBER, setting)
    projected = forecast("sms", tally, tally.usage, UTC_CYCLE, DECEMBER, now, setting)
    return judge_forecast(state, projected, tally.usage, DECEMBER, now)


@pytest.mark.parametrize(
    ("tally", "setting", "expected"),
    [
        # 10 a day, 250 used, 10 days left: 350 by the end. 50 % (200) is reached; 80 % (320)
        # needs 70 more, 7 days: Dec 29; 100 % (400) needs 150, 15 days: beyond the end.
        pytest.param(paced(10, 180), WARNING_SETTING, (80, 250, 350, date(2026, 12, 29)), id="80-not-100"),
        # Without early warnings only 100 % is a level, and it is not projected this period.
        pytest.param(paced(10, 180), replace(WARNING_SETTING, early_warnings=False), None, id="only-100-not-reached"),
        # 10 a day, 150 used: 250 by the end; 50 % (200) needs 50, 5 days: Dec 27; 80 % is not reached.
        pytest.param(paced(10, 80), WARNING_SETTING, (50, 150, 250, date(2026, 12, 27)), id="50-only"),
        # 30 a day, 210 used: 510 by the end; 80 % (320) on Dec 25 (110 more, 3.67 days) and
        # 100 % (400) on Dec 28 (190 more, 6.33 days): only the highest warns.
        pytest.param(paced(30), WARNING_SETTING, (100, 210, 510, date(2026, 12, 28)), id="highest-of-two"),
        # Every level reached already: nothing to warn of.
        pytest.param(paced(10, 330), WARNING_SETTING, None, id="all-reached"),
        # No pace: usage is projected to stay where it is.
        pytest.param(paced(0, 250), WARNING_SETTING, None, id="no-pace"),
        # Off by default.
        pytest.param(paced(30), AlertSetting(400, early_warnings=True, enabled=True), None, id="off-by-default"),
        pytest.param(paced(30), replace(WARNING_SETTING, enabled=False), None, id="alert-turned-off"),
    ],
)
def test_the_highest_level_projected_and_not_reached_warns(
    tally: PeriodTally, setting: AlertSetting, expected: tuple[int, int, int, date] | None
) -> None:
    state, warning = judged(tally, setting)
    assert state.forecast_judged_at == DEC_22
    if expected is None:
        assert warning is None
        assert state.forecast_warned == frozenset()
        return
    level, usage, projected_usage, on = expected
    assert warning == ForecastWarning(level, 400, usage, projected_usage, on, DECEMBER, "trailing_average")
    assert (400, level) in state.forecast_warned


def test_a_level_warns_once_a_period_and_a_lower_one_goes_with_a_higher() -> None:
    state, warning = judged(paced(30), WARNING_SETTING)
    assert warning is not None and warning.level == 100
    assert state.forecast_warned == {(400, 80), (400, 100)}
    later = DEC_22 + timedelta(days=1, minutes=1)
    state, again = judged(paced(30), WARNING_SETTING, later, state)
    assert again is None and state.forecast_judged_at == later


def test_a_level_alerted_already_never_warns() -> None:
    alerted = AlertState(DECEMBER, WARNING_SETTING, alerted=frozenset({(400, 80)}))
    state, warning = judged(paced(10, 180), WARNING_SETTING, state=alerted)
    assert warning is None and state.forecast_warned == frozenset()


def test_a_new_period_starts_afresh_and_an_earlier_one_is_judged_against_nothing() -> None:
    november = UTC_CYCLE.previous_period(DECEMBER)
    warned = AlertState(november, WARNING_SETTING, forecast_warned=frozenset({(400, 80)}))
    state, warning = judged(paced(10, 180), WARNING_SETTING, state=warned)
    assert warning is not None and warning.level == 80
    assert state.period == DECEMBER and state.forecast_warned == {(400, 80)}

    ahead = AlertState(JANUARY, WARNING_SETTING)
    assert judged(paced(10, 180), WARNING_SETTING, state=ahead) == (ahead, None)


def test_no_forecast_on_a_periods_first_day_warns_of_nothing() -> None:
    first_day = DECEMBER.start + timedelta(hours=9)
    tally = PeriodTally(DECEMBER, 300, daily=MappingProxyType({date(2026, 12, 1): 300}))
    state, warning = judged(tally, WARNING_SETTING, first_day)
    assert warning is None and state.forecast_judged_at == first_day


# ---------------------------------------------------------------------------------------------
# when the next judgement is due

NEW_YORK = BillingCycle(1, "America/New_York")
JUDGED = datetime(2026, 12, 4, 3, tzinfo=UTC)  # Dec 3 22:00 in New York


def alerts(**states: AlertState) -> MappingProxyType[str, AlertState]:
    return MappingProxyType(states)


@pytest.mark.parametrize(
    ("state", "due"),
    [
        pytest.param(WorkspaceState(), None, id="no-alerts"),
        pytest.param(
            WorkspaceState(alerts=alerts(sms=AlertState(DECEMBER, replace(WARNING_SETTING, forecast_warnings=False)))),
            None,
            id="warnings-off",
        ),
        pytest.param(
            WorkspaceState(alerts=alerts(sms=AlertState(DECEMBER, WARNING_SETTING, forecast_judged_at=JUDGED))),
            datetime(2026, 12, 5, tzinfo=UTC),
            id="next-utc-midnight",
        ),
        pytest.param(
            replace(
                WorkspaceState(alerts=alerts(sms=AlertState(DECEMBER, WARNING_SETTING, forecast_judged_at=JUDGED))),
                profile=WorkspaceProfile(ContractTerms("c_1", NEW_YORK, "USD")),
            ),
            datetime(2026, 12, 4, 5, tzinfo=UTC),  # midnight starting Dec 4 in New York
            id="next-local-midnight",
        ),
        pytest.param(
            WorkspaceState(
                alerts=alerts(
                    sms=AlertState(DECEMBER, WARNING_SETTING, forecast_judged_at=JUDGED),
                    email=AlertState(DECEMBER, WARNING_SETTING, forecast_judged_at=JUDGED - timedelta(days=2)),
                )
            ),
            datetime(2026, 12, 3, tzinfo=UTC),
            id="earliest-of-metrics",
        ),
        pytest.param(
            WorkspaceState(
                alerts=alerts(
                    sms=AlertState(
                        DECEMBER, replace(WARNING_SETTING, enabled=False), forecast_judged_at=JUDGED - timedelta(days=2)
                    )
                )
            ),
            None,
            id="alert-off",
        ),
        pytest.param(
            WorkspaceState(
                alerts=alerts(
                    sms=AlertState(
                        DECEMBER,
                        AlertSetting(400, early_warnings=True, enabled=True),
                        ScheduledSetting(WARNING_SETTING, JANUARY.start),
                    )
                )
            ),
            JANUARY.start,
            id="scheduled-with-warnings",
        ),
        pytest.param(
            WorkspaceState(alerts=alerts(sms=AlertState(DECEMBER, WARNING_SETTING))),
            datetime(1970, 1, 1, tzinfo=UTC),
            id="never-judged",
        ),
    ],
)
def test_the_forecasts_are_due_after_the_local_midnight_after_their_last_judgement(
    state: WorkspaceState, due: datetime | None
) -> None:
    assert forecast_tick_due(state) == due


def test_a_tick_is_due_for_fin_or_the_forecasts_whichever_comes_first() -> None:
    november = UTC_CYCLE.previous_period(DECEMBER)
    fin = FinState("ws", "disabled", november, 5, LimitSetting(5, True))
    warning = alerts(sms=AlertState(DECEMBER, WARNING_SETTING, forecast_judged_at=JUDGED))
    assert tick_due(WorkspaceState(fin=fin)) == DECEMBER.start
    assert tick_due(WorkspaceState(alerts=warning)) == datetime(2026, 12, 5, tzinfo=UTC)
    assert tick_due(WorkspaceState(alerts=warning, fin=fin)) == DECEMBER.start
    value = encode_workspace(WorkspaceState(alerts=warning))
    index = PeriodTickIndex()
    assert index.due([("ws", value)], datetime(2026, 12, 4, 23, 59, tzinfo=UTC)) == []
    assert index.due([("ws", value)], datetime(2026, 12, 5, 0, 0, 10, tzinfo=UTC)) == ["ws"]


# ---------------------------------------------------------------------------------------------
# the workspace step


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def alert_command(command_id: str, **fields: object) -> dict[str, object]:
    return {
        "type": "alert_settings",
        "command_id": command_id,
        "metric": "sms",
        "threshold": 400,
        "early_warnings": True,
        "enabled": True,
        **fields,
    }


def with_usage(tally: PeriodTally) -> WorkspaceState:
    tallies = MappingProxyType({"sms": MetricTally("sms", (tally,))})
    profile = WorkspaceProfile(billing_contacts=("billing@example.com",))
    return WorkspaceState(usage=WorkspaceUsage(tallies), profile=profile)


def run(state: WorkspaceState, *messages: tuple[dict[str, object], datetime]) -> tuple[WorkspaceState, BatchOutputs]:
    out = BatchOutputs()
    first = state.usage.applied_through + 1  # past the replay guard
    inbox = [CommandMessage(offset, command, _ms(at)) for offset, (command, at) in enumerate(messages, first)]
    state, _ = step(WORKSPACE, state, inbox, {}, CONFIG, out)
    return state, out


def test_a_setting_turning_warnings_on_warns_at_once_and_ticks_never_repeat_it() -> None:
    state, out = run(with_usage(paced(10, 180)), (alert_command("a-1", forecast_warnings=True), DEC_22))
    [warning] = out.outputs.of(Kind.ALERT)
    assert warning == {
        "alert_id": alert_id(FORECAST_SCOPE, WORKSPACE, "sms", DECEMBER.start, 400, 80),
        "scope": "workspace",
        "workspace_id": WORKSPACE,
        "contract_id": None,
        "metric": "sms",
        "level": 80,
        "threshold": 400,
        "usage": 250,
        "period_start": "2026-12-01T00:00:00Z",
        "period_end": "2027-01-01T00:00:00Z",
        "estimated_cost": None,
        "recipients": ["billing@example.com"],
        "triggered_at": "2026-12-22T00:00:00Z",
        "cause_event_id": None,
        "kind": "forecast",
        "projected_usage": 350,
        "projected_date": "2026-12-29",
        "method": "trailing_average",
    }
    assert warning["alert_id"] != alert_id(WORKSPACE_SCOPE, WORKSPACE, "sms", DECEMBER.start, 400, 80)
    [mail] = out.outputs.of(Kind.MAIL_REQUEST)
    assert orjson.loads(mail)["kind"] == "alert"
    assert state.alerts["sms"].forecast_warned == {(400, 80)}

    tick = {"type": PERIOD_TICK}
    state, out = run(state, (tick, DEC_22 + timedelta(days=1, seconds=5)))
    assert out.outputs.of(Kind.ALERT) == []
    assert forecast_tick_due(state) == DEC_22 + timedelta(days=2)


def test_a_tick_in_a_new_period_judges_afresh() -> None:
    state, _ = run(with_usage(paced(10, 180)), (alert_command("a-1", forecast_warnings=True), DEC_22))
    # January's usage: 100 on Jan 1, a steady 100 a day projects 3,100 by the end.
    january = PeriodTally(JANUARY, 100, daily=MappingProxyType({date(2027, 1, 1): 100}))
    tally = MetricTally("sms", (*state.usage.tallies["sms"].periods, january))
    state = replace(state, usage=WorkspaceUsage(MappingProxyType({"sms": tally})))
    state, out = run(state, ({"type": PERIOD_TICK}, JANUARY.start + timedelta(days=1, seconds=5)))
    [warning] = out.outputs.of(Kind.ALERT)
    # 100 a day from Jan 2 00:00: 200 (50 %) on Jan 3, 320 (80 %) on Jan 4, 400 (100 %) on Jan 5.
    assert (warning["level"], warning["period_start"], warning["projected_date"]) == (
        100,
        "2027-01-01T00:00:00Z",
        "2027-01-05",
    )
    assert state.alerts["sms"].forecast_warned == {(400, 50), (400, 80), (400, 100)}


def test_without_forecast_warnings_a_setting_and_a_tick_publish_only_what_they_did() -> None:
    state, out = run(with_usage(paced(30)), (alert_command("a-1"), DEC_22), ({"type": PERIOD_TICK}, DEC_22))
    assert [output.kind for output in out.outputs] == [Kind.COMMAND_RESULT]
    assert state.alerts["sms"].setting.forecast_warnings is False
    assert state.alerts["sms"].forecast_judged_at is None


def test_an_ordinary_alert_record_keeps_its_fields() -> None:
    record = alert_record(
        WORKSPACE_SCOPE,
        WORKSPACE,
        "sms",
        LevelReached(80, 400, 320, DECEMBER),
        workspace_id=WORKSPACE,
        contract_id=None,
        estimated_cost=None,
        recipients=[],
        triggered_at=DEC_22,
        cause_event_id="e1",
    )
    assert list(record) == [
        "alert_id",
        "scope",
        "workspace_id",
        "contract_id",
        "metric",
        "level",
        "threshold",
        "usage",
        "period_start",
        "period_end",
        "estimated_cost",
        "recipients",
        "triggered_at",
        "cause_event_id",
    ]


# ---------------------------------------------------------------------------------------------
# the mail, the command model, the codec and the settings document


def test_the_mail_says_which_level_and_by_when() -> None:
    _, out = run(with_usage(paced(10, 180)), (alert_command("a-1", forecast_warnings=True), DEC_22))
    [warning] = out.outputs.of(Kind.ALERT)
    mail = compose_alert_mail(warning, "billing@example.com", sender="alerts@example.com")
    assert mail["Subject"] == "SMS usage projected to reach 80% of your alert (400) by Dec 29 - workspace ws_1"
    lines = [line.split() for line in mail.get_content().splitlines()]
    assert ["Projected", "at", "period", "end:", "350"] in lines
    assert ["Usage", "this", "period:", "250"] in lines
    assert ["Projected", "by:", "Dec", "29"] in lines


def command_document(**fields: object) -> bytes:
    return orjson.dumps(
        {
            "command_id": "c1",
            "issued_at": "2026-12-04T12:00:00Z",
            "workspace_id": WORKSPACE,
            "actor": {"id": "u1", "billing_permission": True},
            **alert_command("c1"),
            **fields,
        }
    )


def test_the_command_takes_forecast_warnings_as_a_strict_optional_bool() -> None:
    assert parse_command(command_document()).forecast_warnings is False  # type: ignore[union-attr]
    assert parse_command(command_document(forecast_warnings=True)).forecast_warnings is True  # type: ignore[union-attr]
    with pytest.raises(CommandRejected, match="forecast_warnings"):
        parse_command(command_document(forecast_warnings="yes"))


def test_the_codec_keeps_warnings_and_reads_old_values_as_off() -> None:
    setting = replace(WARNING_SETTING, changed_by="u1", changed_at=JUDGED)
    state = WorkspaceState(
        alerts=alerts(
            sms=AlertState(DECEMBER, setting, forecast_warned=frozenset({(400, 80)}), forecast_judged_at=JUDGED),
            email=AlertState(DECEMBER, AlertSetting(10, True, True), ScheduledSetting(WARNING_SETTING, JANUARY.start)),
        )
    )
    back = decode_workspace(encode_workspace(state))
    assert back == state
    assert back.alerts["sms"].setting.changed_by == "u1"  # type: ignore[union-attr]
    assert back.alerts["email"].scheduled.setting.forecast_warnings is True  # type: ignore[union-attr]

    old = WorkspaceState(alerts=alerts(sms=AlertState(DECEMBER, AlertSetting(10, True, True, "u1", JUDGED))))
    raw = encode_workspace(old)
    assert b"forecast" not in raw
    read = decode_workspace(raw)
    assert read == old and read.alerts["sms"].setting.forecast_warnings is False  # type: ignore[union-attr]


def test_the_settings_document_shows_the_setting() -> None:
    state = WorkspaceState(
        alerts=alerts(
            sms=AlertState(DECEMBER, WARNING_SETTING), email=AlertState(DECEMBER, AlertSetting(5, False, True))
        )
    )
    document = settings_document(WORKSPACE, state, DEC_22)
    assert document["alerts"]["sms"]["forecast_warnings"] is True
    assert document["alerts"]["email"]["forecast_warnings"] is False
