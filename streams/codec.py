"""Table values to bytes and back (orjson), kept apart from the core that defines them.

Times are written as ``datetime.isoformat()`` and days as ``date.isoformat()`` write them;
orjson writes both natively in that very form (``_NATIVE``), which is how values are encoded.
"""

from __future__ import annotations

import weakref
from datetime import date, datetime
from decimal import Decimal
from functools import partial
from types import MappingProxyType
from typing import Any

import orjson

from ..core.alerts import AlertSetting, AlertState, ContractAlertSetting, ContractAlertState, ScheduledSetting
from ..core.command_replay import NO_COMMANDS, RecentCommands
from ..core.contract_usage import ContractPeriod, ContractUsage
from ..core.contracts import ContractTerms, Price, WorkspaceProfile
from ..core.cost_alerts import CostAlertSetting, CostAlertState, CostScheduled
from ..core.fin_limit import FinState, LimitSetting
from ..core.mail_cap import MailHour
from ..core.metering import MetricTally, PeriodTally, WorkspaceUsage
from ..core.metric_kinds import FIN_RESOLUTIONS
from ..core.periods import BillingCycle, BillingPeriod
from ..core.plain import PLAIN_METRICS, PlainTally, PlainWorkspace
from ..core.workspace import ContractOthers, WorkspaceState

# datetime and date (dict keys included) written by orjson, as their isoformat() would be
_NATIVE = orjson.OPT_NON_STR_KEYS


def _packed(raw: bytes) -> bytes:
    """A copy of an orjson result that is kept (a table value). Kept as they come, orjson's
    results each take memory of their own from a fresh page: a page fault per value written,
    most of the encoding's cost at 100,000 workspaces; copies lie densely, about ten a page."""
    return bytes(memoryview(raw))


def encode_workspace(state: WorkspaceState | PlainWorkspace) -> bytes:
    if type(state) is PlainWorkspace:
        return _encode_plain(state)
    others = state.contract_others
    value = {
        "usage": _usage(state.usage),
        "profile": _profile(state.profile),
        "alerts": {metric: _alert_state(a) for metric, a in state.alerts.items()} if state.alerts else {},
        "contract_others": None if others is None else {"period": _period(others.period), "usage": dict(others.usage)},
        "fin": None if state.fin is None else _fin(state.fin),
    }
    if state.limits:
        value["limits"] = {metric: _fin(limit) for metric, limit in state.limits.items()}
    if state.recent_commands:
        value["recent_commands"] = dict(state.recent_commands)
    if state.mail_hour is not None:
        value["mail_hour"] = [state.mail_hour.hour, state.mail_hour.mails]
    if state.cost_alerts:
        value["cost_alerts"] = {key: _cost_alert_state(a) for key, a in state.cost_alerts.items()}
    return _packed(orjson.dumps(value, option=_NATIVE))


# A plain workspace's value (core/plain.py), as encode_workspace writes its WorkspaceState: the
# same bytes, put together from the parts that change.
_PLAIN_VALUE = (
    b'{"usage":{"applied_through":%d,"tallies":{%b}},'
    b'"profile":{"billing_contacts":[],"contract":null},"alerts":{},"contract_others":null,"fin":null}'
)
_PLAIN_TALLY = (
    b'%b:[{"start":%b,"end":%b,"usage":%d,"last_updated":%b,"daily":%b,"conversations":[],"seats_carried_in":0}]'
)
# period -> its start and end as JSON; most plain workspaces are in one of a few periods
_PERIOD_JSON: dict[BillingPeriod, tuple[bytes, bytes]] = {}
_METRIC_JSON = {metric: orjson.dumps(metric) for metric in PLAIN_METRICS}


# The last (period, its JSON) and (last_updated, its JSON) written, each read and replaced as one
# reference: the values of a batch are mostly of one period, and events received in one
# millisecond share one datetime (core/steps).
_LAST_PERIOD: list[tuple[Any, tuple[bytes, bytes]]] = [(None, (b"", b""))]
_LAST_UPDATED: list[tuple[Any, bytes]] = [(None, b"")]


