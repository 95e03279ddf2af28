"""A workspace's alert history without I/O (core.alert_history): which records it keeps, the
period it shows, and each delivery's state read from the mail and webhook ledgers."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import orjson
import pytest
from meterwatch.core.alert_history import (
    KEPT_PERIODS,
    MAX_ENTRIES,
    HistoryEntry,
    added,
    asked_day,
    decode_history,
    delivery_document,
    encode_history,
    entries_of,
    in_period,
    mail_keys,
    mail_state,
    shown_url,
    summary,
    webhook_keys,
    webhook_state,
)
from meterwatch.core.periods import BillingCycle
from meterwatch.core.webhooks import delivery_key
from meterwatch.models.outputs import Kind, Output, RecordedOutputs, recipient_mail_id

HOOK = "https://hooks.example.com/in"


def alert(
    alert_id: str, period_start: str = "2026-12-01T00:00:00Z", at: str = "2026-12-02T10:00:00Z"
) -> dict[str, Any]:
    return {
        "alert_id": alert_id,
        "scope": "workspace",
        "workspace_id": "ws_1",
        "metric": "sms",
        "level": 100,
        "period_start": period_start,
        "period_end": "2027-01-01T00:00:00Z"
        if period_start.startswith("2026-12")
        else period_start[:8] + "28T00:00:00Z",
        "recipients": [],
        "triggered_at": at,
    }


def entry(alert_id: str, **fields: Any) -> HistoryEntry:
    return HistoryEntry("alert", alert(alert_id, **fields))


@pytest.mark.parametrize(
    ("value", "state"),
    [
        (None, "retrying"),
        (b"sent", "sent"),
        (b"failed: permanent", "refused"),
        (b"failed: given up", "given_up"),
        (b"failed: held back", "held_back"),
        (b"failed: composition", "failed"),
        (b"failed: something new", "failed"),
    ],
)
def test_a_mail_ledger_entry_names_the_mail_state(value: bytes | None, state: str) -> None:
    assert mail_state(value) == state


@pytest.mark.parametrize(
    ("value", "state"),
    [
        (None, "retrying"),
        (b"sent", "sent"),
        (b"failed: refused", "refused"),
        (b"failed: given up", "given_up"),
    ],
)
def test_a_webhook_ledger_entry_names_the_delivery_state(value: bytes | None, state: str) -> None:
    assert webhook_state(value) == state


@pytest.mark.parametrize(
    ("states", "shown"),
    [
        ([], "none"),
        (["sent"], "sent"),
        (["sent", "sent"], "sent"),
        (["sent", "refused"], "refused"),
        (["refused", "retrying"], "retrying"),
        (["given_up", "refused"], "given_up"),
        (["held_back", "held_back"], "held_back"),
    ],
)
def test_several_recipients_are_summed_up_by_the_least_delivered_state(states: list[str], shown: str) -> None:
    assert summary(states) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com/in", "https://hooks.example.com/in"),
        ("https://user:pw@hooks.example.com:8443/in?token=s3cret#x", "https://hooks.example.com:8443/in"),
        ("https://hooks.example.com/in?key=abc", "https://hooks.example.com/in"),
    ],
)
def test_an_endpoint_is_shown_without_credentials_query_or_fragment(url: str, shown: str) -> None:
    assert shown_url(url) == shown


@pytest.mark.parametrize(
    ("entry_", "mails", "hooks", "expected"),
    [
        # nobody to mail, no webhooks configured
        (HistoryEntry("alert", alert("a")), {}, {}, {"email": "none", "email_recipients": [], "webhooks": []}),
        # one recipient, sent; one endpoint, still being tried
        (
            HistoryEntry("alert", alert("a"), recipients=("ana@example.com",), webhooks=True),
            {recipient_mail_id("a", "ana@example.com"): b"sent"},
            {},
            {
                "email": "sent",
                "email_recipients": [{"recipient": "ana@example.com", "state": "sent"}],
                "webhooks": [{"url": HOOK, "state": "retrying"}],
            },
        ),
        # two recipients, one refused; the endpoint delivered
        (
            HistoryEntry("alert", alert("a"), recipients=("ana@example.com", "gone@example.com"), webhooks=True),
            {
                recipient_mail_id("a", "ana@example.com"): b"sent",
                recipient_mail_id("a", "gone@example.com"): b"failed: permanent",
            },
            {delivery_key("a", HOOK): b"sent"},
            {
                "email": "refused",
                "email_recipients": [
                    {"recipient": "ana@example.com", "state": "sent"},
                    {"recipient": "gone@example.com", "state": "refused"},
                ],
                "webhooks": [{"url": HOOK, "state": "sent"}],
            },
        ),
        # the ledger entry under the bare id settles every recipient
        (
            HistoryEntry("alert", alert("a"), recipients=("ana@example.com", "bo@example.com")),
            {"a": b"failed: composition"},
            {},
            {
                "email": "failed",
                "email_recipients": [
                    {"recipient": "ana@example.com", "state": "failed"},
                    {"recipient": "bo@example.com", "state": "failed"},
                ],
                "webhooks": [],
            },
        ),
        # held back by the hourly cap: held back even before the mail agent records it
        (
            HistoryEntry("alert", alert("a"), recipients=("ana@example.com",), held_back=True),
            {},
            {},
            {
                "email": "held_back",
                "email_recipients": [{"recipient": "ana@example.com", "state": "held_back"}],
                "webhooks": [],
            },
        ),  # fmt: skip
    ],
)
def test_the_delivery_of_a_record_is_read_from_the_ledgers(
    entry_: HistoryEntry, mails: dict[str, bytes], hooks: dict[str, bytes], expected: dict[str, Any]
) -> None:
    assert delivery_document(entry_, mails, hooks, [HOOK]) == expected


def test_the_ledger_keys_of_a_record_are_those_the_agents_write() -> None:
    with_mail = HistoryEntry("alert", alert("a"), recipients=("Ana@example.com",), webhooks=True)
    assert mail_keys(with_mail) == ["a", recipient_mail_id("a", "Ana@example.com")]
    assert webhook_keys(with_mail, [HOOK, HOOK + "2"]) == [delivery_key("a", HOOK), delivery_key("a", HOOK + "2")]
    assert mail_keys(entry("a")) == [] and webhook_keys(entry("a"), [HOOK]) == []


def test_entries_are_taken_from_a_steps_outputs_with_their_mail_requests() -> None:
    outputs = RecordedOutputs()
    with_contacts = {**alert("a1"), "recipients": ["ana@example.com"]}
    outputs.alert("ws_1", with_contacts)
    outputs.mail_request("alert", with_contacts, ["ana@example.com"])
    outputs.alert("ws_1", alert("a2"))  # nobody to mail
    held = {**alert("a3"), "workspace_id": "ws_2", "recipients": ["bo@example.com"]}
    outputs.alert("ws_2", held)
    outputs.mail_request("alert", held, ["bo@example.com"], held_back="mail_rate_limited: over the cap")
    transition = {"transition_id": "t1", "workspace_id": "ws_2", "metric": "fin_resolutions", "state": "disabled"}
    outputs.fin_transition("ws_2", transition)
    outputs.mail_request("fin_disabled", transition, ["bo@example.com"])
    outputs.alert("c_1", {**alert("c-alert"), "scope": "contract", "workspace_id": None})  # a contract's
    outputs.command_result("ws_1", {"command_id": "x", "status": "applied"})

    found = entries_of(outputs, webhooks=True)

    assert found == {
        "ws_1": [
            HistoryEntry("alert", with_contacts, ("ana@example.com",), False, True),
            HistoryEntry("alert", alert("a2"), (), False, True),
        ],
        "ws_2": [
            HistoryEntry("alert", held, ("bo@example.com",), True, True),
            HistoryEntry("transition", transition, ("bo@example.com",), False, True),
        ],
    }
    assert entries_of([Output(Kind.DEAD_LETTER, "ws_1", {})], webhooks=False) == {}


def test_a_record_made_again_keeps_its_first_entry_and_entries_are_in_time_order() -> None:
    first = entry("a", at="2026-12-03T00:00:00Z")
    again = HistoryEntry("alert", alert("a", at="2026-12-03T00:00:00Z"), recipients=("x@example.com",))
    earlier = entry("b", at="2026-12-02T00:00:00Z")
    assert added((first,), [again, earlier]) == (earlier, first)


def test_only_the_latest_periods_are_kept() -> None:
    starts = ["2026-08-01T00:00:00Z", "2026-09-01T00:00:00Z", "2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"]
    history = added((), [entry(f"a{i}", period_start=start, at=start) for i, start in enumerate(starts)])
    assert [e.record["period_start"] for e in history] == starts[-KEPT_PERIODS:]


def test_at_most_max_entries_are_kept_the_oldest_dropped_first() -> None:
    many = [entry(f"a{i:04d}", at=f"2026-12-02T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z")
            for i in range(MAX_ENTRIES + 7)]  # fmt: skip
    history = added((), many)
    assert len(history) == MAX_ENTRIES
    assert history[0].record_id == "a0007" and history[-1].record_id == f"a{MAX_ENTRIES + 6:04d}"


@pytest.mark.parametrize(
    ("day", "shown"),
    [
        (date(2026, 12, 1), ["dec"]),
        (date(2026, 12, 31), ["dec"]),
        (date(2026, 11, 30), ["nov"]),
        (date(2026, 11, 1), ["nov"]),
        (date(2026, 10, 31), []),
    ],
)
def test_the_period_shown_is_the_one_holding_the_day(day: date, shown: list[str]) -> None:
    cycle = BillingCycle.from_anchor(date(2026, 1, 1), "UTC")
    entries = [
        HistoryEntry("alert", {**alert("nov"), "period_start": "2026-11-01T00:00:00Z", "period_end": "2026-12-01T00:00:00Z"}),
        HistoryEntry("alert", {**alert("dec"), "period_start": "2026-12-01T00:00:00Z", "period_end": "2027-01-01T00:00:00Z"}),
    ]  # fmt: skip
    assert [e.record_id for e in in_period(entries, day, cycle.local_date)] == shown


def test_a_local_period_is_found_by_the_local_day() -> None:
    cycle = BillingCycle.from_anchor(date(2026, 1, 1), "Europe/Berlin")
    period = cycle.period_containing(datetime(2026, 12, 10, tzinfo=UTC))
    record = {**alert("dec"), "period_start": period.start.isoformat(), "period_end": period.end.isoformat()}
    entries = [HistoryEntry("alert", record)]
    assert in_period(entries, date(2026, 12, 1), cycle.local_date) == entries
    assert in_period(entries, date(2026, 11, 30), cycle.local_date) == []


def test_the_stored_history_reads_back_as_written() -> None:
    history = (
        HistoryEntry("alert", alert("a"), ("ana@example.com",), True, True),
        HistoryEntry("transition", {"transition_id": "t", "at": "2026-12-03T00:00:00Z"}),
    )
    raw = encode_history(history)
    assert decode_history(raw) == history
    assert decode_history(None) == () and decode_history(b"") == ()
    assert orjson.loads(raw)["entries"][0]["recipients"] == ["ana@example.com"]


@pytest.mark.parametrize(
    ("text", "day"),
    [
        ("2026-12-04", date(2026, 12, 4)),
        ("2024-02-29", date(2024, 2, 29)),
        ("2026-02-29", None),
        ("2026-13-01", None),
        ("20261204", None),
        ("2026-W49-5", None),
        ("2026-12-04T00:00", None),
        ("", None),
    ],
)
def test_a_period_is_asked_for_by_a_day_written_yyyy_mm_dd(text: str, day: date | None) -> None:
    assert asked_day(text) == day
