"""What the kill test sends: workspaces joining in waves, each wave's settings commands, its
usage (single events keyed by workspace, mixed batches, some messages delivered twice), and
what that usage must produce (counts, alert crossings, Fin transitions)."""

from __future__ import annotations

import itertools
import random
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.support.messages import ADMIN

WORKER_COUNT = 3
WORKSPACES = tuple(f"ws-kill-{index:02d}" for index in range(24))
WAVES = 3  # workspaces join in waves: settings first, usage once they are answered
ADDITIVE_METRICS = ("messages_sent", "phone", "sms", "whatsapp", "email")
EVENTS_PER_WORKSPACE_SECOND = 8
FIN_STEPS_PER_SECOND = 1.0
SHARE_IN_MIXED_BATCHES = 0.35
SHARE_DELIVERED_TWICE = 0.03
SEND_TICK_SECONDS = 0.25
# Quantities are 1-3 and every threshold is at least this, so no event can reach two levels at
# once: the levels that alert then follow from the totals alone, whatever the processing order.
MIN_THRESHOLD = 20
LEVELS_WITH_EARLY_WARNINGS = (50, 80, 100)
SENDER = "meterwatch@billing.example.com"

Crossing = tuple[str, str, int]  # workspace, metric, level
FinStep = tuple[str, str, int]  # state, reason, usage after the step


@dataclass(frozen=True)
class AlertPlan:
    metric: str
    threshold: int
    early_warnings: bool

    def levels_reached(self, usage: int) -> list[int]:
        levels = LEVELS_WITH_EARLY_WARNINGS if self.early_warnings else (100,)
        return [level for level in levels if usage * 100 >= level * self.threshold]


@dataclass
class WorkspacePlan:
    workspace: str
    contacts: list[str]
    alerts: list[AlertPlan] = field(default_factory=list)
    fin_limit: int | None = None
    usage: Counter[str] = field(default_factory=Counter)
    fin_steps: list[FinStep] = field(default_factory=list)

    def crossings(self) -> set[Crossing]:
        return {
            (self.workspace, a.metric, level) for a in self.alerts for level in a.levels_reached(self.usage[a.metric])
        }


@dataclass
class Wave:
    start_offset: float  # seconds after the load starts
    plans: list[WorkspacePlan]
    commands: list[tuple[bytes, dict]]
    messages: list[tuple[bytes | None, Any]]
    distinct_events: int
    # Set when some of its commands were never answered: its usage is then never sent and no
    # outcome is expected for its workspaces, so the rest of the run can still be judged.
    stuck: StuckCommands | None = None


@dataclass(frozen=True)
class SentCommand:
    command_id: str
    kind: str
    workspace: str
    partition: int  # of usage.control
    offset: int


@dataclass
class StuckCommands:
    at: float  # seconds after the load started
    commands: list[SentCommand]
    lag: dict[str, float]
    health: dict[str, Any]


class EventFactory:
    """Events with ids from the seeded generator, so a seed replays the same traffic."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.now = datetime.now(UTC).isoformat()

    def event(self, workspace: str, metric: str, quantity: int, conversation: str | None = None) -> dict:
        return {
            "event_id": uuid.UUID(int=self.rng.getrandbits(128)).hex,
            "workspace_id": workspace,
            "metric": metric,
            "quantity": quantity,
            "occurred_at": self.now,
            "conversation_id": conversation,
        }

    def command(self, kind: str, workspace: str, **fields: Any) -> dict:
        return {
            "type": kind,
            "command_id": f"{kind}-{uuid.UUID(int=self.rng.getrandbits(128)).hex[:12]}",
            "issued_at": datetime.now(UTC).isoformat(),
            "workspace_id": workspace,
            "actor": ADMIN,
            **fields,
        }


def additive_events(factory: EventFactory, plan: WorkspacePlan, metrics: list[str], count: int) -> list[dict]:
    events = []
    for _ in range(count):
        metric = factory.rng.choices(metrics, weights=(4, 4, 2))[0]
        quantity = factory.rng.randint(1, 3)
        plan.usage[metric] += quantity
        events.append(factory.event(plan.workspace, metric, quantity))
    return events


def fin_walk(factory: EventFactory, plan: WorkspacePlan, steps: int) -> list[dict]:
    """Resolutions that wander around the limit, and the transitions they imply.

    Besides new resolutions and retractions of counted ones, it resolves counted conversations
    again and retracts ones never counted: neither changes usage, so neither may transition.
    """
    assert plan.fin_limit is not None
    rng, limit = factory.rng, plan.fin_limit
    counted: list[str] = []
    fresh = (f"{plan.workspace}-conv-{n}" for n in itertools.count())
    events = []
    for _ in range(steps):
        before = len(counted)
        retract, resolve_again, retract_unknown = (0.5, 0.65, 0.75) if before >= limit else (0.15, 0.25, 0.3)
        roll = rng.random()
        if counted and roll < retract:
            conversation, quantity = counted.pop(rng.randrange(len(counted))), -1
        elif counted and roll < resolve_again:
            conversation, quantity = rng.choice(counted), 1
        elif roll < retract_unknown:
            conversation, quantity = next(fresh), -1
        else:
            conversation, quantity = next(fresh), 1
            counted.append(conversation)
        events.append(factory.event(plan.workspace, "fin_resolutions", quantity, conversation))
        after = len(counted)
        if (before >= limit) != (after >= limit):
            plan.fin_steps.append(
                ("disabled", "limit_reached", after) if after >= limit else ("enabled", "usage_dropped", after)
            )
    plan.usage["fin_resolutions"] = len(counted)
    return events


def keyed_messages(rng: random.Random, workspace: str, events: list[dict]) -> list[tuple[bytes, Any]]:
    """Single events or small batches, in order, keyed by the workspace (one partition, one order)."""
    messages: list[tuple[bytes, Any]] = []
    position = 0
    while position < len(events):
        size = 1 if rng.random() < 0.7 else rng.randint(2, 5)
        chunk = events[position : position + size]
        messages.append((workspace.encode(), chunk[0] if len(chunk) == 1 else chunk))
        position += size
    return messages


def mixed_batches(rng: random.Random, events: list[dict]) -> list[tuple[None, list[dict]]]:
    """Batches of several workspaces' events with no key: counting must not depend on the key."""
    rng.shuffle(events)
    batches = []
    position = 0
    while position < len(events):
        size = rng.randint(20, 100)
        batches.append((None, events[position : position + size]))
        position += size
    return batches


