"""One workspace's inbox messages of one batch, judged in order: a pure, synchronous step.

``step(workspace_id, state, messages, seen, config, out) -> (state, applied)``: the new state,
with everything to publish added to ``out``, the batch's outputs (one collector for all the
workspaces of a batch, not one per workspace); no Kafka, I/O or clock (times come from the
messages). The agent reads the table, calls this, writes the table and hands the outputs to the
sinks.

Counting runs per batch where nothing can happen and per event where something can. An
additive event (messages, phone, SMS, WhatsApp, email) of the newest period (or the first of
its metric, which opens its period) whose usage stays below the next alert level, within the
quiet bounds of the metric's hard limit (below an enabled limit, or at or above a reached one:
``fin.limit_bounds``) and below the 2**53 − 1 bound is summed straight into a *run*: the
period's usage, its day and ``last_updated``, with no judgement, since judging it could only
answer "nothing"; folding the run back tells the limit its usage, which changes no state. Every
other event (seats, Fin, another period or day bucket that cannot be resolved cheaply, a level
or limit within reach, a time to reject) and every command first folds the open runs back into
the state and then goes through the per-event path, ``_count_one``. The
property-based tests run random streams through both and require identical results.

Most workspaces of a batch get one or two messages of one or a few events. When they are all
usage, a run would sum every event of them and nothing watches the metric (no alert, limit,
cost alert or contract), ``_sum_alone`` sums them into the state directly, without the step's
or the run's bookkeeping, and ``_sum_plain`` into a plain workspace (``core/plain.py``), which
stays plain (one event, the commonest case over many workspaces, by ``_summed_one``, without a
run's lists); anything else goes to ``_Step``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter
from types import MappingProxyType
from typing import Any, NamedTuple

from ...models.common import MAX_AMOUNT
from ...models.internal import (
    CONTRACT_OTHERS,
    CONVERSATION,
    EVENT_ID,
    METRIC,
    O_KEY,
    O_OFFSET,
    O_PARTITION,
    O_RECEIVED_MS,
    O_TOPIC,
    OCCURRED_AT,
    ORIGIN,
    PERIOD_TICK,
    POSITION_STRIDE,
    QUANTITY,
    WORKSPACE,
    contacts_message,
    report_message,
    row_as_json,
)
from ...models.outputs import (
    ALERT,
    FIN_DISABLED,
    RecordedOutputs,
    dead_letter,
    limit_key,
    limit_record,
    notification_record,
)
from ..alerts import levels_of, onto_cycle
from ..contract_usage import WorkspaceReport
from ..dedupe import FirstSeen, is_repeat
from ..fin_limit import Transition
from ..frozen import constructor
from ..mail_cap import hour_start, take_mails
from ..metering import (
    MetricTally,
    PeriodTally,
    Reading,
    UsageChange,
    WorkspaceUsage,
    count_reading,
)
from ..metric_kinds import ADDITIVE_METRICS, FIN_RESOLUTIONS
from ..periods import (
    CALENDAR_MONTH_UTC,
    LATE_EVENT_GRACE,
    MAX_FUTURE_SKEW,
    BillingCycle,
    BillingPeriod,
    event_time_rejection,
)
from ..plain import PlainTally, PlainWorkspace, state_of
from ..rejections import RejectCode
from ..workspace import WorkspaceState
from . import commands, fin
from .alerting import alert_record, apply_alert_settings, judge_change, judge_forecasts
from .commands import take_contract_others
from .cost_alerting import apply_cost_alert_settings, costs_onto_cycle, judge_costs, needs_judging, record_of

log = logging.getLogger(__name__)

KEY_SEPARATOR = "\x1f"
_GRACE_MS = int(LATE_EVENT_GRACE.total_seconds() * 1000)
_FUTURE_MS = int(MAX_FUTURE_SKEW.total_seconds() * 1000)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Local midnights fall on whole quarter hours of UTC in every zone in use since 1979, so the
# day of an instant is the day of its quarter hour; each cached bucket is checked at both ends.
_DAY_BUCKET_MS = 15 * 60 * 1000

# The values every workspace of a batch builds, built without the frozen __init__'s checks.
_period_tally = constructor(PeriodTally)
_metric_tally = constructor(MetricTally)
_workspace_usage = constructor(WorkspaceUsage)
_workspace_state = constructor(WorkspaceState)
# fin.limit_bounds of a metric without a limit
_UNLIMITED = (0, 2**63)
# The metrics a run sums: additive ones (distinct conversations and daily maxima are judged)
_SUMMABLE = ADDITIVE_METRICS

_DEAD_LETTER_TEXT = {
    RejectCode.OCCURRED_IN_FUTURE: "occurred_at is more than 5 minutes in the future",
    RejectCode.PERIOD_CLOSED: "the event's billing period ended more than 7 days ago",
    RejectCode.QUANTITY_OUT_OF_RANGE: f"usage would exceed {MAX_AMOUNT} in its period",
}


class Failure(NamedTuple):
    """An input the step could not handle: dead-lettered ``internal_error``, logged with its
    traceback by the caller; the workspace is as it was before that input."""

    workspace_id: str
    inbox_offset: int
    error: BaseException
    value: bytes | None


@dataclass(frozen=True, slots=True)
class StepConfig:
    window_ms: int
    mail_enabled: bool
    # METERWATCH_COMMAND_MAX_AGE when commands are signed (each then applied once), else None
    command_max_age_ms: int | None = None
    # METERWATCH_MAX_BILLING_CONTACTS and METERWATCH_MAX_MAILS_PER_WORKSPACE_HOUR; None: no cap
    max_billing_contacts: int | None = None
    max_mails_per_hour: int | None = None


@dataclass(slots=True)
class BatchOutputs:
    """What the steps of one batch produced, in order, and the figures for the metrics."""

    outputs: RecordedOutputs = field(default_factory=RecordedOutputs)
    failures: list[Failure] = field(default_factory=list)
    # dedupe key -> when and where first counted, to remember before the state is written
    first_seen: dict[str, FirstSeen] = field(default_factory=dict)
    # what happened, for the metrics: counted per metric, rejected per code, and so on
    counted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    repeated: int = 0
    replayed: int = 0
    # events counted by summing into a run, without a judgement of their own
    summed: int = 0
    alerts: Counter[str] = field(default_factory=Counter)
    transitions: Counter[str] = field(default_factory=Counter)
    commands: Counter[tuple[str, str]] = field(default_factory=Counter)
    # occurred_at and received of every counted event, in epoch milliseconds (rounded down), for
    # the latency histograms
    occurred: list[int] = field(default_factory=list)
    received: list[int] = field(default_factory=list)


# An inbox message as the step sees it: usage rows of this workspace, each with its position and
# dedupe key, or a command.
class RowsMessage(NamedTuple):
    offset: int
    rows: list[tuple[int, str, list[Any]]]  # (position, dedupe key, row)
    origins: list[list[Any]]


class CommandMessage(NamedTuple):
    offset: int
    command: dict[str, Any]
    received_ms: int


Message = RowsMessage | CommandMessage


def dedupe_key(workspace_id: str, event_id: str) -> str:
    return f"{workspace_id}{KEY_SEPARATOR}{event_id}"


def rows_by_workspace(
    offset: int, rows: list[list[Any]], origins: list[list[Any]], keys: list[str]
) -> dict[str, RowsMessage]:
    """The rows of the inbox record at ``offset`` as one message per workspace, in row order;
    every row's dedupe key is also appended to ``keys``."""
    grouped: dict[str, list[tuple[int, str, list[Any]]]] = {}
    base = offset * POSITION_STRIDE
    add_key = keys.append
    for index, row in enumerate(rows):
        workspace_id = row[WORKSPACE]
        key = f"{workspace_id}{KEY_SEPARATOR}{row[EVENT_ID]}"  # dedupe_key, inline
        add_key(key)
        group = grouped.get(workspace_id)
        if group is None:
            group = grouped[workspace_id] = []
        group.append((base + index, key, row))
    return {workspace_id: RowsMessage(offset, group, origins) for workspace_id, group in grouped.items()}


