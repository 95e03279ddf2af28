"""Demo usage for ``meterwatch dev``: a billing period already lived, then a live story.

Three workspaces: ``ws_acme_eu`` and ``ws_acme_us`` share the contract ``c_acme`` (periods start on
the 15th, Europe/Dublin), ``ws_globex`` pays as it goes (calendar months, UTC).

:func:`backfill` fills the current period up to now, as product services that report after a delay
would: hourly usage with a weekday/weekend and working-day rhythm, a seat change, a correction (a
refund of email usage) and one event delivered twice. It leaves each story close to its turn:
``ws_acme_us``'s SMS just under 80% of its alert threshold, its WhatsApp cost past 50% of its cost
alert, the contract's messages under 80% of their included amount, ``ws_acme_eu``'s Fin
resolutions a few below its limit.

Once the backfill is counted, ``ws_acme_us`` turns on forecast warnings for its SMS alert
(:func:`forecast_warning_command`): at the pace of the last days, its SMS will pass the alert's
levels before the period ends, and it is told so.

:class:`LiveUsage` then streams usage as it happens, and within its first few hundred events (at
20 a second, about a minute) crosses those levels, passes the WhatsApp cost alert, resolves Fin conversations until Fin is
disabled, retracts one so that it is enabled again, and reports one late event.

Both are pure: the time and the random source are given, so a test can replay them.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from .core.periods import CALENDAR_MONTH_UTC, BillingCycle, BillingPeriod

CONTRACT_ID = "c_acme"
CONTRACT_WORKSPACES = ("ws_acme_eu", "ws_acme_us")
PAYG_WORKSPACE = "ws_globex"
WORKSPACES = (*CONTRACT_WORKSPACES, PAYG_WORKSPACE)
ADMIN = {"id": "admin_1", "billing_permission": True}

CONTRACT_ANCHOR = date(2026, 1, 15)
CONTRACT_TIMEZONE = "Europe/Dublin"
CONTRACT_CYCLE = BillingCycle.from_anchor(CONTRACT_ANCHOR, CONTRACT_TIMEZONE)

SMS_THRESHOLD = 400  # every workspace's SMS alert, with early warnings
FIN_LIMIT = 60  # ws_acme_eu's Fin hard limit
FIN_WORKSPACE = "ws_acme_eu"
SMS_WORKSPACE = "ws_acme_us"
INCLUDED_MESSAGES = 5000  # the contract's included messages_sent
# ws_acme_us's cost alert: its WhatsApp cost (0.03 USD a message, nothing included) at 6.00 USD,
# 200 messages. The backfill leaves 150 (4.50 USD, past 50%); the live story passes 100%.
COST_WORKSPACE = "ws_acme_us"
COST_METRIC = "whatsapp"
COST_ALERT_AMOUNT = "6.00"
COST_ALERT_USAGE = 200  # the usage at which the cost reaches COST_ALERT_AMOUNT

_PRICES = {
    "messages_sent": {"unit_price": "0.01", "included": INCLUDED_MESSAGES},
    "email": {"unit_price": "0.002", "included": None},
    "sms": {"unit_price": "0.05", "included": 1000},
    "whatsapp": {"unit_price": "0.03", "included": None},
    "phone": {"unit_price": "0.10", "included": None},
    "fin_resolutions": {"unit_price": "0.99", "included": 300},
    "seats": {"unit_price": "39.00", "included": 10},
}

# What the backfill leaves counted for the period so far. The contract's messages: 3,550 of 5,000
# (71%); ws_acme_us's SMS: 290 of 400 (past 50%, short of 80%); ws_acme_eu's Fin: 54 of 60.
_BACKFILLED: dict[str, dict[str, int]] = {
    "ws_acme_eu": {"messages_sent": 1900, "email": 2400, "sms": 120, "whatsapp": 300, "phone": 40},
    "ws_acme_us": {"messages_sent": 1650, "email": 1800, "sms": 290, "whatsapp": 150, "phone": 25},
    "ws_globex": {"messages_sent": 700, "email": 900, "sms": 150, "whatsapp": 60, "phone": 12},
}
_BACKFILLED_FIN = {"ws_acme_eu": 54, "ws_acme_us": 35, "ws_globex": 15}
# Seats in use: (before the change, after it), the change falling halfway through the days so far.
_SEATS = {"ws_acme_eu": (8, 11), "ws_acme_us": (5, 5), "ws_globex": (3, 4)}
_CORRECTION = ("ws_globex", "email", 25)

# Relative weights of live usage: messages and email dominate, Fin and phone are rarer.
_METRIC_WEIGHTS = {"messages_sent": 40, "email": 25, "sms": 12, "whatsapp": 8, "phone": 4, "fin_resolutions": 10}
_WEEKEND_FACTOR = 0.3
# Share of a working day's usage in each local hour, 0 to 23: quiet nights, busy working hours.
_HOURLY = (0, 0, 0, 0, 0, 0, 1, 2, 5, 9, 10, 10, 8, 9, 10, 10, 8, 6, 4, 3, 2, 1, 1, 0)


def cycle_of(workspace_id: str) -> BillingCycle:
    return CONTRACT_CYCLE if workspace_id in CONTRACT_WORKSPACES else CALENDAR_MONTH_UTC


def setup_commands(now: datetime) -> list[tuple[str, dict[str, Any]]]:
    """(key, command) pairs for ``usage.control``: contract, contacts, alerts, a Fin limit."""
    issued = now.isoformat()
    commands: list[tuple[str, dict[str, Any]]] = [
        (
            CONTRACT_ID,
            {
                "type": "subscription",
                "command_id": "demo-subscription",
                "issued_at": issued,
                "contract_id": CONTRACT_ID,
                "workspace_ids": list(CONTRACT_WORKSPACES),
                "billing_anchor": CONTRACT_ANCHOR.isoformat(),
                "timezone": CONTRACT_TIMEZONE,
                "currency": "USD",
                "prices": _PRICES,
            },
        )
    ]
    for workspace in WORKSPACES:
        about = {"issued_at": issued, "workspace_id": workspace, "actor": ADMIN}
        contact = f"billing@{workspace.removeprefix('ws_').replace('_', '-')}.example.com"
        commands.append(
            (
                workspace,
                {"type": "billing_contacts", "command_id": f"demo-contacts-{workspace}", **about, "emails": [contact]},
            )
        )
        commands.append(
            (
                workspace,
                {
                    "type": "alert_settings",
                    "command_id": f"demo-alert-sms-{workspace}",
                    **about,
                    "metric": "sms",
                    "threshold": SMS_THRESHOLD,
                    "early_warnings": True,
                    "enabled": True,
                },
            )
        )
    commands.append(
        (
            COST_WORKSPACE,
            {
                "type": "cost_alert_settings",
                "command_id": f"demo-cost-alert-{COST_METRIC}",
                "issued_at": issued,
                "workspace_id": COST_WORKSPACE,
                "actor": ADMIN,
                "metric": COST_METRIC,
                "amount": COST_ALERT_AMOUNT,
                "currency": "USD",
                "enabled": True,
            },
        )
    )
    commands.append(
        (
            FIN_WORKSPACE,
            {
                "type": "limit_settings",
                "command_id": "demo-fin-limit",
                "issued_at": issued,
                "workspace_id": FIN_WORKSPACE,
                "actor": ADMIN,
                "metric": "fin_resolutions",
                "limit": FIN_LIMIT,
                "enabled": True,
            },
        )
    )
    return commands


def forecast_warning_command(now: datetime) -> tuple[str, dict[str, Any]]:
    """``ws_acme_us``'s SMS alert again, now also warning when the forecast reaches a level: as a
    billing person would after looking at the page, once the period so far has been counted."""
    return (
        SMS_WORKSPACE,
        {
            "type": "alert_settings",
            "command_id": "demo-forecast-sms",
            "issued_at": now.isoformat(),
            "workspace_id": SMS_WORKSPACE,
            "actor": ADMIN,
            "metric": "sms",
            "threshold": SMS_THRESHOLD,
            "early_warnings": True,
            "enabled": True,
            "forecast_warnings": True,
        },
    )


@dataclass
class Backfill:
    """The period so far: events in the order they are published, and what they add up to."""

    events: list[dict[str, Any]]
    notes: list[str]
    # Counted usage per (workspace, metric) of the additive metrics; the duplicate counts once.
    totals: Counter[tuple[str, str]]
    # Each workspace's resolved Fin conversations.
    conversations: dict[str, list[str]]


def backfill(now: datetime, rng: random.Random) -> Backfill:
    """Usage for each workspace from the start of its current period up to ``now``."""
    events: list[dict[str, Any]] = []
    totals: Counter[tuple[str, str]] = Counter()
    conversations: dict[str, list[str]] = {}
    notes: list[str] = []
    for workspace in WORKSPACES:
        cycle = cycle_of(workspace)
        period = cycle.period_containing(now)
        slots = _hours(period, now)
        weights = _weights(slots, cycle, rng)
        own: list[dict[str, Any]] = []
        for metric, total in _BACKFILLED[workspace].items():
            for slot, quantity in zip(slots, _allocate(total, weights), strict=True):
                if quantity:
                    own.append(_event(workspace, metric, quantity, _within_hour(slot, now, rng)))
            totals[workspace, metric] += total
        resolved = [f"conv_{workspace.removeprefix('ws_')}_{n}" for n in range(1, _BACKFILLED_FIN[workspace] + 1)]
        for conversation, at in zip(resolved, _spread(len(resolved), slots, weights, rng), strict=True):
            own.append(_event(workspace, "fin_resolutions", 1, _within_hour(at, now, rng), conversation))
        conversations[workspace] = resolved
        own += _seat_reports(workspace, cycle, period, now, notes)
        if workspace == _CORRECTION[0]:
            own.append(_correction(own, now))
            notes.append(f"a correction of -{_CORRECTION[2]} {_CORRECTION[1]} for {workspace}")
            totals[workspace, _CORRECTION[1]] -= _CORRECTION[2]
        own.sort(key=lambda event: datetime.fromisoformat(event["occurred_at"]))
        events += own
    repeated = next(e for e in events if e["workspace_id"] == "ws_acme_us" and e["metric"] == "messages_sent")
    events.append(dict(repeated))
    notes.append(f"event {repeated['event_id'][:8]} sent twice (counted once)")
    return Backfill(events, notes, totals, conversations)


def _hours(period: BillingPeriod, now: datetime) -> list[datetime]:
    """The starts of the period's whole hours that have passed; at least one."""
    start = period.start.astimezone(UTC)
    hours = int((now - start) / timedelta(hours=1))
    return [start + timedelta(hours=h) for h in range(max(hours, 1))]