def interleave(rng: random.Random, streams: list[list[Any]]) -> list[Any]:
    """Merge streams at random, keeping each stream's own order."""
    pending = [list(reversed(stream)) for stream in streams if stream]
    merged = []
    while pending:
        stream = rng.choice(pending)
        merged.append(stream.pop())
        if not stream:
            pending.remove(stream)
    return merged


def with_deliveries_twice(rng: random.Random, messages: list[Any]) -> list[Any]:
    """Some messages again, later in the stream, as a retrying producer would send them."""
    again_before: dict[int, list[Any]] = defaultdict(list)
    for position in rng.sample(range(len(messages)), int(len(messages) * SHARE_DELIVERED_TWICE)):
        again_before[rng.randint(position + 1, len(messages))].append(messages[position])
    result = []
    for position, message in enumerate(messages):
        result += again_before[position]
        result.append(message)
    return result + again_before[len(messages)]


def choose_thresholds(rng: random.Random, plan: WorkspacePlan, alerted: list[str]) -> None:
    """Thresholds that the planned total reaches 40% to 160% of: some crossed, some part-way."""
    for metric, early_warnings in zip(alerted, (True, rng.random() < 0.5), strict=True):
        threshold = max(MIN_THRESHOLD, round(plan.usage[metric] / rng.uniform(0.4, 1.6)))
        plan.alerts.append(AlertPlan(metric, threshold, early_warnings))


def settings_commands(factory: EventFactory, plan: WorkspacePlan) -> list[tuple[bytes, dict]]:
    key = plan.workspace.encode()
    commands = [factory.command("billing_contacts", plan.workspace, emails=plan.contacts)]
    for alert in plan.alerts:
        commands.append(
            factory.command(
                "alert_settings",
                plan.workspace,
                metric=alert.metric,
                threshold=alert.threshold,
                early_warnings=alert.early_warnings,
                enabled=True,
            )
        )
    if plan.fin_limit is not None:
        commands.append(
            factory.command(
                "limit_settings", plan.workspace, metric="fin_resolutions", limit=plan.fin_limit, enabled=True
            )
        )
    return [(key, command) for command in commands]


def plan_wave(factory: EventFactory, workspaces: list[str], start_offset: float, active_seconds: float) -> Wave:
    rng = factory.rng
    plans, keyed_streams, pooled, commands = [], [], [], []
    distinct = 0
    for workspace in workspaces:
        plan = WorkspacePlan(workspace, contacts=[f"billing@{workspace}.example.com", f"cfo@{workspace}.example.com"])
        metrics = rng.sample(ADDITIVE_METRICS, 3)  # the first two carry alerts, the third none
        events = additive_events(factory, plan, metrics, int(EVENTS_PER_WORKSPACE_SECOND * active_seconds))
        if WORKSPACES.index(workspace) % 3 == 0:
            plan.fin_limit = rng.randint(3, 7)
            fin_events = fin_walk(factory, plan, int(FIN_STEPS_PER_SECOND * active_seconds))
        else:
            fin_events = []
        choose_thresholds(rng, plan, metrics[:2])
        commands += settings_commands(factory, plan)
        in_pool = [e for e in events if rng.random() < SHARE_IN_MIXED_BATCHES]
        pooled_ids = {id(e) for e in in_pool}
        singles = [e for e in events if id(e) not in pooled_ids]
        pooled += in_pool
        keyed_streams.append(keyed_messages(rng, workspace, interleave(rng, [singles, fin_events])))
        distinct += len(events) + len(fin_events)
        plans.append(plan)
    messages = with_deliveries_twice(rng, interleave(rng, [*keyed_streams, mixed_batches(rng, pooled)]))
    return Wave(start_offset, plans, commands, messages, distinct)


def plan_run(rng: random.Random, load_seconds: float) -> list[Wave]:
    factory = EventFactory(rng)
    per_wave = len(WORKSPACES) // WAVES
    waves = []
    for index in range(WAVES):
        start = index * load_seconds / (WAVES + 1)
        workspaces = list(WORKSPACES[index * per_wave : (index + 1) * per_wave])
        waves.append(plan_wave(factory, workspaces, start, load_seconds - start))
    return waves