def _encode_plain(plain: PlainWorkspace) -> bytes:
    tallies = [_encode_plain_tally(tally) for tally in plain.tallies]
    return _PLAIN_VALUE % (plain.applied_through, tallies[0] if len(tallies) == 1 else b",".join(tallies))


def _encode_plain_tally(tally: PlainTally) -> bytes:
    period = tally.period
    last_period = _LAST_PERIOD[0]
    if last_period[0] is period:
        ends = last_period[1]
    else:
        ends = _PERIOD_JSON.get(period)
        if ends is None:
            if len(_PERIOD_JSON) >= 1024:
                _PERIOD_JSON.clear()
            ends = _PERIOD_JSON[period] = (orjson.dumps(period.start), orjson.dumps(period.end))
        _LAST_PERIOD[0] = (period, ends)
    last_updated = tally.last_updated
    last = _LAST_UPDATED[0]
    if last[0] is last_updated:
        updated = last[1]
    else:
        updated = orjson.dumps(last_updated)
        _LAST_UPDATED[0] = (last_updated, updated)
    return _PLAIN_TALLY % (
        _METRIC_JSON[tally.metric],
        ends[0],
        ends[1],
        tally.usage,
        updated,
        orjson.dumps(tally.daily, option=_NATIVE),
    )


def decode_workspace(raw: bytes | None) -> WorkspaceState | None:
    if not raw:
        return None
    data = orjson.loads(raw)
    others = data.get("contract_others")
    return WorkspaceState(
        usage=_read_usage(data["usage"]),
        profile=_read_profile(data["profile"]),
        alerts=MappingProxyType({m: _read_alert_state(a) for m, a in data.get("alerts", {}).items()}),
        contract_others=None
        if others is None
        else ContractOthers(_read_period(others["period"]), MappingProxyType(others["usage"])),
        fin=None if data.get("fin") is None else _read_fin(data["fin"]),
        limits=MappingProxyType({m: _read_fin(limit, m) for m, limit in data.get("limits", {}).items()}),
        recent_commands=_read_recent(data.get("recent_commands")),
        mail_hour=_read_mail_hour(data.get("mail_hour")),
        cost_alerts=MappingProxyType({k: _read_cost_alert_state(a) for k, a in data.get("cost_alerts", {}).items()}),
    )


def _cost_setting(setting: CostAlertSetting | None) -> list[Any] | None:
    if setting is None:
        return None
    return [str(setting.amount), setting.currency, setting.enabled, setting.changed_by, setting.changed_at]


def _read_cost_setting(data: list[Any] | None) -> CostAlertSetting | None:
    if data is None:
        return None
    return CostAlertSetting(Decimal(data[0]), data[1], data[2], *_read_changed(data[3:5]))


def _cost_alert_state(state: CostAlertState) -> dict[str, Any]:
    scheduled = state.scheduled
    return {
        "period": _period(state.period),
        "setting": _cost_setting(state.setting),
        "scheduled": None
        if scheduled is None
        else {"setting": _cost_setting(scheduled.setting), "effective_from": scheduled.effective_from.isoformat()},
        "alerted": sorted([str(amount), level] for amount, level in state.alerted),
    }


def _read_cost_alert_state(data: dict[str, Any]) -> CostAlertState:
    scheduled = data["scheduled"]
    return CostAlertState(
        period=_read_period(data["period"]),
        setting=_read_cost_setting(data["setting"]),
        scheduled=None
        if scheduled is None
        else CostScheduled(
            _read_cost_setting(scheduled["setting"]),  # type: ignore[arg-type]
            datetime.fromisoformat(scheduled["effective_from"]),
        ),
        alerted=frozenset((Decimal(pair[0]), pair[1]) for pair in data["alerted"]),
    )


def _read_mail_hour(data: list[int] | None) -> MailHour | None:
    return None if not data else MailHour(data[0], data[1])


def _read_recent(data: dict[str, int] | None) -> RecentCommands:
    return NO_COMMANDS if not data else MappingProxyType(data)