def step(
    workspace_id: str,
    state: WorkspaceState | PlainWorkspace,
    messages: list[Message],
    seen: Mapping[str, FirstSeen | None],
    config: StepConfig,
    out: BatchOutputs,
    *,
    batched: bool = True,
) -> tuple[WorkspaceState | PlainWorkspace, bool]:
    """Apply ``messages`` (inbox order) to ``state``. ``seen`` holds, for every dedupe key of
    the rows, what the dedupe store knew before this batch (absent: never seen).

    A plain workspace (``core/plain.py``) whose messages are summed without judgement
    (``_sum_plain``) comes back plain; otherwise the result is a :class:`WorkspaceState`. ``batched=False`` judges every event on
    its own: the reference the batched path is tested against."""
    plain = type(state) is PlainWorkspace
    if batched and messages:
        applied_through = state.applied_through if plain else state.usage.applied_through  # type: ignore[union-attr]
        for message in messages:
            if type(message) is not RowsMessage or not message.rows or message.offset <= applied_through:
                break
        else:
            summed = (_sum_plain if plain else _sum_alone)(state, messages, seen, out)  # type: ignore[operator]
            if summed is not None:
                return summed, True
    if plain:
        state = state_of(state)  # type: ignore[arg-type]
    return _Step(workspace_id, state, seen, config, out, batched).run(messages)  # type: ignore[arg-type]


class _Run:
    """Additive events summed into one metric's newest period, not yet folded into the state."""

    __slots__ = (
        "tally",
        "period",
        "start_ms",
        "end_ms",
        "usage",
        "daily",
        "last_updated_ms",
        "bound",
        "keep_until_ms",
        "cycle",
        "summed",
        "floor",
        "day_bucket",
        "day",
        "reported",
    )

    def __init__(
        self,
        tally: MetricTally,
        bounds: tuple[int, int],
        bound: int,
        keep_until_ms: int,
        cycle: BillingCycle,
        floor: int = 0,
        reported: bool = True,
    ) -> None:
        latest = tally.periods[-1]
        self.tally = tally
        self.period = latest.period
        # Whole milliseconds (periods start at local midnights): an instant is in the period
        # exactly when its millisecond, rounded down, is.
        self.start_ms, self.end_ms = bounds
        self.usage = latest.usage
        self.daily: dict[date, int] | None = None
        self.last_updated_ms = -1
        self.bound = min(bound, MAX_AMOUNT + 1)  # the largest usage summed is MAX_AMOUNT
        # The usage below which a fall needs judging: a disabled limit's, else 0 (never below).
        self.floor = floor
        self.keep_until_ms = keep_until_ms
        self.cycle = cycle
        self.summed = 0  # events summed into the run
        # The local day of the quarter hour of UTC last summed into (None: a day starts inside it).
        self.day_bucket = -1
        self.day: date | None = None
        # Whether the workspace reports to a contract: only then is the change kept for it.
        self.reported = reported


