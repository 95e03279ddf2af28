"""Table values to bytes and back: every value reads back equal, in the stored form.

Times and days are stored as their ``isoformat()`` text, the form values already in tables and
changelogs have; the encoder writes them through orjson, so these properties pin both.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meterwatch.core.alerts import AlertSetting, AlertState, ContractAlertSetting, ContractAlertState, ScheduledSetting
from meterwatch.core.contract_usage import ContractPeriod, ContractUsage
from meterwatch.core.contracts import WorkspaceProfile
from meterwatch.core.fin_limit import FinState, LimitSetting
from meterwatch.core.mail_cap import MailHour
from meterwatch.core.metering import MetricTally, PeriodTally, WorkspaceUsage
from meterwatch.core.periods import BillingPeriod
from meterwatch.core.plain import PLAIN_METRICS, PlainTally, PlainWorkspace, plain_of, state_of
from meterwatch.core.workspace import ContractOthers, WorkspaceState
from meterwatch.streams import codec
from meterwatch.streams.codec import (
    EncodedConversations,
    decode_contract_usage,
    decode_workspace,
    encode_contract_usage,
    encode_workspace,
)

ZONES = [UTC, ZoneInfo("America/St_Johns"), ZoneInfo("Asia/Kathmandu"), ZoneInfo("Europe/Dublin")]

instants = st.builds(
    lambda seconds, micros, zone: (
        datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds, microseconds=micros)
    ).astimezone(zone),
    st.integers(0, 20 * 365 * 86400),
    st.one_of(st.just(0), st.integers(0, 999_999), st.integers(0, 999).map(lambda ms: ms * 1000)),
    st.sampled_from(ZONES),
)


@st.composite
def periods(draw: st.DrawFn) -> BillingPeriod:
    start = draw(instants)
    return BillingPeriod(start, start + timedelta(days=draw(st.integers(28, 31)), microseconds=draw(st.integers(0, 9))))


@st.composite
def period_tallies(draw: st.DrawFn) -> PeriodTally:
    period = draw(periods())
    days = draw(st.dictionaries(st.dates(date(2020, 1, 1), date(2040, 1, 1)), st.integers(-(2**53), 2**53), max_size=5))
    return PeriodTally(
        period=period,
        usage=draw(st.integers(0, 2**53 - 1)),
        last_updated=draw(st.none() | instants),
        daily=MappingProxyType(days),
        conversations=frozenset(draw(st.lists(st.text(max_size=12), max_size=4))),
        seats_carried_in=draw(st.integers(0, 1000)),
    )


@st.composite
def workspace_states(draw: st.DrawFn) -> WorkspaceState:
    metrics = draw(st.lists(st.sampled_from(["email", "sms", "seats", "fin_resolutions"]), unique=True, max_size=3))
    tallies = {m: MetricTally(m, tuple(draw(st.lists(period_tallies(), max_size=3)))) for m in metrics}
    usage = WorkspaceUsage(MappingProxyType(tallies), draw(st.integers(-1, 2**40)))
    others = draw(
        st.none()
        | st.builds(lambda p, n: ContractOthers(p, MappingProxyType({"sms": n})), periods(), st.integers(0, 99))
    )
    fin = draw(st.none() | st.builds(lambda p: FinState("ws", "disabled", p, 3, LimitSetting(3, True), 1), periods()))
    limited = draw(st.lists(st.sampled_from(["sms", "whatsapp", "email"]), unique=True, max_size=2))
    limits = {
        metric: draw(
            st.builds(lambda p, m=metric: FinState("ws", "enabled", p, 2, LimitSetting(9, True), 0, m), periods())
        )
        for metric in limited
    }
    recent = draw(st.dictionaries(st.text(min_size=1, max_size=12), st.integers(0, 2**45), max_size=3))
    mail_hour = draw(st.none() | st.builds(MailHour, st.integers(0, 2**31), st.integers(0, 10**6)))
    return WorkspaceState(
        usage=usage,
        contract_others=others,
        fin=fin,
        limits=MappingProxyType(limits),
        recent_commands=MappingProxyType(recent),
        mail_hour=mail_hour,
    )


@st.composite
def lived_in_tallies(draw: st.DrawFn) -> PeriodTally:
    """A period's tally with up to a month of days and a few Fin conversations, or enough of them
    for its encoding to be kept."""
    period = draw(periods())
    first = draw(st.dates(date(2020, 1, 1), date(2039, 1, 1)))
    days = {first + timedelta(days=i): draw(st.integers(-9, 10**6)) for i in range(draw(st.integers(0, 31)))}
    return PeriodTally(
        period=period,
        usage=draw(st.integers(0, 2**53 - 1)),
        last_updated=draw(st.none() | instants),
        daily=MappingProxyType(days),
        conversations=frozenset(
            draw(st.lists(st.text(max_size=40), max_size=4) | st.sets(st.text(min_size=8), min_size=64, max_size=66))
        ),
        seats_carried_in=draw(st.integers(0, 1000)),
    )


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    workspace_states(),
    st.lists(st.tuples(st.sampled_from(["email", "sms", "seats", "fin_resolutions"]), lived_in_tallies()), max_size=8),
)
def test_encodings_kept_from_earlier_values_give_the_bytes_of_a_fresh_encoding(
    state: WorkspaceState, changes: list[tuple[str, PeriodTally]]
) -> None:
    """Events change one metric's newest period and keep every other tally object: the value
    written after each must be, byte for byte, what encoding it with nothing kept gives."""
    states = [state]
    for metric, newest in changes:
        tallies = dict(state.usage.tallies)
        older = tallies[metric].periods[:-1] if metric in tallies else ()
        tallies[metric] = MetricTally(metric, (*older, newest))
        state = WorkspaceState(usage=WorkspaceUsage(MappingProxyType(tallies), state.usage.applied_through + 1))
        states.append(state)
    written = [encode_workspace(s) for s in states]
    written_again = [encode_workspace(s) for s in states]  # every large set now kept
    for index, each in enumerate(states):
        codec.encoded_conversations.clear()
        fresh = encode_workspace(each)
        assert written[index] == fresh == written_again[index]
        assert decode_workspace(fresh) == each


def _conversations(count: int, first: int = 0) -> frozenset[str]:
    return frozenset(f"conversation-{first + i:05d}" for i in range(count))


def test_once_the_limit_is_reached_sets_are_encoded_in_place_until_a_kept_one_is_gone() -> None:
    sets = [_conversations(100, first=1000 * i) for i in range(8)]
    one = len(orjson.dumps(sorted(sets[0])))
    kept = EncodedConversations(limit_bytes=5 * one)
    first = [kept.encoded(each) for each in sets[:5]]
    assert kept.bytes == 5 * one
    later = kept.encoded(sets[5])
    assert later == sorted(sets[5]), "no room: encoded in place"
    assert [kept.encoded(each) for each in sets[:5]] == first, "the kept ones stay, none dropped for it"
    del sets[0], first
    assert kept.bytes == 4 * one
    assert isinstance(kept.encoded(sets[4]), orjson.Fragment), "room again"


def test_two_sets_of_one_size_each_keep_their_own_encoding() -> None:
    kept = EncodedConversations(limit_bytes=1 << 20)
    one, other = _conversations(100), _conversations(100, first=500)
    for _ in range(2):
        assert orjson.loads(orjson.dumps(kept.encoded(one))) == sorted(one)
        assert orjson.loads(orjson.dumps(kept.encoded(other))) == sorted(other)


def test_an_encoding_is_kept_while_its_set_lives_and_a_small_set_is_encoded_in_place() -> None:
    kept = EncodedConversations(limit_bytes=1 << 20)
    conversations = _conversations(100)
    fragment = kept.encoded(conversations)
    assert kept.encoded(conversations) is fragment and kept.bytes > 0
    assert orjson.loads(orjson.dumps(fragment)) == sorted(conversations)
    del conversations
    assert kept.bytes == 0, "the encoding went with its set"
    assert kept.encoded(_conversations(10)) == sorted(_conversations(10)) and kept.bytes == 0


def _times_as_text(value: Any) -> Any:
    """``value`` with every datetime and date (dict keys too) as its isoformat() text."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {_times_as_text(k): _times_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_times_as_text(v) for v in value]
    return value


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(workspace_states())
def test_a_workspace_value_reads_back_equal(state: WorkspaceState) -> None:
    assert decode_workspace(encode_workspace(state)) == state


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(period_tallies(), min_size=1, max_size=3))
def test_times_and_days_are_stored_as_their_isoformat_text(tallies: list[PeriodTally]) -> None:
    state = WorkspaceState(usage=WorkspaceUsage(MappingProxyType({"email": MetricTally("email", tuple(tallies))})))
    stored = orjson.loads(encode_workspace(state))["usage"]["tallies"]["email"]
    assert stored == [
        _times_as_text(
            {
                "start": t.period.start,
                "end": t.period.end,
                "usage": t.usage,
                "last_updated": t.last_updated,
                "daily": dict(t.daily),
                "conversations": sorted(t.conversations),
                "seats_carried_in": t.seats_carried_in,
            }
        )
        for t in tallies
    ]


