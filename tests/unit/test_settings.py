"""Configuration from ``METERWATCH_*`` variables (CONTRACT 2)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from meterwatch.config.settings import ConfigError, ProcessingGuarantee, load_settings
from pydantic import ValidationError

PASSWORD = "s3cr3t-Pa55word!"


def test_defaults_match_the_contract() -> None:
    settings = load_settings({})

    assert settings.kafka_bootstrap is None  # no bootstrap: `meterwatch dev` starts a broker
    assert settings.topic_prefix == ""
    assert settings.app_id == "meterwatch"
    assert settings.partitions == 8
    assert settings.web_port == 6066
    assert settings.smtp_host is None  # no host: email is not sent
    assert settings.dedupe_window == timedelta(hours=24)
    assert settings.processing_guarantee is None  # decided from what the broker supports


def test_only_the_given_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERWATCH_WEB_PORT", "7000")
    monkeypatch.setenv("METERWATCH_APP_ID", "from-process-env")

    settings = load_settings({})

    assert settings.web_port == 6066
    assert settings.app_id == "meterwatch"


def test_every_documented_variable_is_read() -> None:
    settings = load_settings(
        {
            "METERWATCH_KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9093",
            "METERWATCH_TOPIC_PREFIX": "staging.",
            "METERWATCH_APP_ID": "meterwatch-eu",
            "METERWATCH_PARTITIONS": "24",
            "METERWATCH_WEB_PORT": "8080",
            "METERWATCH_SMTP_HOST": "smtp.example.com",
            "METERWATCH_SMTP_PORT": "587",
            "METERWATCH_SMTP_USERNAME": "mailer",
            "METERWATCH_SMTP_PASSWORD": PASSWORD,
            "METERWATCH_SMTP_STARTTLS": "true",
            "METERWATCH_SMTP_FROM": "usage@example.com",
            "METERWATCH_DEDUPE_WINDOW": "48h",
            "METERWATCH_PROCESSING_GUARANTEE": "at_least_once",
        }
    )

    assert settings.kafka_bootstrap == "kafka-1:9092,kafka-2:9093"
    assert settings.topic_prefix == "staging."
    assert settings.app_id == "meterwatch-eu"
    assert settings.partitions == 24
    assert settings.web_port == 8080
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_username) == ("smtp.example.com", 587, "mailer")
    assert settings.smtp_password.get_secret_value() == PASSWORD
    assert settings.smtp_starttls is True
    assert settings.smtp_from == "usage@example.com"
    assert settings.dedupe_window == timedelta(hours=48)
    assert settings.processing_guarantee is ProcessingGuarantee.AT_LEAST_ONCE


@pytest.mark.parametrize(
    "value, expected",
    [("exactly_once", ProcessingGuarantee.EXACTLY_ONCE), ("at_least_once", ProcessingGuarantee.AT_LEAST_ONCE)],
)
def test_the_processing_guarantee_can_be_chosen(value: str, expected: ProcessingGuarantee) -> None:
    assert load_settings({"METERWATCH_PROCESSING_GUARANTEE": value}).processing_guarantee is expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("24h", timedelta(hours=24)),
        ("90m", timedelta(minutes=90)),
        ("3600", timedelta(hours=1)),
        ("PT2H", timedelta(hours=2)),
        ("P1D", timedelta(days=1)),
        ("7d", timedelta(days=7)),
        ("45s", timedelta(seconds=45)),
        (" 24h ", timedelta(hours=24)),
    ],
)
def test_the_dedupe_window_accepts_common_duration_forms(value: str, expected: timedelta) -> None:
    assert load_settings({"METERWATCH_DEDUPE_WINDOW": value}).dedupe_window == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("localhost:9092", "localhost:9092"),
        ("10.0.0.5:19092", "10.0.0.5:19092"),
        ("kafka-1.internal:9092, kafka-2.internal:9092", "kafka-1.internal:9092,kafka-2.internal:9092"),
        ("[::1]:9092", "[::1]:9092"),
    ],
)
def test_bootstrap_servers_are_host_port_lists(value: str, expected: str) -> None:
    assert load_settings({"METERWATCH_KAFKA_BOOTSTRAP": value}).kafka_bootstrap == expected


def test_other_variables_are_ignored() -> None:
    settings = load_settings({"METERWATCH_SOMETHING_NEW": "x", "HOME": "/root", "WEB_PORT": "1"})

    assert settings.web_port == 6066


@pytest.mark.parametrize(
    "variable, value",
    [
        ("METERWATCH_WEB_PORT", "0"),
        ("METERWATCH_WEB_PORT", "70000"),
        ("METERWATCH_WEB_PORT", "abc"),
        ("METERWATCH_WEB_PORT", "-1"),
        ("METERWATCH_SMTP_PORT", "65536"),
        ("METERWATCH_PARTITIONS", "0"),
        ("METERWATCH_PARTITIONS", "eight"),
        ("METERWATCH_PROCESSING_GUARANTEE", "exactly-once"),
        ("METERWATCH_PROCESSING_GUARANTEE", "maybe"),
        ("METERWATCH_KAFKA_BOOTSTRAP", "localhost"),
        ("METERWATCH_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2"),
        ("METERWATCH_KAFKA_BOOTSTRAP", "localhost:0"),
        ("METERWATCH_KAFKA_BOOTSTRAP", "localhost:99999"),
        ("METERWATCH_DEDUPE_WINDOW", "-5"),
        ("METERWATCH_DEDUPE_WINDOW", "-1h"),
        ("METERWATCH_DEDUPE_WINDOW", "0"),
        ("METERWATCH_DEDUPE_WINDOW", "a day"),
        ("METERWATCH_TOPIC_PREFIX", "my prefix"),
        ("METERWATCH_TOPIC_PREFIX", "team/a"),
        ("METERWATCH_APP_ID", ""),
        ("METERWATCH_APP_ID", "meter watch"),
        ("METERWATCH_SMTP_STARTTLS", "perhaps"),
    ],
)
def test_a_bad_value_gives_a_one_line_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: value})

    message = str(caught.value)
    assert variable in message
    assert "\n" not in message
    assert isinstance(caught.value, ValueError)


# SASL over TLS, whose password a test sets.
KAFKA_SASL = {
    "METERWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "METERWATCH_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "METERWATCH_KAFKA_SASL_USERNAME": "meterwatch",
    "METERWATCH_KAFKA_SASL_PASSWORD": "set-by-the-test",
}


@pytest.mark.parametrize("variable", ["METERWATCH_SMTP_PASSWORD", "METERWATCH_KAFKA_SASL_PASSWORD"])
def test_a_password_never_appears_in_an_error_message(variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: PASSWORD, "METERWATCH_WEB_PORT": "70000"})

    assert PASSWORD not in str(caught.value)
    assert "METERWATCH_WEB_PORT" in str(caught.value)


# SASL over TLS, whose password a test sets.
KAFKA_SASL = {
    "METERWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "METERWATCH_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "METERWATCH_KAFKA_SASL_USERNAME": "meterwatch",
    "METERWATCH_KAFKA_SASL_PASSWORD": "set-by-the-test",
}


@pytest.mark.parametrize("variable", ["METERWATCH_SMTP_PASSWORD", "METERWATCH_KAFKA_SASL_PASSWORD"])
def test_a_password_never_appears_when_settings_are_shown(variable: str) -> None:
    settings = load_settings({variable: PASSWORD, **KAFKA_SASL, "METERWATCH_SMTP_HOST": "smtp.example.com",
                              "METERWATCH_SMTP_STARTTLS": "true"})  # fmt: skip

    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings)
    assert PASSWORD not in repr(settings.redacted())


def test_the_password_is_still_available_to_the_code_that_needs_it() -> None:
    settings = load_settings({**KAFKA_SASL, "METERWATCH_KAFKA_SASL_PASSWORD": PASSWORD})

    assert settings.kafka_sasl_password.get_secret_value() == PASSWORD


def test_the_prefix_applies_to_topics_and_the_consumer_group() -> None:
    settings = load_settings({"METERWATCH_TOPIC_PREFIX": "staging.", "METERWATCH_APP_ID": "mw"})

    assert settings.topic("usage.events") == "staging.usage.events"
    assert settings.group_id == "staging.mw"


def test_settings_cannot_be_changed_after_loading() -> None:
    settings = load_settings({})

    with pytest.raises(ValidationError):
        settings.web_port = 1  # type: ignore[misc]


def test_mail_give_up_age_reads_a_duration_with_a_unit() -> None:
    assert load_settings({}).mail_give_up_after == timedelta(hours=24)
    assert load_settings({"METERWATCH_MAIL_GIVE_UP_AFTER": "2s"}).mail_give_up_after == timedelta(seconds=2)
    assert load_settings({"METERWATCH_MAIL_GIVE_UP_AFTER": "90m"}).mail_give_up_after == timedelta(minutes=90)
    with pytest.raises(ConfigError, match="METERWATCH_MAIL_GIVE_UP_AFTER: must be a positive duration"):
        load_settings({"METERWATCH_MAIL_GIVE_UP_AFTER": "0"})


SMTP_LOGIN = {"METERWATCH_SMTP_HOST": "smtp.example.com", "METERWATCH_SMTP_USERNAME": "mailer"}


@pytest.mark.parametrize("credential", [{"METERWATCH_SMTP_PASSWORD": PASSWORD}, {}])
def test_smtp_credentials_without_tls_or_starttls_are_refused_in_one_line(credential: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({**SMTP_LOGIN, **credential})
    message = str(refused.value)
    assert "METERWATCH_SMTP_STARTTLS=true or METERWATCH_SMTP_TLS=true" in message and "in clear" in message
    assert "\n" not in message and PASSWORD not in message


@pytest.mark.parametrize("encryption", ["METERWATCH_SMTP_STARTTLS", "METERWATCH_SMTP_TLS"])
def test_smtp_credentials_with_tls_or_starttls_are_accepted(encryption: str) -> None:
    settings = load_settings({**SMTP_LOGIN, "METERWATCH_SMTP_PASSWORD": PASSWORD, encryption: "true"})
    assert settings.smtp_password is not None and (settings.smtp_tls or settings.smtp_starttls)


def test_smtp_tls_and_starttls_exclude_each_other() -> None:
    with pytest.raises(ConfigError, match="exclude each other"):
        load_settings({"METERWATCH_SMTP_TLS": "true", "METERWATCH_SMTP_STARTTLS": "true"})


def test_the_smtp_ca_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="METERWATCH_SMTP_CA_FILE: no such file"):
        load_settings({"METERWATCH_SMTP_CA_FILE": str(tmp_path / "missing.pem")})
    (tmp_path / "ca.pem").write_text("")
    assert load_settings({"METERWATCH_SMTP_CA_FILE": str(tmp_path / "ca.pem")}).smtp_ca_file == str(tmp_path / "ca.pem")