def _fin(fin: FinState) -> dict[str, Any]:
    setting = fin.setting
    return {
        "workspace_id": fin.workspace_id,
        "state": fin.state,
        "period": _period(fin.period),
        "usage": fin.usage,
        "setting": None if setting is None else [setting.limit, setting.enabled, *_changed(setting)],
        "transitions_in_period": fin.transitions_in_period,
    }


def _read_fin(data: dict[str, Any], metric: str = FIN_RESOLUTIONS) -> FinState:
    setting = data["setting"]
    return FinState(
        metric=metric,
        workspace_id=data["workspace_id"],
        state=data["state"],
        period=_read_period(data["period"]),
        usage=data["usage"],
        setting=None if setting is None else LimitSetting(setting[0], setting[1], *_read_changed(setting[2:])),
        transitions_in_period=data["transitions_in_period"],
    )


def _period(period: BillingPeriod | None) -> list[datetime] | None:
    return None if period is None else [period.start, period.end]


def _read_period(data: list[str] | None) -> BillingPeriod | None:
    return None if data is None else BillingPeriod(datetime.fromisoformat(data[0]), datetime.fromisoformat(data[1]))


def _setting(setting: AlertSetting | None) -> list[Any] | None:
    if setting is None:
        return None
    fields = [setting.threshold, setting.early_warnings, setting.enabled]
    if setting.forecast_warnings:  # only when on, after who and when: a value without it reads as off
        return [*fields, setting.changed_by, setting.changed_at, True]
    return [*fields, *_changed(setting)]


def _read_setting(data: list[Any] | None) -> AlertSetting | None:
    if data is None:
        return None
    return AlertSetting(data[0], data[1], data[2], *_read_changed(data[3:5]), len(data) > 5 and data[5])


def _changed(setting: AlertSetting | LimitSetting | ContractAlertSetting) -> list[Any]:
    """Who set a setting and when, after its fields; nothing for a setting of unknown origin."""
    if setting.changed_by is None and setting.changed_at is None:
        return []
    return [setting.changed_by, setting.changed_at]


def _read_changed(data: list[Any]) -> tuple[str | None, datetime | None]:
    if not data:
        return None, None
    return data[0], None if data[1] is None else datetime.fromisoformat(data[1])


def _alert_state(state: AlertState) -> dict[str, Any]:
    scheduled = state.scheduled
    return {
        "period": _period(state.period),
        "setting": _setting(state.setting),
        "scheduled": None
        if scheduled is None
        else {"setting": _setting(scheduled.setting), "effective_from": scheduled.effective_from.isoformat()},
        "alerted": sorted(list(pair) for pair in state.alerted),
        # Forecast warnings (absent from a value without them: they read back as never judged)
        **({"forecast_warned": sorted(list(pair) for pair in state.forecast_warned)} if state.forecast_warned else {}),
        **({"forecast_judged_at": state.forecast_judged_at} if state.forecast_judged_at is not None else {}),
    }


def _read_alert_state(data: dict[str, Any]) -> AlertState:
    scheduled, judged = data["scheduled"], data.get("forecast_judged_at")
    return AlertState(
        period=_read_period(data["period"]),
        setting=_read_setting(data["setting"]),
        scheduled=None
        if scheduled is None
        else ScheduledSetting(
            _read_setting(scheduled["setting"]),  # type: ignore[arg-type]
            datetime.fromisoformat(scheduled["effective_from"]),
        ),
        alerted=frozenset((pair[0], pair[1]) for pair in data["alerted"]),
        forecast_warned=frozenset((pair[0], pair[1]) for pair in data.get("forecast_warned", ())),
        forecast_judged_at=None if judged is None else datetime.fromisoformat(judged),
    )


def _usage(usage: WorkspaceUsage) -> dict[str, Any]:
    tallies = {}
    for metric, tally in usage.tallies.items():  # a loop: most workspaces have one metric of one period
        periods = tally.periods
        tallies[metric] = [_period_tally(periods[0])] if len(periods) == 1 else [_period_tally(t) for t in periods]
    return {"applied_through": usage.applied_through, "tallies": tallies}


