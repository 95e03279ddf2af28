"""Decoding ``usage.control`` commands (CONTRACT 3.2, 5.5): what is applied and why a command is rejected."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterwatch.models.commands import (
    AlertSettings,
    BillingContacts,
    CommandRejected,
    ContractAlertSettings,
    LimitSettings,
    Subscription,
    parse_command,
)
from meterwatch.models.common import Metric

# A reason fit for usage.command-results: a code word, a colon, then words for people.
REASON = re.compile(r"^[a-z][a-z_]*: \S")
ADMIN = {"id": "user_1", "billing_permission": True}
TEAMMATE = {"id": "user_2", "billing_permission": False}


def command(type_: str, **fields: Any) -> dict[str, Any]:
    """A valid command of ``type_``, with any field replaced (or removed when given as ...)."""
    common = {"command_id": f"cmd-{type_}-1", "issued_at": "2026-11-24T09:00:00Z", "type": type_}
    bodies: dict[str, dict[str, Any]] = {
        "alert_settings": {
            "workspace_id": "ws_42",
            "actor": ADMIN,
            "metric": "sms",
            "threshold": 1000,
            "early_warnings": True,
            "enabled": True,
        },
        "limit_settings": {
            "workspace_id": "ws_42",
            "actor": ADMIN,
            "metric": "fin_resolutions",
            "limit": 500,
            "enabled": True,
        },
        "billing_contacts": {
            "workspace_id": "ws_42",
            "actor": ADMIN,
            "emails": ["billing@example.com", "finance.team+alerts@corp.example.co.uk"],
        },
        "subscription": {
            "contract_id": "c_7",
            "workspace_ids": ["ws_42", "ws_43"],
            "billing_anchor": "2026-01-15",
            "timezone": "Europe/Berlin",
            "currency": "USD",
            "prices": {
                "sms": {"unit_price": "0.0075", "included": 1000},
                "fin_resolutions": {"unit_price": "0.99", "included": None},
                "seats": {"unit_price": "39.00", "included": 10},
            },
            "messages_included": 500,
        },
        "contract_alert_settings": {
            "contract_id": "c_7",
            "actor": ADMIN,
            "metric": "sms",
            "levels": [50, 100],
            "enabled": True,
        },
    }
    document = {**common, **bodies.get(type_, {}), **fields}
    return {k: v for k, v in document.items() if v is not ...}


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


def rejection(document: Any) -> CommandRejected:
    raw = document if isinstance(document, bytes) else encode(document)
    with pytest.raises(CommandRejected) as caught:
        parse_command(raw)
    return caught.value


# --- accepted -----------------------------------------------------------------------------------


def test_alert_settings_are_accepted() -> None:
    parsed = parse_command(encode(command("alert_settings")))

    assert isinstance(parsed, AlertSettings)
    assert parsed.command_id == "cmd-alert_settings-1"
    assert parsed.issued_at == datetime(2026, 11, 24, 9, tzinfo=UTC)
    assert parsed.workspace_id == "ws_42"
    assert parsed.actor.id == "user_1"
    assert (parsed.metric, parsed.threshold, parsed.early_warnings, parsed.enabled) == (Metric.SMS, 1000, True, True)


@pytest.mark.parametrize("metric", ["messages_sent", "phone", "sms", "whatsapp", "email", "fin_resolutions"])
def test_alerts_can_be_set_on_every_metric_but_seats(metric: str) -> None:
    parsed = parse_command(encode(command("alert_settings", metric=metric)))

    assert parsed.metric.value == metric


def test_an_alert_can_be_turned_off() -> None:
    parsed = parse_command(encode(command("alert_settings", enabled=False, early_warnings=False, threshold=1)))

    assert (parsed.enabled, parsed.early_warnings, parsed.threshold) == (False, False, 1)


def test_limit_settings_are_accepted() -> None:
    parsed = parse_command(encode(command("limit_settings")))

    assert isinstance(parsed, LimitSettings)
    assert (parsed.workspace_id, parsed.metric, parsed.limit, parsed.enabled) == (
        "ws_42",
        Metric.FIN_RESOLUTIONS,
        500,
        True,
    )


@pytest.mark.parametrize("metric", ["messages_sent", "phone", "sms", "whatsapp", "email", "fin_resolutions"])
def test_a_limit_is_accepted_on_every_counted_metric_but_seats(metric: str) -> None:
    parsed = parse_command(encode(command("limit_settings", metric=metric, limit=7)))

    assert isinstance(parsed, LimitSettings)
    assert (parsed.metric.value, parsed.limit) == (metric, 7)


@pytest.mark.parametrize("limit, enabled", [(0, True), (500, False), (10**9, True)])
def test_a_limit_of_zero_or_a_disabled_limit_is_accepted(limit: int, enabled: bool) -> None:
    parsed = parse_command(encode(command("limit_settings", limit=limit, enabled=enabled)))

    assert (parsed.limit, parsed.enabled) == (limit, enabled)


def test_billing_contacts_are_accepted() -> None:
    parsed = parse_command(encode(command("billing_contacts")))

    assert isinstance(parsed, BillingContacts)
    assert parsed.emails == ["billing@example.com", "finance.team+alerts@corp.example.co.uk"]


def test_billing_contacts_can_be_cleared() -> None:
    parsed = parse_command(encode(command("billing_contacts", emails=[])))

    assert parsed.emails == []


def test_a_subscription_is_accepted_without_an_actor() -> None:
    parsed = parse_command(encode(command("subscription")))

    assert isinstance(parsed, Subscription)
    assert parsed.contract_id == "c_7"
    assert parsed.workspace_ids == ["ws_42", "ws_43"]
    assert parsed.billing_anchor == date(2026, 1, 15)
    assert parsed.timezone == "Europe/Berlin"
    assert parsed.currency == "USD"
    assert parsed.messages_included == 500
    assert parsed.prices[Metric.SMS].unit_price == Decimal("0.0075")
    assert parsed.prices[Metric.SMS].included == 1000
    assert parsed.prices[Metric.FIN_RESOLUTIONS].included is None  # pay-as-you-go
    assert isinstance(parsed.prices[Metric.SEATS].unit_price, Decimal)


def test_contract_alert_settings_are_accepted() -> None:
    parsed = parse_command(encode(command("contract_alert_settings")))

    assert isinstance(parsed, ContractAlertSettings)
    assert (parsed.contract_id, parsed.actor.id, parsed.metric) == ("c_7", "user_1", Metric.SMS)
    assert (parsed.levels, parsed.enabled) == ([50, 100], True)


@pytest.mark.parametrize(
    ("fields", "levels", "enabled"),
    [
        ({"levels": ...}, [80, 100], True),  # a contract's levels unless chosen
        ({"enabled": ...}, [50, 100], True),
        ({"levels": [100, 50, 100]}, [50, 100], True),  # a set, lowest first
        ({"levels": [80], "enabled": False}, [80], False),
    ],
)
def test_contract_alert_settings_defaults_and_levels_as_a_set(fields: dict, levels: list[int], enabled: bool) -> None:
    parsed = parse_command(encode(command("contract_alert_settings", **fields)))

    assert (parsed.levels, parsed.enabled) == (levels, enabled)


def test_a_subscription_without_the_optional_base_fee_is_accepted() -> None:
    parsed = parse_command(encode(command("subscription", messages_included=...)))

    assert parsed.messages_included is None


def test_unknown_fields_in_a_command_are_ignored() -> None:
    parsed = parse_command(encode(command("alert_settings", source="admin-ui", trace={"id": "abc"})))

    assert parsed.threshold == 1000


# --- rejected -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document, code",
    [
        pytest.param(command("alert_settings", actor=TEAMMATE), "no_billing_permission", id="alert-no-permission"),
        pytest.param(command("limit_settings", actor=TEAMMATE), "no_billing_permission", id="limit-no-permission"),
        pytest.param(command("billing_contacts", actor=TEAMMATE), "no_billing_permission", id="contacts-no-permission"),
        pytest.param(command("alert_settings", metric="seats"), "alerts_not_available_on_seats", id="alert-on-seats"),
        pytest.param(
            command("contract_alert_settings", metric="seats"),
            "alerts_not_available_on_seats",
            id="contract-alert-on-seats",
        ),
        pytest.param(
            command("contract_alert_settings", actor=TEAMMATE), "no_billing_permission", id="contract-no-permission"
        ),
        pytest.param(command("contract_alert_settings", actor=...), "invalid_command", id="contract-missing-actor"),
        pytest.param(command("contract_alert_settings", contract_id=...), "invalid_command", id="missing-contract"),
        pytest.param(command("contract_alert_settings", levels=[]), "invalid_command", id="no-levels"),
        pytest.param(command("contract_alert_settings", levels=[60]), "invalid_command", id="level-not-a-choice"),
        pytest.param(command("contract_alert_settings", levels=[80.0]), "invalid_command", id="level-float"),
        pytest.param(command("contract_alert_settings", levels=["80"]), "invalid_command", id="level-string"),
        pytest.param(command("contract_alert_settings", levels=80), "invalid_command", id="levels-not-list"),
        pytest.param(command("contract_alert_settings", enabled="no"), "invalid_command", id="contract-enabled-str"),
        pytest.param(command("limit_settings", metric="seats"), "limits_not_available_on_seats", id="limit-on-seats"),
        pytest.param(command("alert_settings", threshold=0), "invalid_command", id="threshold-0"),
        pytest.param(command("alert_settings", threshold=-10), "invalid_command", id="threshold-negative"),
        pytest.param(command("alert_settings", threshold=12.5), "invalid_command", id="threshold-fraction"),
        pytest.param(command("alert_settings", threshold=True), "invalid_command", id="threshold-true"),
        pytest.param(command("alert_settings", threshold="1000"), "invalid_command", id="threshold-string"),
        pytest.param(command("alert_settings", metric="voice"), "invalid_command", id="alert-unknown-metric"),
        pytest.param(command("alert_settings", enabled="yes"), "invalid_command", id="enabled-not-bool"),
        pytest.param(command("limit_settings", limit=-1), "invalid_command", id="limit-negative"),
        pytest.param(command("billing_contacts", emails=["not-an-email"]), "invalid_command", id="email-no-at"),
        pytest.param(
            command("billing_contacts", emails=["billing@under_score.example.com"]),
            "invalid_command",
            id="email-underscore-domain",
        ),
        pytest.param(command("billing_contacts", emails=["bill ing@example.com"]), "invalid_command", id="email-space"),
        pytest.param(command("billing_contacts", emails=["a@b@example.com"]), "invalid_command", id="email-two-at"),
        pytest.param(
            command("billing_contacts", emails=["billing@example.com\r\nBcc: all@evil.example"]),
            "invalid_command",
            id="email-header-injection",
        ),
        pytest.param(
            command("billing_contacts", emails="billing@example.com"), "invalid_command", id="emails-not-list"
        ),
        pytest.param(command("subscription", timezone="Mars/Olympus"), "invalid_command", id="unknown-timezone"),
        pytest.param(command("subscription", timezone="EST5EDTX"), "invalid_command", id="bogus-timezone"),
        pytest.param(command("subscription", timezone=""), "invalid_command", id="empty-timezone"),
        pytest.param(command("subscription", timezone="../../etc/passwd"), "invalid_command", id="path-timezone"),
        # Valid ZoneInfo keys whose meaning depends on the host; periods refuse them.
        pytest.param(command("subscription", timezone="localtime"), "invalid_command", id="host-localtime"),
        pytest.param(command("subscription", timezone="posixrules"), "invalid_command", id="host-posixrules"),
        pytest.param(command("subscription", billing_anchor="2026-02-30"), "invalid_command", id="bad-anchor"),
        pytest.param(command("subscription", currency="usd"), "invalid_command", id="currency-lowercase"),
        pytest.param(command("subscription", workspace_ids=[]), "invalid_command", id="no-workspaces"),
        pytest.param(
            command("subscription", prices={"sms": {"unit_price": "-0.01", "included": None}}),
            "invalid_command",
            id="negative-price",
        ),
        pytest.param(
            command("subscription", prices={"sms": {"unit_price": "0.01", "included": -5}}),
            "invalid_command",
            id="negative-included",
        ),
        pytest.param(
            command("subscription", prices={"fax": {"unit_price": "0.01", "included": None}}),
            "invalid_command",
            id="price-for-unknown-metric",
        ),
        pytest.param(command("alert_settings", actor=...), "invalid_command", id="missing-actor"),
        pytest.param(
            command("alert_settings", actor={"id": "user_1", "billing_permission": "true"}),
            "invalid_command",
            id="permission-not-bool",
        ),
        pytest.param(command("alert_settings", issued_at=...), "invalid_command", id="missing-issued_at"),
        pytest.param(
            command("alert_settings", issued_at="2026-11-24T09:00:00"), "invalid_command", id="naive-issued_at"
        ),
        pytest.param(command("alert_settings", workspace_id=...), "invalid_command", id="missing-workspace"),
        pytest.param(command("reset_usage", workspace_id="ws_42", actor=ADMIN), "invalid_command", id="unknown-type"),
        pytest.param(command("alert_settings", type=...), "invalid_command", id="missing-type"),
    ],
)
def test_bad_commands_are_rejected_with_a_reason_that_starts_with_a_code(document: dict[str, Any], code: str) -> None:
    rejected = rejection(document)

    assert REASON.match(rejected.reason), rejected.reason
    assert rejected.reason.split(":", 1)[0] == code
    assert rejected.command_id == document.get("command_id")
    assert "\n" not in rejected.reason


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"command_id": "cmd-1", "type": "alert_settings"', id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b"type=alert_settings", id="form-encoded"),
    ],
)
def test_a_command_that_is_not_json_is_rejected(raw: bytes) -> None:
    rejected = rejection(raw)

    assert rejected.reason.startswith("invalid_json: ")
    assert rejected.command_id is None


def test_a_tombstone_is_rejected_not_raised() -> None:
    with pytest.raises(CommandRejected) as caught:
        parse_command(None)

    assert REASON.match(caught.value.reason)


@pytest.mark.parametrize("document", [[], [command("alert_settings")], "alert_settings", 42, None])
def test_a_json_value_that_is_not_a_command_is_rejected(document: Any) -> None:
    rejected = rejection(document)

    assert rejected.reason.startswith("invalid_command: ")
    assert rejected.command_id is None


@pytest.mark.parametrize(
    "document, command_id",
    [
        pytest.param(command("alert_settings", command_id="cmd-77", threshold=0), "cmd-77", id="kept-on-schema-error"),
        pytest.param(command("reset_usage", command_id="cmd-78"), "cmd-78", id="kept-on-unknown-type"),
        pytest.param(command("alert_settings", command_id="cmd-79", actor=TEAMMATE), "cmd-79", id="kept-on-permission"),
        pytest.param(command("alert_settings", command_id=...), None, id="absent"),
        pytest.param(command("alert_settings", command_id=1234), None, id="not-a-string"),
    ],
)
def test_the_command_id_is_kept_on_rejection_when_present(document: dict[str, Any], command_id: str | None) -> None:
    assert rejection(document).command_id == command_id


def test_a_rejection_is_a_value_error_whose_text_is_the_reason() -> None:
    rejected = rejection(command("alert_settings", metric="seats"))

    assert isinstance(rejected, ValueError)
    assert str(rejected) == rejected.reason


def test_missing_permission_is_reported_before_what_the_setting_says() -> None:
    rejected = rejection(command("alert_settings", actor=TEAMMATE, metric="seats"))

    assert rejected.reason.startswith("no_billing_permission: ")


# --- never raises anything else -----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)

almost_commands = st.builds(
    lambda type_, overrides: {**command(type_), **overrides},
    st.sampled_from(["alert_settings", "limit_settings", "billing_contacts", "subscription", "other"]),
    st.dictionaries(
        st.sampled_from(
            [
                "command_id",
                "metric",
                "threshold",
                "limit",
                "emails",
                "timezone",
                "actor",
                "issued_at",
                "prices",
                "enabled",
            ]
        ),
        json_values,
        max_size=3,
    ),
)


def _parse_or_reject(raw: bytes) -> None:
    try:
        parse_command(raw)
    except CommandRejected as rejected:
        assert REASON.match(rejected.reason), rejected.reason
        assert rejected.command_id is None or isinstance(rejected.command_id, str)


@settings(max_examples=300)
@given(st.one_of(json_values, almost_commands))
def test_any_json_value_is_parsed_or_rejected_with_a_reason(document: Any) -> None:
    _parse_or_reject(json.dumps(document).encode())


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_bytes_are_parsed_or_rejected_with_a_reason(raw: bytes) -> None:
    _parse_or_reject(raw)


# --- bounds found by the hostile-input fault test ----------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        command("subscription", timezone="Europe"),  # a tzdata directory, not a zone
        command("subscription", timezone="America/Argentina"),
        command("subscription", timezone="x" * 300),  # longer than a file name
        command("subscription", prices={"sms": {"unit_price": "1E+3000000"}}),
        command("subscription", prices={"sms": {"unit_price": "1E-3000000"}}),
        command("subscription", prices={"sms": {"unit_price": "0.5", "included": 2**53}}),
        command("subscription", messages_included=2**53),
        command("alert_settings", threshold=2**53),
        command("limit_settings", limit=2**64),
        command("limit_settings", issued_at="0001-01-01T00:00:00+14:00"),  # before year 1 in UTC
        command("limit_settings", issued_at="9999-12-31T23:59:59-23:59"),  # after year 9999 in UTC
    ],
)
def test_values_past_what_meterwatch_can_hold_are_rejected_not_crashed_on(document: dict[str, Any]) -> None:
    assert REASON.match(rejection(document).reason)


@pytest.mark.parametrize(
    "document",
    [
        command("subscription", prices={"sms": {"unit_price": "1000000", "included": 2**53 - 1}}),
        command("alert_settings", threshold=2**53 - 1),
        command("limit_settings", limit=2**53 - 1),
    ],
)
def test_the_largest_amounts_and_prices_are_accepted(document: dict[str, Any]) -> None:
    parse_command(encode(document))
