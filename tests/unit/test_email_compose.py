"""Alert and Fin-limit mails composed from topic records: no server, no event loop."""

from __future__ import annotations

import email
import email.policy
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meterwatch.models.outputs import recipient_mail_id
from meterwatch.sinks.email import (
    MailCompositionError,
    NoValidRecipients,
    check_recipients,
    compose_alert_mail,
    compose_fin_disabled_mail,
    mail_recipients,
    one_line,
    period_text,
)

from tests.support.hostile_inputs import (
    CONTRACT_ID,
    EVIL,
    FAKE_HEADERS,
    FIN_WORKSPACE,
    LINE_BREAKS,
    MAIL_WORKSPACES,
    ODD_WORKSPACES,
)

SENDER = "Meterwatch <alerts@example.com>"
TO = "billing@example.com"
# What a composed mail carries; anything else in the parsed header set was injected.
ALERT_HEADERS = {"From", "To", "Subject", "Date", "Message-ID", "Content-Type", "Content-Transfer-Encoding",
                 "MIME-Version", "X-Meterwatch-Alert-Id"}  # fmt: skip
TRANSITION_HEADERS = ALERT_HEADERS - {"X-Meterwatch-Alert-Id"} | {"X-Meterwatch-Transition-Id"}


def alert(**changes: Any) -> dict[str, Any]:
    record = {
        "alert_id": "al_9f1c",
        "scope": "workspace",
        "workspace_id": "ws_42",
        "contract_id": "c_7",
        "metric": "sms",
        "level": 50,
        "threshold": 1000,
        "usage": 503,
        "period_start": "2026-11-01T00:00:00Z",
        "period_end": "2026-12-01T00:00:00Z",
        "estimated_cost": {"amount": "1240.50", "currency": "USD"},
        "recipients": ["billing@example.com", "cfo@example.org"],
        "triggered_at": "2026-11-24T09:00:00Z",
        "cause_event_id": "ev_1",
    }
    return {**record, **changes}


def transition(**changes: Any) -> dict[str, Any]:
    record = {
        "transition_id": "tr_77",
        "workspace_id": "ws_42",
        "metric": "fin_resolutions",
        "state": "disabled",
        "reason": "limit_reached",
        "limit": 500,
        "usage": 500,
        "period_start": "2026-11-01T00:00:00Z",
        "period_end": "2026-12-01T00:00:00Z",
        "at": "2026-11-24T09:00:00Z",
    }
    return {**record, **changes}


def on_the_wire(message: email.message.EmailMessage) -> email.message.EmailMessage:
    """The mail as a receiver parses it from the bytes that would be sent."""
    return email.message_from_bytes(message.as_bytes(), policy=email.policy.default)  # type: ignore[return-value]


def test_a_50_percent_alert_names_metric_and_level_and_gives_the_figures() -> None:
    mail = on_the_wire(compose_alert_mail(alert(), TO, sender=SENDER))

    assert mail["Subject"] == "50% of your SMS usage alert (1,000) reached - workspace ws_42"
    assert mail["From"] == SENDER
    assert [a.addr_spec for a in mail["To"].addresses] == ["billing@example.com"]
    assert mail["X-Meterwatch-Alert-Id"] == "al_9f1c"
    assert set(mail.keys()) == ALERT_HEADERS
    body = mail.get_content()
    for fact in ("Usage this period: 503", "Usage alert:       1,000", "Level reached:     50%",
                 "Billing period:    2026-11-01 to 2026-11-30", "Estimated cost:    1,240.50 USD"):  # fmt: skip
        assert fact in body
    assert "al_9f1c" in body
    assert "nothing has been disabled" in body


@pytest.mark.parametrize(
    ("metric", "subject", "of"),
    [
        ("total", "80% of your total cost alert (40 USD) - workspace ws_42", "all metrics"),
        ("sms", "80% of your SMS cost alert (40 USD) - workspace ws_42", "SMS"),
    ],
)
def test_a_cost_alert_speaks_of_the_amount_set_and_the_estimated_cost(metric: str, subject: str, of: str) -> None:
    record = alert(
        kind="cost", metric=metric, level=80, threshold=None, usage=None,
        cost_threshold={"amount": "40", "currency": "USD"}, estimated_cost={"amount": "32.10", "currency": "USD"},
    )  # fmt: skip
    mail = on_the_wire(compose_alert_mail(record, TO, sender=SENDER))
    assert mail["Subject"] == subject
    assert set(mail.keys()) == ALERT_HEADERS
    body = mail.get_content()
    for fact in ("Cost of:", of, "32.10 USD", "Cost alert:", "40 USD", "Level reached:", "80%", "al_9f1c"):
        assert fact in body
    assert "nothing has been disabled" in body