contract_alert_settings = st.none() | st.builds(
    ContractAlertSetting,
    st.sets(st.sampled_from([50, 80, 100]), min_size=1).map(lambda levels: tuple(sorted(levels))),
    st.booleans(),
    st.none() | st.text(min_size=1, max_size=8),
    st.none() | instants,
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(periods(), min_size=1, max_size=3), st.none() | periods(), contract_alert_settings)
def test_a_contract_value_reads_back_equal(
    contract_periods: list[BillingPeriod], alerted: BillingPeriod | None, setting: ContractAlertSetting | None
) -> None:
    state = ContractUsage(
        periods=tuple(
            ContractPeriod(p, MappingProxyType({"sms": MappingProxyType({"ws_1": (5, 7)})})) for p in contract_periods
        ),
        workspace_ids=("ws_1",),
        alerts=MappingProxyType({"sms": ContractAlertState(alerted, frozenset({(100, 50)}), setting)}),
        recent_commands=MappingProxyType({"sub-1": 1_796_000_000_000}),
    )
    decoded = decode_contract_usage(encode_contract_usage(state))
    assert decoded == state
    read_setting = decoded.alerts["sms"].setting
    if setting is not None and read_setting is not None:  # who and when are not compared by ==
        assert (read_setting.changed_by, read_setting.changed_at) == (setting.changed_by, setting.changed_at)
    stored = orjson.loads(encode_contract_usage(state))
    assert [[p["start"], p["end"]] for p in stored["periods"]] == [
        [p.start.isoformat(), p.end.isoformat()] for p in contract_periods
    ]