def _weights(slots: list[datetime], cycle: BillingCycle, rng: random.Random) -> list[float]:
    weights = []
    for slot in slots:
        local = slot.astimezone(ZoneInfo(cycle.timezone))
        factor = _WEEKEND_FACTOR if local.weekday() >= 5 else 1.0
        weights.append(factor * _HOURLY[local.hour] * rng.uniform(0.6, 1.4))
    return weights if sum(weights) > 0 else [1.0] * len(slots)


def _allocate(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainders): the parts add up exactly."""
    whole = sum(weights)
    shares = [total * w / whole for w in weights]
    parts = [int(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: shares[i] - parts[i], reverse=True)
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _spread(count: int, slots: list[datetime], weights: list[float], rng: random.Random) -> list[datetime]:
    return sorted(rng.choices(slots, weights, k=count))


def _within_hour(slot: datetime, now: datetime, rng: random.Random) -> str:
    at = min(slot + timedelta(seconds=rng.randrange(3600)), max(slot, now - timedelta(seconds=1)))
    return at.isoformat()


def _seat_reports(
    workspace: str, cycle: BillingCycle, period: BillingPeriod, now: datetime, notes: list[str]
) -> list[dict[str, Any]]:
    """One report a day, at the period's start and then each local morning; the count changes halfway."""
    days = [day for day in cycle.days_in(period) if day <= cycle.local_date(now)]
    before, after = _SEATS[workspace]
    change = len(days) // 2
    if before != after and change:
        notes.append(f"seats of {workspace} from {before} to {after} on {days[change].isoformat()}")
    reports = []
    for index, day in enumerate(days):
        morning = datetime(day.year, day.month, day.day, 9, tzinfo=ZoneInfo(cycle.timezone)).astimezone(UTC)
        at = max(period.start.astimezone(UTC), min(morning, now - timedelta(seconds=1)))
        reports.append(_event(workspace, "seats", after if index >= change else before, at.isoformat()))
    return reports