class EncodedConversations:
    """Large sets of a period's Fin conversations, kept encoded while they live.

    A workspace value is written whole, and a period's Fin conversations are written one by
    one in sorted order: a busy Fin workspace counts thousands in a month, and were they encoded
    again for every event of every metric, an SMS would cost that workspace a millisecond. Sets
    are frozen and a tally that gains no conversation keeps its set, so the bytes of a set
    encoded before are taken from here instead.

    An encoding is kept from the set's first write for as long as the set lives (a weak
    reference drops it with the set), while the encodings kept add up to at most
    ``limit_bytes``; once they do, further sets are encoded in place until room is made.
    Nothing is evicted for a newcomer: with more large sets than fit, a cache that made room
    would drop each one before its next use, and encode every one twice. Sets smaller than
    ``MIN_CONVERSATIONS`` are encoded in place: cheaper than keeping and finding them.
    """

    MIN_CONVERSATIONS = 64

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.bytes = 0
        # id(conversations) -> (a weak reference to the set, its encoding, the encoding's size)
        self._kept: dict[int, tuple[weakref.ref[frozenset[str]], orjson.Fragment, int]] = {}

    def encoded(self, conversations: frozenset[str]) -> list[str] | orjson.Fragment:
        """``conversations`` as the sorted JSON array a value holds: the kept bytes of an
        earlier call for the same set, if any."""
        if len(conversations) < self.MIN_CONVERSATIONS:
            return sorted(conversations)
        entry = self._kept.get(id(conversations))
        if entry is not None:  # a set's entry goes with it, so no other object has its id
            return entry[1]
        if self.bytes >= self.limit_bytes:
            return sorted(conversations)
        raw = _packed(orjson.dumps(sorted(conversations)))
        fragment = orjson.Fragment(raw)
        key = id(conversations)
        self._kept[key] = (weakref.ref(conversations, partial(self._forget, key)), fragment, len(raw))
        self.bytes += len(raw)
        return fragment

    def clear(self) -> None:
        self._kept.clear()
        self.bytes = 0

    def _forget(self, key: int, _gone: weakref.ref[frozenset[str]]) -> None:
        entry = self._kept.pop(key, None)
        if entry is not None:
            self.bytes -= entry[2]


# The encodings kept at most (a little more: the last one admitted may pass it). 2,000
# conversation ids of 32 characters are about 70 kB encoded.
ENCODED_CONVERSATIONS_BYTES = 64 * 1024 * 1024
encoded_conversations = EncodedConversations(ENCODED_CONVERSATIONS_BYTES)


def _read_usage(data: dict[str, Any]) -> WorkspaceUsage:
    tallies = {
        metric: MetricTally(metric, tuple(_read_period_tally(t) for t in periods))
        for metric, periods in data["tallies"].items()
    }
    return WorkspaceUsage(tallies=MappingProxyType(tallies), applied_through=data["applied_through"])


def _period_tally(tally: PeriodTally) -> dict[str, Any]:
    return {
        "start": tally.period.start,
        "end": tally.period.end,
        "usage": tally.usage,
        "last_updated": tally.last_updated,
        "daily": tally.daily.copy(),  # a dict or a read-only view of one: either copies the dict
        "conversations": encoded_conversations.encoded(tally.conversations) if tally.conversations else [],
        "seats_carried_in": tally.seats_carried_in,
    }


def _read_period_tally(data: dict[str, Any]) -> PeriodTally:
    return PeriodTally(
        period=BillingPeriod(datetime.fromisoformat(data["start"]), datetime.fromisoformat(data["end"])),
        usage=data["usage"],
        last_updated=datetime.fromisoformat(data["last_updated"]) if data["last_updated"] else None,
        daily=MappingProxyType({date.fromisoformat(d): n for d, n in data["daily"].items()}),
        conversations=frozenset(data["conversations"]),
        seats_carried_in=data["seats_carried_in"],
    )


