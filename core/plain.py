"""The most common workspace in a narrow form: usage of additive metrics, nothing else.

Most workspaces have no settings, limits, contract, cost alerts or billing contacts, and count
messages, phone, SMS, WhatsApp or email usage in the current period only. Their
:class:`~.workspace.WorkspaceState` is about a dozen objects, built again for every batch that
touches the workspace; a :class:`PlainWorkspace` holds the same in three or four, so a worker
keeps more of them in its caches and builds fewer per event. It is a frozen value too, with
exactly one :class:`WorkspaceState` of its own (``state_of``), and a state has a plain form
exactly when ``plain_of`` gives one: ``state_of(plain_of(s)) == s``. The counting step sums a
workspace's usage messages into a plain workspace directly and widens it to a state for
anything else; the property-based tests require both to give the same results.
"""

from __future__ import annotations

from datetime import date, datetime
from types import MappingProxyType
from typing import NamedTuple

from .contracts import WorkspaceProfile
from .metering import MetricTally, PeriodTally, WorkspaceUsage
from .metric_kinds import ADDITIVE_METRICS
from .periods import BillingPeriod
from .workspace import WorkspaceState

# The metrics a plain workspace counts: additive ones (distinct conversations and daily maxima
# keep more than a usage and its days)
PLAIN_METRICS = ADDITIVE_METRICS


class PlainTally(NamedTuple):
    """One additive metric's usage in its only period, as a :class:`PeriodTally` with no Fin
    conversations and no seats carried in."""

    metric: str
    period: BillingPeriod
    usage: int
    last_updated: datetime
    daily: dict[date, int]  # never changed once made


class PlainWorkspace(NamedTuple):
    """A workspace that has only usage: one :class:`PlainTally` per metric, in the order the
    state's tallies hold them."""

    applied_through: int
    tallies: tuple[PlainTally, ...]


# A workspace the table has never held
NEW_WORKSPACE = PlainWorkspace(-1, ())
_PLAIN_PROFILE = WorkspaceProfile()


def plain_of(state: WorkspaceState) -> PlainWorkspace | None:
    """``state`` in the narrow form, or None if it holds more than usage of additive metrics,
    each in one period and updated at least once."""
    profile = state.profile
    if (
        profile.contract is not None
        or profile.billing_contacts
        or state.alerts
        or state.contract_others is not None
        or state.fin is not None
        or state.limits
        or state.recent_commands
        or state.mail_hour is not None
        or state.cost_alerts
    ):
        return None
    counted = state.usage.tallies
    if not PLAIN_METRICS.issuperset(counted):
        return None
    for metric, tally in counted.items():
        if tally.metric != metric or len(tally.periods) != 1:
            return None
        (period,) = tally.periods
        if period.conversations or period.seats_carried_in or period.last_updated is None:
            return None
    only = [(metric, tally.periods[0]) for metric, tally in counted.items()]  # each metric's one period
    tallies = tuple(PlainTally(m, p.period, p.usage, p.last_updated, dict(p.daily)) for m, p in only)
    return PlainWorkspace(state.usage.applied_through, tallies)


def state_of(plain: PlainWorkspace) -> WorkspaceState:
    """The :class:`WorkspaceState` ``plain`` stands for."""
    tallies = {
        tally.metric: MetricTally(
            tally.metric,
            (PeriodTally(tally.period, tally.usage, tally.last_updated, MappingProxyType(dict(tally.daily))),),
        )
        for tally in plain.tallies
    }
    return WorkspaceState(
        usage=WorkspaceUsage(MappingProxyType(tallies), plain.applied_through), profile=_PLAIN_PROFILE
    )


def as_state(state: WorkspaceState | PlainWorkspace) -> WorkspaceState:
    """``state``, widened if it is plain."""
    return state_of(state) if type(state) is PlainWorkspace else state  # type: ignore[arg-type]