def test_a_contract_value_written_without_alert_settings_reads_back_with_none() -> None:
    stored = b'{"alerts": {"sms": {"period": null, "alerted": [[1000, 80]]}}}'
    assert decode_contract_usage(stored).alerts["sms"] == ContractAlertState(None, frozenset({(1000, 80)}), None)


def test_values_without_signed_commands_store_no_trace_of_them() -> None:
    # Unsigned deployments write the values they always wrote.
    assert "recent_commands" not in orjson.loads(encode_workspace(WorkspaceState()))
    assert "recent_commands" not in orjson.loads(encode_contract_usage(ContractUsage()))
    assert decode_workspace(encode_workspace(WorkspaceState())) == WorkspaceState()


def test_a_workspace_with_no_mail_asked_for_stores_no_mail_hour_and_older_values_read_back() -> None:
    assert "mail_hour" not in orjson.loads(encode_workspace(WorkspaceState()))
    # A value written before the hourly mail cap existed: no "mail_hour" key at all.
    older = orjson.dumps(
        {"usage": {"tallies": {}, "applied_through": 41}, "profile": {"billing_contacts": ["a@example.com"],
         "contract": None}, "alerts": {}, "contract_others": None, "fin": None}
    )  # fmt: skip
    state = decode_workspace(older)
    assert state is not None and state.mail_hour is None and state.usage.applied_through == 41
    assert state.profile.billing_contacts == ("a@example.com",)
    counted = WorkspaceState(mail_hour=MailHour(494_000, 7))
    assert orjson.loads(encode_workspace(counted))["mail_hour"] == [494_000, 7]
    assert decode_workspace(encode_workspace(counted)) == counted