class _Step:
    def __init__(
        self,
        workspace_id: str,
        state: WorkspaceState,
        seen: Mapping[str, FirstSeen | None],
        config: StepConfig,
        out: BatchOutputs,
        batched: bool,
    ) -> None:
        self.workspace_id = workspace_id
        self.batched = batched
        self.seen = seen
        self.config = config
        self.result = out
        self.state = state
        # (metric, period) whose usage this batch changed, for the contract's sum.
        self.changed: dict[tuple[str, BillingPeriod], int] = {}
        self.contacts_changed = False
        self.runs: dict[str, _Run | None] = {}

    def run(self, messages: list[Message]) -> tuple[WorkspaceState, bool]:
        result = self.result
        applied_through = self.state.usage.applied_through
        for message in messages:
            offset = message.offset
            if offset <= applied_through:
                result.replayed += 1
                continue
            if isinstance(message, RowsMessage):
                origins = message.origins
                count, count_fast = self._count, self._count_fast
                for position, key, row in message.rows:
                    origin = origins[row[ORIGIN]]
                    # An open run sums the event here; anything else goes through _count.
                    run = self.runs.get(row[METRIC])
                    if run is None or not count_fast(run, row, origin, position, key):
                        count(row, origin, position, key, offset)
            else:
                self._fold_runs()
                self._isolated(offset, self._command, message.command, message.received_ms)
            applied_through = offset
        if applied_through == self.state.usage.applied_through:
            self._fold_runs()
            return self.state, False
        self._fold_runs(applied_through)
        self._report_to_contract()
        return self.state, True

    # ---------------------------------------------------------------------------------------
    # usage events

    def _count(self, row: list[Any], origin: list[Any], position: int, key: str, offset: int) -> None:
        """One event that no open run summed: open its metric's run if there is none yet (the
        event may then be summed into it), else judge it on its own."""
        metric = row[METRIC]
        if metric not in self.runs:
            run = self.runs[metric] = self._open_run(metric, row)
            if run is not None and self._count_fast(run, row, origin, position, key):
                return
        self._fold_runs()
        self._isolated(offset, self._count_one, row, origin, position, key)
        # The per-event path may have moved the period or the levels: look afresh next time.
        self.runs.pop(metric, None)

    def _open_run(self, metric: str, row: list[Any]) -> _Run | None:
        """A run for ``metric`` if its events can be summed without judgement, else None.
        ``row`` is the run's first event: a metric's first event opens its period."""
        if not self.batched or metric not in _SUMMABLE:
            return None
        if needs_judging(self.state, metric):
            # A cost alert's levels are judged on every event that changes the cost it watches.
            return None
        profile = self.state.profile
        cycle = profile.cycle
        newest = _newest_period(cycle, self.state.usage.tallies.get(metric), metric, row)
        if newest is None:
            return None
        tally, bounds, keep_until_ms = newest
        period = tally.periods[-1].period
        state = self.state
        if not state.alerts and not state.limits:
            # No alert level and no limit to reach (Fin's, always limited, is never summed).
            bound, quiet_limit = MAX_AMOUNT + 1, _UNLIMITED
        else:
            bound = _quiet_below(state, metric, period)
            quiet_limit = fin.limit_bounds(state, metric, period)
            if bound is None or quiet_limit is None:
                return None
        floor, ceiling = quiet_limit
        return _Run(tally, bounds, min(bound, ceiling), keep_until_ms, cycle, floor, profile.contract is not None)

    def _count_fast(self, run: _Run, row: list[Any], origin: list[Any], position: int, key: str) -> bool:
        """Sum one additive event into ``run``; False if it needs the per-event path."""
        received_ms = origin[O_RECEIVED_MS]
        if received_ms > run.keep_until_ms:
            return False
        occurred_at = datetime.fromisoformat(row[OCCURRED_AT])
        occurred_ms = (occurred_at - _EPOCH) // _ONE_MS  # _ms, inline
        # Whole milliseconds below the limit: the exact comparison is left to the per-event path.
        if occurred_ms >= received_ms + _FUTURE_MS:
            return False
        if not (run.start_ms <= occurred_ms < run.end_ms):
            return False
        quantity = row[QUANTITY]
        after = run.usage + quantity
        if after < run.floor or after >= run.bound:  # the bound is at most MAX_AMOUNT + 1
            return False
        bucket = occurred_ms // _DAY_BUCKET_MS
        if bucket != run.day_bucket:
            run.day_bucket = bucket
            run.day = _bucket_day(run.cycle, bucket)
        day = run.day or run.cycle.local_date(occurred_at)
        result = self.result
        first_seen = result.first_seen
        first = first_seen.get(key) or self.seen.get(key)
        if first is not None and is_repeat(first, position, received_ms, self.config.window_ms):
            result.repeated += 1
            return True
        if run.daily is None:
            run.daily = run.tally.periods[-1].daily.copy()
            if run.reported:
                # The contract hears of changes in the order they first happened in the batch.
                self.changed.setdefault((row[METRIC], run.period), after)
        run.daily[day] = run.daily.get(day, 0) + quantity
        run.usage = after
        run.last_updated_ms = received_ms
        run.summed += 1
        result.occurred.append(occurred_ms)
        result.received.append(received_ms)
        # Remembered even when the store already holds this very delivery: a replay after a
        # crash finds the ids its aborted transaction left in the local store, and the
        # changelog must hold them for the next owner of the partition.
        first_seen[key] = _first_seen(FirstSeen, (received_ms, position))
        return True

    def _fold_runs(self, applied_through: int | None = None) -> None:
        """Write every open run's sums back into the state (events already judged), and with them
        ``applied_through`` when given: one new state for both."""
        usage = self.state.usage
        tallies = None
        result = self.result
        for metric, run in self.runs.items():
            if run is None or not run.summed:
                continue
            result.summed += run.summed
            result.counted[metric] += run.summed
            if tallies is None:
                tallies = dict(usage.tallies)
            tallies[metric] = summed = _summed_tally(metric, run.tally, run.usage, run.last_updated_ms, run.daily)
            if run.reported:
                self.changed[(metric, run.period)] = run.usage
            if fin.is_limited(self.state, metric):
                # The run stayed within the limit's quiet bounds: the state only learns the usage.
                at = summed.periods[-1].last_updated
                self.state, transition = fin.on_usage(self.state, self.workspace_id, run.usage, run.period, at, metric)
                self._publish_transition(metric, transition)
        self.runs = {}
        if tallies is not None or applied_through is not None:
            self.state = _with_usage(
                self.state,
                _workspace_usage(
                    usage.tallies if tallies is None else MappingProxyType(tallies),
                    usage.applied_through if applied_through is None else applied_through,
                ),
            )

    def _count_one(self, row: list[Any], origin: list[Any], position: int, key: str) -> None:
        """One event, judged on its own: the reference path every outcome comes from."""
        received_ms = origin[O_RECEIVED_MS]
        received = datetime.fromtimestamp(received_ms / 1000, tz=UTC)
        occurred_at = datetime.fromisoformat(row[OCCURRED_AT])
        metric = row[METRIC]
        cycle = self.state.profile.cycle
        rejection = event_time_rejection(occurred_at, received, cycle)
        if rejection is not None:
            self._dead_letter(row, origin, rejection)
            return
        first = self.result.first_seen.get(key) or self.seen.get(key)
        if is_repeat(first, position, received_ms, self.config.window_ms):
            self.result.repeated += 1
            return
        reading = Reading(row[EVENT_ID], metric, row[QUANTITY], occurred_at, row[CONVERSATION])
        prior = self.state
        usage = self.state.usage
        tally, change = count_reading(usage.tally(metric), reading, cycle, received)
        if change.after > MAX_AMOUNT:
            # Usage stays a number every JSON reader can hold; the event is refused, not wrapped.
            self._dead_letter(row, origin, RejectCode.QUANTITY_OUT_OF_RANGE)
            return
        self.state = replace(self.state, usage=replace(usage, tallies={**usage.tallies, metric: tally}))
        if change.after != change.before:
            if self.state.profile.contract is not None:
                self.changed[(metric, change.period)] = change.after
            self._judge(row[EVENT_ID], metric, change, received)
            if prior.cost_alerts:
                self._judge_costs(prior, row[EVENT_ID], metric, change.period, received)
            if fin.is_limited(self.state, metric):
                self.state, transition = fin.on_usage(
                    self.state, self.workspace_id, change.after, change.period, received, metric
                )
                self._publish_transition(metric, transition)
        result = self.result
        result.counted[metric] += 1
        result.occurred.append(_ms(occurred_at))
        result.received.append(received_ms)
        result.first_seen[key] = FirstSeen(received_ms, position)

    def _judge(self, event_id: str, metric: str, change: UsageChange, at: datetime) -> None:
        self.state, reached = judge_change(self.state, metric, change.before, change.after, change.period)
        if reached is not None:
            record = alert_record(self.state, self.workspace_id, metric, reached, event_id, at)
            self.result.alerts[str(reached.level)] += 1
            self.result.outputs.alert(self.workspace_id, record)
            self._request_mail(ALERT, record, record["recipients"], at)

    def _judge_costs(
        self, prior: WorkspaceState, event_id: str, metric: str, period: BillingPeriod, at: datetime
    ) -> None:
        self.state, reached = judge_costs(prior, self.state, metric, period)
        for key, level in reached:
            record = record_of(self.state, self.workspace_id, key, level, event_id, at)
            self.result.alerts[str(level.level)] += 1
            self.result.outputs.alert(self.workspace_id, record)
            self._request_mail(ALERT, record, record["recipients"], at)

    def _warn(self, at: datetime, metrics: tuple[str, ...] | None = None) -> None:
        """Publish the forecast warnings of ``metrics`` (None: every metric) judged at ``at``."""
        self.state, records = judge_forecasts(self.state, self.workspace_id, at, metrics)
        for record in records:
            self.result.outputs.alert(self.workspace_id, record)
            self._request_mail(ALERT, record, record["recipients"], at)

    def _dead_letter(self, row: list[Any], origin: list[Any], code: str) -> None:
        self.result.rejected[code] += 1
        key = origin[O_KEY]
        record = dead_letter(
            source_topic=origin[O_TOPIC],
            partition=origin[O_PARTITION],
            offset=origin[O_OFFSET],
            key=key.encode() if key is not None else None,
            value=row_as_json(row),
            code=code,
            message=_DEAD_LETTER_TEXT.get(code, code),
            at=datetime.fromtimestamp(origin[O_RECEIVED_MS] / 1000, tz=UTC),
        )
        self.result.outputs.dead_letter(self.workspace_id, record)

    # ---------------------------------------------------------------------------------------
    # commands

    def _command(self, command: dict[str, Any], received_ms: int) -> None:
        received = datetime.fromtimestamp(received_ms / 1000, tz=UTC)
        kind = command["type"]
        if kind in commands.SENT_BY_PEOPLE and not self._first_application(command):
            return
        if kind == "alert_settings":
            self.state, answer = apply_alert_settings(self.state, command, received)
            self._answer(command, answer)
            self._warn(received, (command["metric"],))
            return
        if kind == "cost_alert_settings":
            self.state, answer = apply_cost_alert_settings(self.state, command, received)
            self._answer(command, answer)
            return
        if kind == "limit_settings":
            self.state, transition, answer = fin.on_limit_settings(self.state, self.workspace_id, command, received)
            self._answer(command, answer)
            self._publish_transition(command.get("metric", FIN_RESOLUTIONS), transition)
            return
        if kind == PERIOD_TICK:
            # A tick also comes after local midnights for forecast warnings; limits take only their own.
            limits_due = fin.period_tick_due(self.state)
            if limits_due is not None and limits_due <= received:
                self.state, transitions = fin.on_period_tick(self.state, self.workspace_id, received)
                for metric, transition in transitions:
                    self._publish_transition(metric, transition)
            self._warn(received)
            return
        if kind == CONTRACT_OTHERS:
            self.state = take_contract_others(self.state, command)
            return
        before = self.state.profile
        profile, answer = commands.apply_to_profile(
            self.state.profile, self.workspace_id, command, self.config.max_billing_contacts
        )
        self.state = replace(self.state, profile=profile)
        if profile.cycle != before.cycle:
            alerts = {metric: onto_cycle(alert, profile.cycle) for metric, alert in self.state.alerts.items()}
            self.state = costs_onto_cycle(replace(self.state, alerts=MappingProxyType(alerts)), profile.cycle)
        if profile.contract is not None and profile.contract != before.contract:
            # A new contract learns what this workspace has used so far, and whom to tell, metric
            # by metric in name order (a workspace without a contract keeps no changes for one).
            tallies = self.state.usage.tallies
            for metric in sorted(tallies):
                for period_tally in tallies[metric].periods:
                    self.changed[(metric, period_tally.period)] = period_tally.usage
            self.contacts_changed = True
        if profile.billing_contacts != before.billing_contacts:
            self.contacts_changed = True
        if answer is not None:
            self._answer(command, answer)

    def _first_application(self, command: dict[str, Any]) -> bool:
        """Whether ``command`` may be applied: always, unless commands are signed and this one
        was applied already (answered ``rejected``)."""
        max_age_ms = self.config.command_max_age_ms
        if max_age_ms is None:
            return True
        recent = commands.admit_once(self.state.recent_commands, command, max_age_ms)
        if recent is None:
            self._answer(command, commands.replayed(command))
            return False
        self.state = replace(self.state, recent_commands=recent)
        return True

    def _answer(self, command: dict[str, Any], answer: dict[str, Any]) -> None:
        self.result.commands[(command["type"], answer["status"])] += 1
        self.result.outputs.command_result(self.workspace_id, answer)

    # ---------------------------------------------------------------------------------------
    # outputs

    def _publish_transition(self, metric: str, transition: Transition | None) -> None:
        if transition is None:
            return
        self.result.transitions[transition.reason] += 1
        outputs = self.result.outputs
        record = limit_record(self.workspace_id, transition, metric)
        outputs.fin_transition(limit_key(self.workspace_id, metric), record)
        notification = notification_record(self.workspace_id, transition, metric)
        if notification is not None:
            outputs.notification(self.workspace_id, notification)
            self._request_mail(FIN_DISABLED, record, list(self.state.profile.billing_contacts), transition.at)

    def _request_mail(self, kind: str, record: dict[str, Any], recipients: list[str], at: datetime) -> None:
        # No SMTP server configured, or nobody to tell: the record on its topic is all there is.
        if not self.config.mail_enabled or not recipients:
            return
        cap = self.config.max_mails_per_hour
        window, fits = take_mails(self.state.mail_hour, len(recipients), at, cap)
        if fits:
            self.state = replace(self.state, mail_hour=window)
            self.result.outputs.mail_request(kind, record, recipients)
            return
        # Held back, never dropped: the mailing stage dead-letters the request and counts it.
        reason = (
            f"{RejectCode.MAIL_RATE_LIMITED}: {len(recipients)} mail(s) would pass the cap of {cap} mails "
            f"per workspace in the hour from {hour_start(at):%Y-%m-%dT%H:00Z}"
        )
        self.result.outputs.mail_request(kind, record, recipients, held_back=reason)

    def _report_to_contract(self) -> None:
        contract = self.state.profile.contract
        if contract is None:
            return
        if self.contacts_changed:
            message = contacts_message(self.workspace_id, self.state.profile.billing_contacts)
            self.result.outputs.contract_message(contract.contract_id, message)
        for (metric, period), usage in self.changed.items():
            report = WorkspaceReport(self.workspace_id, metric, period, usage, self.state.usage.applied_through)
            self.result.outputs.contract_message(contract.contract_id, report_message(report))

    def _isolated(self, offset: int, action: Any, *args: Any) -> None:
        """Run one input's step; should it fail, the workspace and the outputs are as before it.

        The event's figures (counted, first seen) are recorded by a step's last statements, so
        a failed step left them alone; counters of outputs are restored with the outputs."""
        result = self.result
        before = (self.state, dict(self.changed), self.contacts_changed, len(result.outputs))
        counters = (result.alerts.copy(), result.transitions.copy(), result.commands.copy())
        try:
            action(*args)
        except Exception as error:
            self.state, self.changed, self.contacts_changed, outputs = before
            result.outputs.truncate(outputs)
            result.alerts, result.transitions, result.commands = counters
            row = args[0] if isinstance(args[0], list) else None
            result.failures.append(
                Failure(self.workspace_id, offset, error, row_as_json(row) if row is not None else None)
            )


