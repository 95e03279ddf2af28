"""The period timer's choice of workspaces (README "Fin"): a workspace whose Fin was disabled in
a period that has ended gets a tick, and only values that changed are decoded again."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterwatch.core.fin_limit import FinState, LimitSetting
from meterwatch.core.metering import WorkspaceUsage
from meterwatch.core.periods import CALENDAR_MONTH_UTC
from meterwatch.core.steps.alerting import forecast_tick_due
from meterwatch.core.steps.fin import period_tick_due
from meterwatch.core.steps.ticks import tick_due
from meterwatch.core.workspace import WorkspaceState
from meterwatch.streams.codec import decode_workspace, encode_workspace
from meterwatch.streams.pipeline.period_timer import PeriodTickIndex

NOVEMBER = CALENDAR_MONTH_UTC.period_containing(datetime(2026, 11, 25, tzinfo=UTC))
IN_NOVEMBER = datetime(2026, 11, 25, 12, tzinfo=UTC)
IN_DECEMBER = NOVEMBER.end + timedelta(seconds=1)


def fin(state: str, usage: int, limit: int = 5) -> FinState:
    return FinState("ws", state, NOVEMBER, usage, LimitSetting(limit, True))


def value(fin_state: FinState | None) -> bytes:
    return encode_workspace(WorkspaceState(fin=fin_state))


DISABLED = value(fin("disabled", 5))
ENABLED = value(fin("enabled", 1))
NO_LIMIT = value(None)


@pytest.mark.parametrize(
    ("state", "due"),
    [
        pytest.param(WorkspaceState(), None, id="never-limited"),
        pytest.param(WorkspaceState(fin=fin("enabled", 4)), None, id="enabled-below-limit"),
        pytest.param(WorkspaceState(fin=fin("disabled", 5)), NOVEMBER.end, id="disabled-at-limit"),
        pytest.param(WorkspaceState(fin=fin("disabled", 9)), NOVEMBER.end, id="disabled-over-limit"),
        pytest.param(
            WorkspaceState(fin=FinState("ws", "disabled", NOVEMBER, 0, LimitSetting(0, True))),
            NOVEMBER.end,
            id="limit-of-zero",
        ),
    ],
)
def test_a_tick_is_due_at_the_end_of_the_period_fin_was_disabled_in(state: WorkspaceState, due) -> None:
    assert period_tick_due(state) == due


class CountingDecoder:
    def __init__(self) -> None:
        self.decoded: list[bytes] = []

    def __call__(self, raw: bytes) -> WorkspaceState | None:
        self.decoded.append(raw)
        return decode_workspace(raw)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(IN_NOVEMBER, [], id="period-still-running"),
        pytest.param(NOVEMBER.end, ["ws_off"], id="at-the-period-end"),
        pytest.param(IN_DECEMBER, ["ws_off"], id="after-the-period-end"),
    ],
)
def test_only_disabled_workspaces_whose_period_ended_are_due(now: datetime, expected: list[str]) -> None:
    values = [("ws_off", DISABLED), ("ws_on", ENABLED), ("ws_plain", NO_LIMIT)]
    assert PeriodTickIndex().due(values, now) == expected


def test_an_unchanged_value_is_not_decoded_again() -> None:
    decoder = CountingDecoder()
    index = PeriodTickIndex(decoder)
    values = [("ws_off", DISABLED), ("ws_on", ENABLED)]
    assert index.due(values, IN_DECEMBER) == ["ws_off"]
    assert len(decoder.decoded) == 2
    # An equal value read back from the store is a different object: still not decoded again.
    assert index.due([(ws, bytes(bytearray(raw))) for ws, raw in values], IN_DECEMBER) == ["ws_off"]
    assert len(decoder.decoded) == 2


def test_a_replaced_value_is_decoded_again() -> None:
    decoder = CountingDecoder()
    index = PeriodTickIndex(decoder)
    index.due([("ws_a", ENABLED), ("ws_b", ENABLED)], IN_DECEMBER)
    assert index.due([("ws_a", DISABLED), ("ws_b", ENABLED)], IN_DECEMBER) == ["ws_a"]
    assert decoder.decoded == [ENABLED, ENABLED, DISABLED]
    assert index.due([("ws_a", ENABLED), ("ws_b", ENABLED)], IN_DECEMBER) == []


def test_a_workspace_given_up_and_taken_back_is_decoded_afresh() -> None:
    decoder = CountingDecoder()
    index = PeriodTickIndex(decoder)
    index.due([("ws_a", DISABLED), ("ws_b", ENABLED)], IN_DECEMBER)
    assert index.due([("ws_b", ENABLED)], IN_DECEMBER) == []
    assert index.due([("ws_a", DISABLED), ("ws_b", ENABLED)], IN_DECEMBER) == ["ws_a"]
    assert decoder.decoded == [DISABLED, ENABLED, DISABLED]


def test_an_empty_value_is_never_due() -> None:
    assert PeriodTickIndex().due([("ws_gone", b"")], IN_DECEMBER) == []


def written(known: dict[str, tuple[bytes, WorkspaceState]], *values: tuple[str, bytes, WorkspaceState]) -> None:
    """Counting writes ``values``, keeping each one's state among its decoded values."""
    for ws, raw, state in values:
        known[ws] = (raw, state)