def _correction(own: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """A refund of email usage, just after the report that takes the period's email past twice it."""
    workspace, metric, amount = _CORRECTION
    reports = sorted((e for e in own if e["metric"] == metric), key=lambda e: datetime.fromisoformat(e["occurred_at"]))
    running = 0
    for report in reports:
        running += report["quantity"]
        if running >= 2 * amount:
            break
    at = datetime.fromisoformat(report["occurred_at"])
    return _event(workspace, metric, -amount, min(at + timedelta(seconds=1), max(at, now)).isoformat())


@dataclass
class LiveUsage:
    """Usage as it happens, one event per :meth:`next`, with the story's turns at fixed event counts.

    At event 100 a late event arrives (yesterday's phone usage); from event 300 ``ws_acme_eu``
    resolves a Fin conversation every 100 events until its limit; 400 events after the limit was
    reached one resolution is retracted. By event 600 ``ws_acme_us``'s SMS, by event 750 its
    WhatsApp cost (100% of its cost alert) and by event 900 the contract's messages are made to
    have passed their levels, should random traffic not have done it.
    """

    backfill: Backfill
    rng: random.Random
    totals: Counter[tuple[str, str]] = field(init=False)
    conversations: dict[str, list[str]] = field(init=False)
    _ticks: itertools.count[int] = field(init=False, default_factory=itertools.count)
    _fin_limit_at: int | None = field(init=False, default=None)
    _retracted: bool = field(init=False, default=False)

    LATE_AT = 100
    FIN_FROM = 300
    FIN_EVERY = 100
    RETRACT_AFTER = 400
    SMS_BY = 600
    COST_BY = 750
    MESSAGES_BY = 900

    def __post_init__(self) -> None:
        self.totals = Counter(self.backfill.totals)
        self.conversations = {w: list(c) for w, c in self.backfill.conversations.items()}

    def next(self, now: datetime) -> tuple[dict[str, Any], str | None]:
        """The next event to publish and, for a turn of the story, what it is."""
        tick = next(self._ticks)
        at = now.isoformat()
        for turn in (self._late, self._fin, self._sms_level, self._cost_level, self._messages_level):
            told = turn(tick, now)
            if told is not None:
                return told
        return self._background(at), None

    def _late(self, tick: int, now: datetime) -> tuple[dict[str, Any], str] | None:
        if tick != self.LATE_AT:
            return None
        occurred = now - timedelta(days=1)
        if cycle_of(PAYG_WORKSPACE).period_containing(occurred) != cycle_of(PAYG_WORKSPACE).period_containing(now):
            occurred = now - timedelta(hours=1)
        self.totals[PAYG_WORKSPACE, "phone"] += 3
        event = _event(PAYG_WORKSPACE, "phone", 3, occurred.isoformat())
        return event, f"a late event: 3 phone minutes for {PAYG_WORKSPACE} that happened at {event['occurred_at']}"

    def _fin(self, tick: int, now: datetime) -> tuple[dict[str, Any], str] | None:
        if tick < self.FIN_FROM or (tick - self.FIN_FROM) % self.FIN_EVERY:
            return None
        resolved = self.conversations[FIN_WORKSPACE]
        if self._fin_limit_at is None:
            conversation = f"conv_live_{tick}"
            resolved.append(conversation)
            if len(resolved) >= FIN_LIMIT:
                self._fin_limit_at = tick
            note = f"Fin resolved conversation {len(resolved)} of {FIN_WORKSPACE}'s limit of {FIN_LIMIT}"
            return _event(FIN_WORKSPACE, "fin_resolutions", 1, now.isoformat(), conversation), note
        if not self._retracted and tick - self._fin_limit_at >= self.RETRACT_AFTER:
            self._retracted = True
            conversation = resolved.pop()
            note = f"a Fin resolution of {FIN_WORKSPACE} retracted ({conversation}): below its limit again"
            return _event(FIN_WORKSPACE, "fin_resolutions", -1, now.isoformat(), conversation), note
        return None

    def _sms_level(self, tick: int, now: datetime) -> tuple[dict[str, Any], str] | None:
        return self._top_up(tick, self.SMS_BY, (SMS_WORKSPACE,), "sms", SMS_THRESHOLD * 80 // 100, now)

    def _cost_level(self, tick: int, now: datetime) -> tuple[dict[str, Any], str] | None:
        if tick != self.COST_BY:
            return None
        short = COST_ALERT_USAGE - self.totals[COST_WORKSPACE, COST_METRIC]
        if short <= 0:
            return None
        self.totals[COST_WORKSPACE, COST_METRIC] += short
        note = (
            f"a burst of {short} {COST_METRIC} for {COST_WORKSPACE}, to pass its {COST_ALERT_AMOUNT} USD "
            f"{COST_METRIC} cost alert"
        )
        return _event(COST_WORKSPACE, COST_METRIC, short, now.isoformat()), note

    def _messages_level(self, tick: int, now: datetime) -> tuple[dict[str, Any], str] | None:
        level = INCLUDED_MESSAGES * 80 // 100
        return self._top_up(tick, self.MESSAGES_BY, CONTRACT_WORKSPACES, "messages_sent", level, now)

    def _top_up(
        self, tick: int, at_tick: int, workspaces: tuple[str, ...], metric: str, level: int, now: datetime
    ) -> tuple[dict[str, Any], str] | None:
        if tick != at_tick:
            return None
        short = level - sum(self.totals[w, metric] for w in workspaces)
        if short <= 0:
            return None
        self.totals[workspaces[0], metric] += short
        note = f"a burst of {short} {metric} for {workspaces[0]}, to reach 80%"
        return _event(workspaces[0], metric, short, now.isoformat()), note

    def _background(self, at: str) -> dict[str, Any]:
        workspace = self.rng.choice(WORKSPACES)
        metric = self.rng.choices(list(_METRIC_WEIGHTS), list(_METRIC_WEIGHTS.values()))[0]
        if metric == "fin_resolutions":
            if workspace == FIN_WORKSPACE:
                metric = "messages_sent"  # Fin's turns there are the story's
            else:
                return self._fin_background(workspace, at)
        quantity = self.rng.choice((1, 1, 1, 2, 5))
        self.totals[workspace, metric] += quantity
        return _event(workspace, metric, quantity, at)

    def _fin_background(self, workspace: str, at: str) -> dict[str, Any]:
        resolved = self.conversations[workspace]
        if resolved and self.rng.random() < 0.1:
            return _event(workspace, "fin_resolutions", -1, at, resolved.pop(self.rng.randrange(len(resolved))))
        conversation = f"conv_{uuid.UUID(int=self.rng.getrandbits(128)).hex[:12]}"
        resolved.append(conversation)
        return _event(workspace, "fin_resolutions", 1, at, conversation)


def _event(
    workspace: str, metric: str, quantity: int, occurred_at: str, conversation: str | None = None
) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "workspace_id": workspace,
        "metric": metric,
        "quantity": quantity,
        "occurred_at": occurred_at,
        "conversation_id": conversation,
    }