def _with_usage(state: WorkspaceState, usage: WorkspaceUsage) -> WorkspaceState:
    """``replace(state, usage=usage)`` without ``replace``'s walk over the fields: every
    workspace of every batch makes one."""
    return _workspace_state(
        usage,
        state.profile,
        state.alerts,
        state.contract_others,
        state.fin,
        state.limits,
        state.recent_commands,
        state.mail_hour,
        state.cost_alerts,
    )


def _sum_alone(
    state: WorkspaceState, messages: list[RowsMessage], seen: Mapping[str, FirstSeen | None], out: BatchOutputs
) -> WorkspaceState | None:
    """``state`` after ``messages``, its workspace's messages of the batch, all usage not applied
    yet, when a run would sum every event of them: events of one additive metric that no alert,
    limit, cost alert or contract watches, each new, in the metric's newest period (as
    ``_Step._count_fast`` checks them). Else None, with nothing recorded: ``_Step`` takes them.
    Most workspaces of a batch get one or two events, and this spares them the step's and the
    run's bookkeeping."""
    first = messages[0].rows[0][2]
    metric = first[METRIC]
    profile = state.profile
    if (
        metric not in _SUMMABLE
        or metric in state.alerts
        or metric in state.limits
        or profile.contract is not None
        or needs_judging(state, metric)
    ):
        return None
    tallies = state.usage.tallies
    cycle = profile.cycle
    newest = _newest_period(cycle, tallies.get(metric), metric, first)
    if newest is None:
        return None
    tally, (start_ms, end_ms), keep_until_ms = newest
    latest = tally.periods[-1]
    summed = _summed_alone(messages, metric, latest.usage, start_ms, end_ms, keep_until_ms, cycle, seen, out)
    if summed is None:
        return None
    usage, events = summed
    daily = _record_alone(out, metric, events, latest.daily)
    # A dict or a read-only view of one: copy() gives a dict either way, faster than dict().
    after = tallies.copy()  # type: ignore[attr-defined]
    after[metric] = _summed_tally(metric, tally, usage, events[-1][3], daily)
    return _with_usage(state, _workspace_usage(MappingProxyType(after), messages[-1].offset))