def test_a_value_counting_wrote_is_judged_from_its_state_without_decoding() -> None:
    decoder = CountingDecoder()
    known: dict[str, tuple[bytes, WorkspaceState]] = {}
    index = PeriodTickIndex(decoder, known)
    index.due([("ws_a", ENABLED)], IN_DECEMBER)
    # Counting disables Fin and writes the value: the timer learns it from counting's own state.
    disabled = value(fin("disabled", 5))
    written(known, ("ws_a", disabled, decode_workspace(disabled)), ("ws_b", NO_LIMIT, WorkspaceState()))
    assert index.due([("ws_a", disabled), ("ws_b", NO_LIMIT)], IN_DECEMBER) == ["ws_a"]
    assert decoder.decoded == [ENABLED]


def test_a_write_that_changed_usage_only_keeps_the_due_time_and_one_that_disabled_fin_moves_it() -> None:
    decoder = CountingDecoder()
    known: dict[str, tuple[bytes, WorkspaceState]] = {}
    index = PeriodTickIndex(decoder, known)
    enabled = WorkspaceState(fin=fin("enabled", 1))
    written(known, ("ws_a", ENABLED, enabled))
    # More usage, the same profile, alerts and limits: still not due.
    more = encode_workspace(replace(enabled, usage=WorkspaceUsage(applied_through=7)))
    written(known, ("ws_a", more, decode_workspace(more)))
    assert index.due([("ws_a", more)], IN_DECEMBER) == []
    written(known, ("ws_a", DISABLED, WorkspaceState(fin=fin("disabled", 5))))
    assert index.due([("ws_a", DISABLED)], IN_DECEMBER) == ["ws_a"]
    written(known, ("ws_a", ENABLED, enabled))
    assert index.due([("ws_a", ENABLED)], IN_DECEMBER) == []


def test_a_pass_while_a_batch_waits_to_be_written_judges_what_the_table_holds() -> None:
    decoder = CountingDecoder()
    known: dict[str, tuple[bytes, WorkspaceState]] = {}
    index = PeriodTickIndex(decoder, known)
    assert index.due([("ws_a", DISABLED)], IN_DECEMBER) == ["ws_a"]
    # A batch has enabled Fin again and waits for its dedupe ids: the table still holds the
    # value the last pass saw, and nothing is decoded for it.
    assert index.due([("ws_a", DISABLED)], IN_DECEMBER) == ["ws_a"]
    enabled = value(fin("enabled", 1))
    written(known, ("ws_a", enabled, decode_workspace(enabled)))
    assert index.due([("ws_a", enabled)], IN_DECEMBER) == []
    assert decoder.decoded == [DISABLED]


def test_a_value_the_table_got_without_counting_is_decoded() -> None:
    decoder = CountingDecoder()
    known: dict[str, tuple[bytes, WorkspaceState]] = {}
    index = PeriodTickIndex(decoder, known)
    written(known, ("ws_a", ENABLED, decode_workspace(ENABLED)))
    # A recovery replaced the value counting wrote.
    restored = value(fin("disabled", 7))
    assert index.due([("ws_a", restored)], IN_DECEMBER) == ["ws_a"]
    assert decoder.decoded == [restored]


VALUES = [DISABLED, ENABLED, NO_LIMIT, value(fin("disabled", 7)), value(fin("enabled", 3))]

# One step of counting and the timer: ("write", ws, v) writes value v for ws and keeps its state,
# as counting does; ("restore", ws, v) puts v in the table alone, as a recovery does; ("forget",
# ws) drops the state counting kept, as it does for its oldest ones; ("drop", ws) gives ws up in
# a rebalance; ("pass",) runs the timer.
_steps = st.one_of(
    st.tuples(st.sampled_from(["write", "restore"]), st.sampled_from("abc"), st.integers(0, len(VALUES) - 1)),
    st.tuples(st.sampled_from(["forget", "drop"]), st.sampled_from("abc")),
    st.just(("pass",)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_steps, max_size=40))
def test_every_pass_answers_for_what_the_table_holds(steps: list[tuple]) -> None:
    decoder = CountingDecoder()
    known: dict[str, tuple[bytes, WorkspaceState]] = {}
    index = PeriodTickIndex(decoder, known)
    table: dict[str, bytes] = {}
    last_pass: dict[str, bytes] = {}
    for step in steps:
        kind, ws = step[0], f"ws_{step[1]}" if len(step) > 1 else ""
        if kind in ("write", "restore"):
            raw = table[ws] = bytes(bytearray(VALUES[step[2]]))  # a new object, as each encoding is
            if kind == "write":
                written(known, (ws, raw, decode_workspace(raw)))
        elif kind == "forget":
            known.pop(ws, None)
        elif kind == "drop":
            table.pop(ws, None)
        elif kind == "pass":
            held = list(table.items())
            expected = [
                w for w, raw in held if (at := tick_due(decode_workspace(raw))) is not None and at <= IN_DECEMBER
            ]
            # Decoded only: a value neither the last pass saw nor counting holds.
            new = sum(1 for w, raw in held if raw != last_pass.get(w) and known.get(w, (None,))[0] is not raw)
            before = len(decoder.decoded)
            assert index.due(held, IN_DECEMBER) == expected
            assert len(decoder.decoded) - before <= new
            last_pass = dict(held)


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(WorkspaceState(), id="new"),
        pytest.param(WorkspaceState(usage=WorkspaceUsage(applied_through=3)), id="usage-only"),
        pytest.param(WorkspaceState(fin=fin("enabled", 1)), id="fin-enabled"),
        pytest.param(WorkspaceState(fin=fin("disabled", 5)), id="fin-disabled"),
    ],
)
def test_tick_due_is_the_earliest_of_the_limits_and_the_forecasts(state: WorkspaceState) -> None:
    dues = [at for at in (period_tick_due(state), forecast_tick_due(state)) if at is not None]
    assert tick_due(state) == min(dues, default=None)
