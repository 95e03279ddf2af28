"""Frozen values built by ``core.frozen.constructor`` equal those their own ``__init__`` builds."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass, fields
from datetime import UTC, datetime
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meterwatch.core.frozen import constructor
from meterwatch.core.metering import MetricTally, PeriodTally, WorkspaceUsage
from meterwatch.core.periods import CALENDAR_MONTH_UTC, BillingPeriod
from meterwatch.core.workspace import WorkspaceState

PERIOD = CALENDAR_MONTH_UTC.period_containing(datetime(2026, 11, 25, tzinfo=UTC))


@given(
    usage=st.integers(min_value=-(2**53), max_value=2**53),
    updated=st.none() | st.datetimes(timezones=st.just(UTC)),
    daily=st.dictionaries(st.dates(), st.integers(), max_size=3),
    conversations=st.frozensets(st.text(max_size=5), max_size=3),
    carried=st.integers(min_value=0, max_value=1000),
)
def test_a_period_tally_built_fast_equals_the_one_built_by_init(
    usage: int, updated: datetime | None, daily: dict, conversations: frozenset[str], carried: int
) -> None:
    args = (PERIOD, usage, updated, MappingProxyType(daily), conversations, carried)
    fast, slow = constructor(PeriodTally)(*args), PeriodTally(*args)
    assert type(fast) is PeriodTally
    assert fast == slow
    assert [getattr(fast, f.name) for f in fields(PeriodTally)] == list(args)


def test_the_workspace_values_built_fast_are_as_frozen_as_any() -> None:
    tally = constructor(MetricTally)("sms", (PeriodTally(PERIOD, 3),))
    usage = constructor(WorkspaceUsage)(MappingProxyType({"sms": tally}), 7)
    plain = WorkspaceState(usage)
    state = constructor(WorkspaceState)(*(getattr(plain, f.name) for f in fields(WorkspaceState)))
    assert state == plain
    with pytest.raises(FrozenInstanceError):
        state.usage = usage  # type: ignore[misc]
    with pytest.raises(TypeError):
        constructor(WorkspaceState)(usage)  # every field is given


def test_classes_that_validate_or_have_no_slots_are_refused() -> None:
    @dataclass(frozen=True)
    class Unslotted:
        a: int

    with pytest.raises(TypeError, match="not a slotted dataclass"):
        constructor(Unslotted)
    with pytest.raises(TypeError, match="__post_init__"):
        constructor(BillingPeriod)