def _profile(profile: WorkspaceProfile) -> dict[str, Any]:
    if profile.contract is None and not profile.billing_contacts:
        return {"billing_contacts": [], "contract": None}
    return {"billing_contacts": list(profile.billing_contacts), "contract": _terms(profile.contract)}


def _terms(contract: ContractTerms | None) -> dict[str, Any] | None:
    return (
        None
        if contract is None
        else {
            "contract_id": contract.contract_id,
            "anchor_day": contract.cycle.anchor_day,
            "timezone": contract.cycle.timezone,
            "currency": contract.currency,
            "prices": {
                metric: {"unit_price": str(p.unit_price), "included": p.included}
                for metric, p in contract.prices.items()
            },
            "workspace_ids": list(contract.workspace_ids),
            "messages_included": contract.messages_included,
        }
    )


def _read_profile(data: dict[str, Any]) -> WorkspaceProfile:
    return WorkspaceProfile(billing_contacts=tuple(data["billing_contacts"]), contract=_read_terms(data["contract"]))


def _read_terms(contract: dict[str, Any] | None) -> ContractTerms | None:
    if contract is None:
        return None
    return ContractTerms(
        contract_id=contract["contract_id"],
        cycle=BillingCycle(contract["anchor_day"], contract["timezone"]),
        currency=contract["currency"],
        prices=MappingProxyType(
            {m: Price(Decimal(p["unit_price"]), p["included"]) for m, p in contract["prices"].items()}
        ),
        workspace_ids=tuple(contract["workspace_ids"]),
        messages_included=contract["messages_included"],
    )


def _contract_alert_state(state: ContractAlertState) -> dict[str, Any]:
    value = {"period": _period(state.period), "alerted": sorted(list(pair) for pair in state.alerted)}
    setting = state.setting
    if setting is not None:
        value["setting"] = [list(setting.levels), setting.enabled, *_changed(setting)]
    return value


def _read_contract_alert_state(data: dict[str, Any]) -> ContractAlertState:
    setting = data.get("setting")  # absent: the contract never chose its levels
    return ContractAlertState(
        _read_period(data["period"]),
        frozenset((p[0], p[1]) for p in data["alerted"]),
        None if setting is None else ContractAlertSetting(tuple(setting[0]), setting[1], *_read_changed(setting[2:])),
    )


def encode_contract_usage(state: ContractUsage) -> bytes:
    return _packed(
        orjson.dumps(
            {
                "workspace_ids": list(state.workspace_ids),
                "terms": _terms(state.terms),
                "contacts": {ws: list(c) for ws, c in state.contacts.items()},
                "alerts": {metric: _contract_alert_state(a) for metric, a in state.alerts.items()},
                "periods": [
                    {
                        "start": p.period.start,
                        "end": p.period.end,
                        "reports": {
                            m: {ws: list(entry) for ws, entry in by_ws.items()} for m, by_ws in p.reports.items()
                        },
                    }
                    for p in state.periods
                ],
                **({"recent_commands": dict(state.recent_commands)} if state.recent_commands else {}),
            },
            option=_NATIVE,
        )
    )


def decode_contract_usage(raw: bytes | None) -> ContractUsage:
    if not raw:
        return ContractUsage()
    data = orjson.loads(raw)
    return ContractUsage(
        workspace_ids=tuple(data.get("workspace_ids", ())),
        terms=_read_terms(data.get("terms")),
        contacts=MappingProxyType({ws: tuple(c) for ws, c in data.get("contacts", {}).items()}),
        alerts=MappingProxyType({m: _read_contract_alert_state(a) for m, a in data.get("alerts", {}).items()}),
        periods=tuple(
            ContractPeriod(
                period=BillingPeriod(datetime.fromisoformat(p["start"]), datetime.fromisoformat(p["end"])),
                reports=MappingProxyType(
                    {
                        metric: MappingProxyType({ws: (entry[0], entry[1]) for ws, entry in by_ws.items()})
                        for metric, by_ws in p["reports"].items()
                    }
                ),
            )
            for p in data.get("periods", ())
        ),
        recent_commands=_read_recent(data.get("recent_commands")),
    )