def _sum_plain(
    plain: PlainWorkspace, messages: list[RowsMessage], seen: Mapping[str, FirstSeen | None], out: BatchOutputs
) -> PlainWorkspace | None:
    """``_sum_alone`` of a plain workspace (``core/plain.py``), in its narrow form: nothing
    watches its metrics and its cycle is the calendar month in UTC. None where ``_sum_alone``
    would answer None, with nothing recorded."""
    first = messages[0].rows[0][2]
    metric = first[METRIC]
    if metric not in _SUMMABLE:
        return None
    tallies = plain.tallies
    index = 0
    for tally in tallies:
        if tally.metric == metric:
            bounds = _run_bounds(CALENDAR_MONTH_UTC, tally.period)
            if bounds is None:
                return None
            period, usage, daily = tally.period, tally.usage, tally.daily
            break
        index += 1
    else:
        opened = _period_of(CALENDAR_MONTH_UTC, first[OCCURRED_AT])
        if opened is None:
            return None
        period, bounds, _ = opened
        usage, daily = 0, _NO_DAYS
    start_ms, end_ms = bounds
    if len(messages) == 1 and len(messages[0].rows) == 1:
        # One event, as most workspaces of a batch get when there are many of them
        one = _summed_one(messages[0], metric, usage, start_ms, end_ms, seen, out, daily)
        if one is None:
            return None
        usage, last_received_ms, daily = one
    else:
        summed = _summed_alone(
            messages, metric, usage, start_ms, end_ms, end_ms + _GRACE_MS, CALENDAR_MONTH_UTC, seen, out
        )
        if summed is None:
            return None
        usage, events = summed
        daily = _record_alone(out, metric, events, daily)
        last_received_ms = events[-1][3]
    tally = _new(PlainTally, (metric, period, usage, _instant(last_received_ms), daily))
    return _new(PlainWorkspace, (messages[-1].offset, (*tallies[:index], tally, *tallies[index + 1 :])))