def test_a_contract_scope_alert_speaks_of_the_contract_and_its_included_quantity() -> None:
    record = alert(scope="contract", level=100, threshold=5000, usage=5012, estimated_cost=None, metric="whatsapp")
    mail = on_the_wire(compose_alert_mail(record, TO, sender=SENDER))

    assert mail["Subject"] == "100% of included WhatsApp (5,000) used - contract c_7"
    body = mail.get_content()
    assert "The contract c_7 has used 100% of its included WhatsApp" in body
    assert "Included quantity: 5,000" in body
    assert "Usage this period: 5,012" in body
    assert "Estimated cost:    not available" in body


@pytest.mark.parametrize(
    ("metric", "title"),
    [("messages_sent", "Messages sent"), ("fin_resolutions", "Fin AI Agent resolutions"), ("phone", "Phone"),
     ("email", "Emails"), ("sms", "SMS"), ("whatsapp", "WhatsApp"), ("brand_new_metric", "brand_new_metric")],
)  # fmt: skip
def test_the_subject_uses_the_metrics_human_name(metric: str, title: str) -> None:
    assert (
        f"80% of your {title} usage alert"
        in compose_alert_mail(alert(metric=metric, level=80), TO, sender=SENDER)["Subject"]
    )


def test_a_fin_disabled_transition_mails_the_given_contacts() -> None:
    mail = on_the_wire(compose_fin_disabled_mail(transition(), "ops@example.com", sender=SENDER))

    assert mail["Subject"] == "Fin AI Agent disabled: Fin AI Agent resolutions limit (500) reached - workspace ws_42"
    assert mail["X-Meterwatch-Transition-Id"] == "tr_77"
    assert [a.addr_spec for a in mail["To"].addresses] == ["ops@example.com"]
    assert set(mail.keys()) == TRANSITION_HEADERS
    body = mail.get_content()
    assert "Usage this period: 500" in body and "Hard limit:        500" in body
    assert "2026-11-01 to 2026-11-30" in body
    assert "reached the limit you set" in body


def test_a_limit_on_another_metric_names_the_metric_and_keeps_its_own_message_ids() -> None:
    sms = on_the_wire(compose_fin_disabled_mail(transition(metric="sms", limit=100), TO, sender=SENDER))

    assert sms["Subject"] == "SMS disabled: SMS limit (100) reached - workspace ws_42"
    assert sms["X-Meterwatch-Transition-Id"] == "tr_77"
    assert sms["Message-ID"].startswith("<limit-disabled.")
    body = " ".join(sms.get_content().split())
    assert "Metric: SMS" in body and "Fin AI Agent" not in body


def test_a_lowered_limit_is_explained_and_an_enabled_transition_is_not_mailed() -> None:
    lowered = compose_fin_disabled_mail(transition(reason="limit_lowered", limit=400), "ops@example.com", sender=SENDER)
    assert "because the limit was lowered" in " ".join(lowered.get_content().split())
    with pytest.raises(MailCompositionError):
        compose_fin_disabled_mail(transition(state="enabled"), "ops@example.com", sender=SENDER)


INJECTIONS = ["x\r\nBcc: evil@attacker.test", "x\nX-Injected: 1", "x\rX-Injected: 1", "x\u2028X-Injected: 1",
              "x\x85X-Injected: 1", "x\r\n\r\nX-Injected: body-split", "x\x00\x1b[31m\tX-Injected: 1"]  # fmt: skip
INJECTABLE_FIELDS = ["alert_id", "workspace_id", "contract_id", "metric", "level", "threshold", "usage",
                     "period_start", "triggered_at"]  # fmt: skip