def test_who_made_a_setting_and_when_is_kept() -> None:
    at = datetime(2026, 12, 4, 10, 30, 15, 123000, tzinfo=UTC)
    later = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
    period = BillingPeriod(datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    alert = AlertState(
        period=period,
        setting=AlertSetting(100, True, True, "alice", at),
        scheduled=ScheduledSetting(AlertSetting(50, False, True, "bob", later), period.end),
    )
    fin = FinState("ws", "enabled", period, 1, LimitSetting(5, True, "carol", at), 0)
    back = decode_workspace(encode_workspace(WorkspaceState(alerts=MappingProxyType({"sms": alert}), fin=fin)))
    assert back is not None
    read = back.alerts["sms"]
    # Equality leaves these out, so each is compared on its own.
    assert (read.setting.changed_by, read.setting.changed_at) == ("alice", at)
    assert (read.scheduled.setting.changed_by, read.scheduled.setting.changed_at) == ("bob", later)
    assert (back.fin.setting.changed_by, back.fin.setting.changed_at) == ("carol", at)


@st.composite
def plain_workspaces(draw: st.DrawFn) -> PlainWorkspace:
    metrics = draw(st.lists(st.sampled_from(sorted(PLAIN_METRICS)), unique=True, max_size=5))
    tallies = []
    for metric in metrics:
        days = draw(st.dictionaries(st.dates(date(2020, 1, 1), date(2040, 1, 1)), st.integers(-9, 2**53), max_size=31))
        tallies.append(PlainTally(metric, draw(periods()), draw(st.integers(0, 2**53 - 1)), draw(instants), days))
    return PlainWorkspace(draw(st.integers(-1, 2**40)), tuple(tallies))


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(plain_workspaces())
def test_a_plain_workspace_is_written_as_the_bytes_of_its_state_and_reads_back_plain(plain: PlainWorkspace) -> None:
    state = state_of(plain)
    assert encode_workspace(plain) == encode_workspace(state)
    assert plain_of(state) == plain
    assert plain_of(decode_workspace(encode_workspace(plain))) == plain  # type: ignore[arg-type]


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(workspace_states())
def test_a_state_has_a_plain_form_only_when_that_form_stands_for_it_exactly(state: WorkspaceState) -> None:
    plain = plain_of(state)
    if plain is not None:
        assert state_of(plain) == state


def test_a_workspace_with_more_than_usage_has_no_plain_form() -> None:
    period = BillingPeriod(datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    at = datetime(2026, 12, 3, tzinfo=UTC)

    def usage_of(metric: str, **tally: Any) -> WorkspaceUsage:
        counted = PeriodTally(period, 5, at, MappingProxyType({date(2026, 12, 3): 5}), **tally)
        return WorkspaceUsage(MappingProxyType({metric: MetricTally(metric, (counted,))}), 7)

    plain = WorkspaceState(usage=usage_of("sms"))
    assert plain_of(plain) == PlainWorkspace(7, (PlainTally("sms", period, 5, at, {date(2026, 12, 3): 5}),))
    earlier = PeriodTally(BillingPeriod(datetime(2026, 11, 1, tzinfo=UTC), period.start), 1, at)
    others = [
        WorkspaceState(usage=usage_of("seats")),
        WorkspaceState(usage=usage_of("fin_resolutions", conversations=frozenset({"c1"}))),
        WorkspaceState(usage=WorkspaceUsage(MappingProxyType({"sms": MetricTally("sms", (earlier, earlier))}))),
        WorkspaceState(usage=WorkspaceUsage(MappingProxyType({"sms": MetricTally("sms", (PeriodTally(period),))}))),
        WorkspaceState(usage=plain.usage, profile=WorkspaceProfile(billing_contacts=("billing@example.com",))),
        WorkspaceState(usage=plain.usage, mail_hour=MailHour(1, 1)),
        WorkspaceState(usage=plain.usage, recent_commands=MappingProxyType({"c": 1})),
        WorkspaceState(usage=plain.usage, contract_others=ContractOthers(period)),
    ]
    assert [plain_of(state) for state in others] == [None] * len(others)