# An event of a message summed alone: (position, dedupe key, occurred and received in epoch
# milliseconds, local day, quantity)
_Summed = tuple[int, str, int, int, date, int]
_KEY_OF, _OCCURRED_OF, _RECEIVED_OF = itemgetter(1), itemgetter(2), itemgetter(3)
_NO_DAYS: Mapping[date, int] = MappingProxyType({})
# A named tuple built from its fields' tuple, without the Python frame of its __new__
_new = tuple.__new__


def _summed_alone(
    messages: list[RowsMessage],
    metric: str,
    usage: int,
    start_ms: int,
    end_ms: int,
    keep_until_ms: int,
    cycle: BillingCycle,
    seen: Mapping[str, FirstSeen | None],
    out: BatchOutputs,
) -> tuple[int, list[_Summed]] | None:
    """The usage after every event of ``messages`` summed into a period of ``metric`` that
    spans ``[start_ms, end_ms)``, and those events; None if one of them needs judging (another
    metric, a repeat, a time outside the period or past ``keep_until_ms``, a usage out of
    bounds). Nothing is recorded until ``_record_alone``."""
    summed: list[_Summed] = []
    add = summed.append
    first_seen = out.first_seen
    # The quarter hour of UTC of the last event and its local day (None: a day starts inside
    # it, so each event's own)
    bucket, bucket_day, day = -1, None, None
    for message in messages:
        origins = message.origins
        for position, key, row in message.rows:
            received_ms = origins[row[ORIGIN]][O_RECEIVED_MS]
            if row[METRIC] != metric or received_ms > keep_until_ms or key in first_seen or seen.get(key) is not None:
                return None
            occurred_at = datetime.fromisoformat(row[OCCURRED_AT])
            occurred_ms = (occurred_at - _EPOCH) // _ONE_MS  # _ms, inline
            usage += row[QUANTITY]
            if (
                occurred_ms >= received_ms + _FUTURE_MS
                or not start_ms <= occurred_ms < end_ms
                or not 0 <= usage <= MAX_AMOUNT
            ):
                return None
            if occurred_ms // _DAY_BUCKET_MS != bucket or bucket_day is None:
                bucket = occurred_ms // _DAY_BUCKET_MS
                bucket_day = _bucket_day(cycle, bucket)
                day = bucket_day or cycle.local_date(occurred_at)
            add((position, key, occurred_ms, received_ms, day, row[QUANTITY]))
    if len(summed) > 1 and len(set(map(_KEY_OF, summed))) < len(summed):
        return None  # the same event twice: the later one is a repeat
    return usage, summed