def assert_no_injected_header(message: email.message.EmailMessage, expected: set[str]) -> None:
    raw = message.as_bytes()
    parsed = on_the_wire(message)
    assert set(parsed.keys()) == expected
    assert not any(line.lower().startswith((b"bcc:", b"x-injected")) for line in raw.splitlines())
    for name, value in parsed.items():
        assert "\r" not in value and "\n" not in value, name


@pytest.mark.parametrize("field", INJECTABLE_FIELDS)
@pytest.mark.parametrize("payload", INJECTIONS)
def test_no_record_field_can_add_a_header(field: str, payload: str) -> None:
    for scope in ("workspace", "contract"):
        assert_no_injected_header(
            compose_alert_mail(alert(**{field: payload}, scope=scope), TO, sender=SENDER), ALERT_HEADERS
        )


@pytest.mark.parametrize("payload", INJECTIONS)
def test_no_cost_field_can_add_a_header(payload: str) -> None:
    for cost in ({"amount": "1.00", "currency": payload}, {"amount": payload, "currency": "EUR"}):
        assert_no_injected_header(compose_alert_mail(alert(estimated_cost=cost), TO, sender=SENDER), ALERT_HEADERS)


@pytest.mark.parametrize("payload", INJECTIONS)
def test_no_transition_field_can_add_a_header(payload: str) -> None:
    for field in ("transition_id", "workspace_id", "limit", "usage", "at"):
        mail = compose_fin_disabled_mail(transition(**{field: payload}), "ops@example.com", sender=SENDER)
        assert_no_injected_header(mail, TRANSITION_HEADERS)


def test_hostile_recipients_are_dropped_reported_and_never_reach_a_header(caplog: pytest.LogCaptureFixture) -> None:
    hostile = ["ok@example.com", "a@example.com\r\nBcc: evil@attacker.test", "evil@attacker.test, b@example.com",
               "<c@example.com>", "Name <d@example.com>", "e@example.com\nX-Injected: 1"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="meterwatch.sinks.email"):
        recipients = mail_recipients("al_9f1c", hostile)

    assert recipients == ("ok@example.com",)
    message = compose_alert_mail(alert(recipients=hostile), recipients[0], sender=SENDER)
    assert_no_injected_header(message, ALERT_HEADERS)
    assert [a.addr_spec for a in on_the_wire(message)["To"].addresses] == ["ok@example.com"]
    assert "dropped invalid recipients" in caplog.text and "al_9f1c" in caplog.text


def test_each_recipient_gets_a_mail_addressed_to_it_alone() -> None:
    record = alert(recipients=["billing@example.com", "cfo@example.org", "Billing@Example.com", "ops@example.net"])
    mails = [compose_alert_mail(record, to, sender=SENDER) for to in mail_recipients("al_9f1c", record["recipients"])]

    addressed = [[a.addr_spec for a in on_the_wire(mail)["To"].addresses] for mail in mails]
    assert addressed == [["billing@example.com"], ["cfo@example.org"], ["ops@example.net"]]
    assert len({mail["Message-ID"] for mail in mails}) == 3
    assert all(set(on_the_wire(mail).keys()) == ALERT_HEADERS for mail in mails)  # no Cc, no Bcc
    assert len({mail.get_content() for mail in mails}) == 1  # the same text, none naming another contact
    assert not any(other in mail.get_content() for mail in mails for other in record["recipients"])


@pytest.mark.parametrize(
    "address", ["a@example.com\r\nBcc: evil@attacker.test", "a@example.com, b@example.com", "", None]
)
def test_an_invalid_single_recipient_is_not_composed(address: Any) -> None:
    with pytest.raises(NoValidRecipients):
        compose_alert_mail(alert(), address, sender=SENDER)


@pytest.mark.parametrize(
    "address",
    ["a b@example.com", "a@@example.com", "example.com", "a@b@example.com", "a@example.com\r\n", "\ta@example.com",
     "a@example.com,b@example.com", "<a@example.com>", '"a"@example.com', "a@-example.com", "a@exa mple.com",
     ".a@example.com", "a..b@example.com", "ü@example.com", "a@", "@example.com", "", None, 42, "a@" + "x" * 260],
)  # fmt: skip
def test_invalid_addresses_are_rejected(address: Any) -> None:
    assert check_recipients([address]).valid == ()


def test_valid_addresses_are_kept_once_each_in_order() -> None:
    given = ["Billing@Example.com", "ops+alerts@mail.example.co.uk", "billing@example.com", "x_y.z@localhost"]
    assert check_recipients(given).valid == ("Billing@Example.com", "ops+alerts@mail.example.co.uk", "x_y.z@localhost")


def test_a_single_address_string_is_one_recipient_not_a_list_of_characters() -> None:
    assert check_recipients("ops@example.com").valid == ("ops@example.com",)


@pytest.mark.parametrize("recipients", [[], None, ["not an address"], "a@b@c"])
def test_no_valid_recipient_means_no_mail(recipients: Any) -> None:
    with pytest.raises(NoValidRecipients):
        mail_recipients("al_9f1c", recipients)


def test_the_message_id_follows_from_the_alert_id_and_the_recipient_alone() -> None:
    first = compose_alert_mail(alert(), TO, sender=SENDER)
    resent = compose_alert_mail(alert(recipients=["other@example.net"], usage=999, triggered_at="2027-01-01T00:00:00Z"), TO, sender=SENDER)  # fmt: skip
    same_address_other_case = compose_alert_mail(alert(), TO.upper(), sender=SENDER)
    other_recipient = compose_alert_mail(alert(), "cfo@example.org", sender=SENDER)
    other = compose_alert_mail(alert(alert_id="al_other"), TO, sender=SENDER)
    fin_with_same_id = compose_fin_disabled_mail(transition(transition_id="al_9f1c"), TO, sender=SENDER)

    assert first["Message-ID"] == resent["Message-ID"] == same_address_other_case["Message-ID"]
    assert first["Message-ID"] != other_recipient["Message-ID"]
    assert first["Message-ID"] != other["Message-ID"]
    assert first["Message-ID"] != fin_with_same_id["Message-ID"]
    assert first["Message-ID"].startswith("<alert.") and first["Message-ID"].endswith("@example.com>")
    assert "billing" not in first["Message-ID"]  # the address enters only as a hash


def test_each_recipients_ledger_key_is_its_own_and_names_no_address() -> None:
    keys = {recipient_mail_id("al_9f1c", to) for to in ("billing@example.com", "cfo@example.org")}
    assert len(keys) == 2 and all(key.startswith("al_9f1c ") and "@" not in key for key in keys)
    assert recipient_mail_id("al_9f1c", "Billing@Example.com") == recipient_mail_id("al_9f1c", "billing@example.com")
    assert recipient_mail_id("al_9f1c", TO) != recipient_mail_id("al_other", TO)


def test_a_hostile_alert_id_leaves_the_message_id_clean() -> None:
    message_id = compose_alert_mail(alert(alert_id="<x>\r\nBcc: e@attacker.test"), TO, sender=SENDER)["Message-ID"]
    assert message_id[1:-1].replace(".", "").replace("@", "").replace("-", "").isalnum()


def test_hostile_long_fields_keep_the_subject_bounded() -> None:
    subject = compose_alert_mail(alert(workspace_id="w" * 10_000, metric="m" * 10_000), TO, sender=SENDER)["Subject"]
    assert len(subject) < 400


@pytest.mark.parametrize("record", [alert(alert_id=None), alert(alert_id=""), alert(alert_id="\r\n")])
def test_an_alert_without_an_id_is_not_composed(record: dict[str, Any]) -> None:
    with pytest.raises(MailCompositionError):
        compose_alert_mail(record, TO, sender=SENDER)


@pytest.mark.parametrize("sender", ["not an address", "a@b.com\r\nBcc: e@attacker.test", ""])
def test_an_invalid_sender_is_a_composition_error(sender: str) -> None:
    with pytest.raises(MailCompositionError):
        compose_alert_mail(alert(), TO, sender=sender)