def _summed_one(
    message: RowsMessage,
    metric: str,
    usage: int,
    start_ms: int,
    end_ms: int,
    seen: Mapping[str, FirstSeen | None],
    out: BatchOutputs,
    daily: Mapping[date, int],
) -> tuple[int, int, dict[date, int]] | None:
    """``_summed_alone`` and ``_record_alone`` of a plain workspace's message of one event, of
    ``metric``: the usage after it, when it was received and ``daily`` with it added; None, with
    nothing recorded, where ``_summed_alone`` would answer None."""
    ((position, key, row),) = message.rows
    received_ms = message.origins[row[ORIGIN]][O_RECEIVED_MS]
    first_seen = out.first_seen
    if received_ms > end_ms + _GRACE_MS or key in first_seen or seen.get(key) is not None:
        return None
    occurred_at = datetime.fromisoformat(row[OCCURRED_AT])
    occurred_ms = (occurred_at - _EPOCH) // _ONE_MS  # _ms, inline
    quantity = row[QUANTITY]
    usage += quantity
    if occurred_ms >= received_ms + _FUTURE_MS or not start_ms <= occurred_ms < end_ms or not 0 <= usage <= MAX_AMOUNT:
        return None
    day = _bucket_day(CALENDAR_MONTH_UTC, occurred_ms // _DAY_BUCKET_MS) or CALENDAR_MONTH_UTC.local_date(occurred_at)
    daily = daily.copy()  # type: ignore[attr-defined]
    daily[day] = daily.get(day, 0) + quantity
    first_seen[key] = _first_seen(FirstSeen, (received_ms, position))
    out.occurred.append(occurred_ms)
    out.received.append(received_ms)
    out.summed += 1
    out.counted[metric] += 1
    return usage, received_ms, daily


def _record_alone(out: BatchOutputs, metric: str, summed: list[_Summed], daily: Mapping[date, int]) -> dict[date, int]:
    """Record ``summed`` (of ``_summed_alone``) in ``out``; ``daily`` with them added."""
    # A dict or a read-only view of one: copy() gives a dict either way, faster than dict().
    daily = daily.copy()  # type: ignore[attr-defined]
    first_seen = out.first_seen
    for position, key, _, received_ms, day, quantity in summed:
        daily[day] = daily.get(day, 0) + quantity
        first_seen[key] = _first_seen(FirstSeen, (received_ms, position))
    out.occurred += map(_OCCURRED_OF, summed)
    out.received += map(_RECEIVED_OF, summed)
    out.summed += len(summed)
    out.counted[metric] += len(summed)
    return daily


def _summed_tally(
    metric: str, tally: MetricTally, usage: int, last_updated_ms: int, daily: dict[date, int] | None
) -> MetricTally:
    """``tally`` with events summed into its newest period: its ``usage``, ``daily`` (None: as
    it was) and the time the last was received."""
    periods = tally.periods
    latest = periods[-1]
    updated = _period_tally(
        latest.period,
        usage,
        _instant(last_updated_ms),
        MappingProxyType(daily) if daily is not None else latest.daily,
        latest.conversations,
        latest.seats_carried_in,
    )
    return _metric_tally(metric, (updated,) if len(periods) == 1 else (*periods[:-1], updated))


def _quiet_below(state: WorkspaceState, metric: str, period: BillingPeriod) -> int | None:
    """The usage of ``metric`` in ``period`` below which a rise can alert nothing, or None when
    even that cannot be known without judging (the alert state is of another period)."""
    alert = state.alerts.get(metric)
    if alert is None:
        return MAX_AMOUNT + 1
    if alert.period != period:
        return None
    setting = alert.setting
    if setting is None:
        return MAX_AMOUNT + 1
    threshold = setting.threshold
    bounds = [-(-level * threshold // 100) for level in levels_of(setting) if (threshold, level) not in alert.alerted]
    return min(bounds, default=MAX_AMOUNT + 1)


# (anchor day, time zone, period) -> the period's bounds in milliseconds, or None (see _run_bounds)
_BOUNDS: dict[tuple[int, str, BillingPeriod], tuple[int, int] | None] = {}
_UNKNOWN: Any = object()
# The last (cycle, period, bounds) answered: most runs of a batch are of one cycle's one period
# object, found by identity without hashing the period.
_LAST_BOUNDS: list[tuple[Any, Any, tuple[int, int] | None]] = [(None, None, None)]
# (anchor day, time zone) -> the period last opened, its bounds in milliseconds and, by metric,
# the empty tally of that period every workspace opening it starts from (frozen, so shared)
_OPENED: dict[tuple[int, str], tuple[BillingPeriod, tuple[int, int], dict[str, MetricTally]]] = {}


def _whole_ms(period: BillingPeriod) -> bool:
    return period.start.microsecond % 1000 == 0 and period.end.microsecond % 1000 == 0


def _run_bounds(cycle: BillingCycle, period: BillingPeriod) -> tuple[int, int] | None:
    """``period``'s bounds in whole milliseconds if a run can sum into it: it is one of
    ``cycle``'s periods and starts and ends on whole milliseconds. Else None. Cached: every run
    of every workspace asks."""
    last = _LAST_BOUNDS[0]
    if last[0] is cycle and last[1] is period:
        return last[2]
    key = (cycle.anchor_day, cycle.timezone, period)
    bounds = _BOUNDS.get(key, _UNKNOWN)
    if bounds is not _UNKNOWN:
        _LAST_BOUNDS[0] = (cycle, period, bounds)
        return bounds
    bounds = None
    if cycle.has_period(period) and _whole_ms(period):
        bounds = (_ms(period.start), _ms(period.end))
    if len(_BOUNDS) >= _DAYS_KEPT:
        _BOUNDS.clear()
    _BOUNDS[key] = bounds
    _LAST_BOUNDS[0] = (cycle, period, bounds)
    return bounds


def _newest_period(
    cycle: BillingCycle, tally: MetricTally | None, metric: str, row: list[Any]
) -> tuple[MetricTally, tuple[int, int], int] | None:
    """The tally of ``metric`` a run sums into (``row``, the run's first event, opens the
    period of a metric without one), its newest period's bounds in milliseconds and the time of
    receipt up to which none of its periods would be pruned; None if no run can sum into it."""
    if tally is None or not tally.periods:
        # Counting opens the event's period empty, with nothing else to keep or prune.
        opened = _period_of(cycle, row[OCCURRED_AT])
        if opened is None:
            return None
        period, bounds, empty = opened
        tally = empty.get(metric)
        if tally is None:
            tally = empty[metric] = _metric_tally(metric, (PeriodTally(period),))
        return tally, bounds, bounds[1] + _GRACE_MS
    # Tallies of an earlier cycle (counted before the workspace heard of its contract) are not
    # the periods new events fall into.
    bounds = _run_bounds(cycle, tally.periods[-1].period)
    if bounds is None:
        return None
    # Counting prunes periods past their grace at the time of each event; a run holds only
    # while no period it keeps would be pruned.
    keep_until_ms = bounds[1] + _GRACE_MS
    for older in tally.periods[:-1]:
        keep_until_ms = min(keep_until_ms, _ms(older.period.end) + _GRACE_MS)
    return tally, bounds, keep_until_ms


def _period_of(
    cycle: BillingCycle, occurred_at: str
) -> tuple[BillingPeriod, tuple[int, int], dict[str, MetricTally]] | None:
    """``cycle.period_containing`` of an event's time and its bounds in milliseconds, if they
    are whole milliseconds (else None), cached per cycle: the tallies a cycle opens are mostly
    of one period. None too for a time no period can be computed for (the per-event path
    rejects it)."""
    at = datetime.fromisoformat(occurred_at)
    at_ms = _ms(at)
    key = (cycle.anchor_day, cycle.timezone)
    opened = _OPENED.get(key)
    if opened is not None and opened[1][0] <= at_ms < opened[1][1]:
        return opened
    try:
        period = cycle.period_containing(at)
    except (ValueError, OverflowError):
        return None
    if not _whole_ms(period):
        return None
    if len(_OPENED) >= _DAYS_KEPT:
        _OPENED.clear()
    opened = _OPENED[key] = (period, (_ms(period.start), _ms(period.end)), {})
    return opened


_DAYS: dict[tuple[str, int], date] = {}
_DAYS_KEPT = 65_536
# The last (time zone, bucket) answered and its day: most runs of a batch ask for one.
_LAST_DAY: list[tuple[tuple[str, int], date | None]] = [(("", -1), None)]


def _bucket_day(cycle: BillingCycle, bucket: int) -> date | None:
    """The local day (``cycle.local_date``) of every instant of quarter hour ``bucket`` of UTC,
    cached per time zone; None if a day starts inside it."""
    key = (cycle.timezone, bucket)
    last = _LAST_DAY[0]
    if last[0] == key:
        return last[1]
    day = _DAYS.get(key)
    if day is not None:
        _LAST_DAY[0] = (key, day)
        return day
    first = _EPOCH + timedelta(milliseconds=bucket * _DAY_BUCKET_MS)
    day = cycle.local_date(first)
    if cycle.local_date(first + timedelta(milliseconds=_DAY_BUCKET_MS - 1)) != day:
        return None
    if len(_DAYS) >= _DAYS_KEPT:
        _DAYS.clear()
    _DAYS[key] = day
    _LAST_DAY[0] = (key, day)
    return day


_ONE_MS = timedelta(milliseconds=1)
# FirstSeen(at_ms, position) without the Python frame of a named tuple's __new__
_first_seen = tuple.__new__


_LAST_INSTANT: list[tuple[int, datetime]] = [(-1, _EPOCH)]


def _instant(at_ms: int) -> datetime:
    """The UTC datetime of ``at_ms``, as ``datetime.fromtimestamp(at_ms / 1000, tz=UTC)``: events
    received within one millisecond share it, so the last one is kept."""
    last = _LAST_INSTANT[0]
    if last[0] == at_ms:
        return last[1]
    at = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    _LAST_INSTANT[0] = (at_ms, at)
    return at


def _ms(at: datetime) -> int:
    """Whole milliseconds since the epoch, rounded down (exact: no float on the way)."""
    return (at - _EPOCH) // _ONE_MS