@pytest.mark.parametrize(
    ("start", "end", "zone", "shown"),
    [
        ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", None, "2026-11-01 to 2026-11-30"),
        # a Paris contract's period, published in UTC, shown in its own zone when it is known
        ("2026-10-31T23:00:00Z", "2026-11-30T23:00:00Z", "Europe/Paris", "2026-11-01 to 2026-11-30"),
        ("2026-10-31T23:00:00Z", "2026-11-30T23:00:00Z", None, "2026-10-31 23:00 UTC to 2026-11-30 23:00 UTC (end not included)"),
        ("2026-10-31T23:00:00Z", "2026-11-30T23:00:00Z", "Not/A_Zone", "2026-10-31T23:00:00Z to 2026-11-30T23:00:00Z"),
        ("garbage", None, None, "garbage to ?"),
    ],
)  # fmt: skip
def test_the_period_is_shown_as_dates_with_an_inclusive_end(start: Any, end: Any, zone: Any, shown: str) -> None:
    assert period_text(start, end, zone) == shown


# Characters no subject or body line may carry: control characters, line and paragraph
# separators, format characters (bidi overrides and isolates, zero-width characters, BOM).
UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
HOSTILE_IDS = [
    *ODD_WORKSPACES,
    *MAIL_WORKSPACES,
    FIN_WORKSPACE,
    CONTRACT_ID,
    *(f"ws{brk}{fake}{EVIL}" for brk in LINE_BREAKS for fake in FAKE_HEADERS),
    "ws-\u2066isolate\u2069-\u202aembed\u202c-\u200e\u200fmarks",  # bidi isolates, embeddings, marks
    "ws-\u2060joiner\u180evowel\u00adsoft-hyphen",  # word joiner, Mongolian vowel separator, soft hyphen
    "ws-\ud800-lone-surrogate",
    "ws-\ue000-private-\U000f0000-use",
    "ws-\U000e0041-tag-characters",
    "ws-" + "\u200b" * 10_000,
    "x" * 10_000,
]


def unsafe(text: str) -> list[str]:
    import unicodedata

    return [f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in UNSAFE_CATEGORIES]


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_one_line_leaves_one_bounded_line_of_visible_text(hostile: str) -> None:
    shown = one_line(hostile)
    assert unsafe(shown) == []
    assert len(shown) <= 120
    assert shown == shown.strip() and "  " not in shown


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_ids_an_outsider_chose_reach_subject_and_body_only_sanitised(hostile: str) -> None:
    mails = [
        compose_alert_mail(alert(workspace_id=hostile, metric=hostile, alert_id=f"al-{hostile}"), TO, sender=SENDER),
        compose_alert_mail(alert(scope="contract", contract_id=hostile), TO, sender=SENDER),
        compose_fin_disabled_mail(transition(workspace_id=hostile, transition_id=f"tr-{hostile}"), TO, sender=SENDER),
    ]
    for mail in mails:
        parsed = on_the_wire(mail)
        assert [a.addr_spec for a in parsed["To"].addresses] == [TO]
        assert EVIL not in str(parsed["To"]) and "Bcc" not in parsed.keys() and "Cc" not in parsed.keys()
        assert unsafe(str(parsed["Subject"])) == [] and len(str(parsed["Subject"])) < 400
        for line in parsed.get_content().splitlines():
            assert unsafe(line) == [], line
            assert len(line) <= 300


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("ws_42", "ws_42"),
        ("ws\r\nBcc: x@evil.example", "ws Bcc: x@evil.example"),
        ("ws\u2028To: x", "ws To: x"),
        ("ws-\u202egnp.exe", "ws-gnp.exe"),
        ("a\u200bb\u200dc\ufeffd", "abcd"),
        ("  spaced \t out  ", "spaced out"),
        ("\u0645\u0633\u0627\u062d\u0629", "\u0645\u0633\u0627\u062d\u0629"),  # right-to-left script is kept
        ("e\u0301", "e\u0301"),  # a combining accent is kept
        (None, ""),
        (42, "42"),
    ],
)
def test_one_line_keeps_what_is_readable_and_drops_what_is_not(given: Any, shown: str) -> None:
    assert one_line(given) == shown


@given(st.text(), st.integers(min_value=1, max_value=300))
def test_one_line_is_bounded_and_safe_for_any_text(text: str, limit: int) -> None:
    shown = one_line(text, limit)
    assert len(shown) <= limit
    assert unsafe(shown) == []
    assert one_line(shown, limit) == shown
