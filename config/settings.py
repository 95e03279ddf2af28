"""meterwatch's configuration: every ``METERWATCH_*`` variable, validated once at start-up.

The settings object is frozen and passed in; nothing else reads the environment.
Secrets are ``SecretStr`` so that a repr, a log line or a traceback never shows them.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..models.signing import parse_keys
from ..tokens import MIN_SECRET_BYTES

_HOST_PORT = re.compile(r"^[A-Za-z0-9._\-\[\]:]+:(\d{1,5})$")
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._\-]*$")
# "24h", "90m", "3600" (seconds); ISO 8601 durations ("PT24H") are also accepted by pydantic.
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)?$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# The settings that are durations: each takes a unit and must be positive.
_DURATIONS = (
    "dedupe_window",
    "startup_timeout",
    "shutdown_timeout",
    "mail_give_up_after",
    "webhook_give_up_after",
    "command_max_age",
)


class ConfigError(ValueError):
    """A setting has a value meterwatch cannot run with; the message is one line for people."""


# What aiokafka (and so Faust) can authenticate with, by username and password.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class ProcessingGuarantee(str, enum.Enum):
    EXACTLY_ONCE = "exactly_once"
    AT_LEAST_ONCE = "at_least_once"


class SecurityProtocol(str, enum.Enum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METERWATCH_", frozen=True, extra="ignore")

    kafka_bootstrap: str | None = None
    topic_prefix: str = ""
    app_id: str = "meterwatch"
    partitions: int = Field(default=8, ge=1, le=10_000)
    replication_factor: int = Field(default=1, ge=1, le=32)
    web_port: int = Field(default=6066, ge=1, le=65535)
    web_bind: str = "0.0.0.0"
    web_host: str = "127.0.0.1"
    data_dir: str = "./meterwatch-data"
    # Stage one (reading usage.events) in a process of its own, on another core than counting.
    ingest_process: bool = True

    smtp_host: str | None = None
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    # Implicit TLS: the connection is encrypted from its first byte (SMTPS, usually port 465).
    smtp_tls: bool = False
    # PEM certificates of the CAs that sign the SMTP server's certificate; unset: the system's CAs.
    smtp_ca_file: str | None = None
    smtp_from: str = "meterwatch@localhost"
    # A mail still failing for now (4xx, server unreachable) this long after it was requested is
    # given up: dead-lettered, counted, and recorded as failed in the mail ledger.
    mail_give_up_after: timedelta = timedelta(hours=24)
    # Billing contacts one workspace may have: a `billing_contacts` command setting more is rejected.
    max_billing_contacts: int = Field(default=20, ge=1, le=100)
    # Mails (one per recipient) one workspace's alerts and Fin transitions may ask for in one hour
    # of UTC; a request that does not fit is held back: dead-lettered `mail_rate_limited`, counted.
    max_mails_per_workspace_hour: int = Field(default=200, ge=1)

    # Webhooks (streams/pipeline/webhooks.py): HTTPS endpoints that receive every alert, Fin
    # transition and notification, signed with the secret; unset, nothing is posted.
    webhook_urls: str | None = None
    webhook_secret: SecretStr | None = None
    # PEM certificates of the CAs that sign the endpoints' certificates; unset: the system's CAs.
    webhook_ca_file: str | None = None
    # A delivery still failing for now (5xx, 429, timeout, endpoint unreachable) this long after
    # it was requested is given up: dead-lettered `webhook_given_up`, counted, recorded as failed.
    webhook_give_up_after: timedelta = timedelta(hours=24)

    dedupe_window: timedelta = timedelta(hours=24)
    # How long start-up waits for the broker to answer before it reports it unreachable.
    startup_timeout: timedelta = timedelta(seconds=30)
    # How long a worker told to stop (SIGTERM, SIGINT) may take before it exits anyway: an
    # orchestrator waits only so long (Kubernetes: 30 s) before it SIGKILLs, and without a broker
    # Faust's stop can wait on its consumer for minutes.
    shutdown_timeout: timedelta = timedelta(seconds=20)
    # None means "exactly_once where the broker supports transactions" (decided at start-up).
    processing_guarantee: ProcessingGuarantee | None = None

    kafka_security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None

    # HTTP authentication: every route but /health needs a bearer token (meterwatch/tokens.py).
    # "off" serves everything to anyone who reaches the port; only for a private network.
    auth: str = Field(default="on", pattern="^(on|off)$")
    # The HS256 key tokens are signed with: `meterwatch token` and the workers themselves sign
    # with it (workers ask each other with a service token).
    auth_secret: SecretStr | None = None
    # A JSON Web Key Set file: public keys (or HS256 "oct" keys) of another token issuer, chosen
    # by the token's "kid"; publish a new key beside the old one to rotate.
    auth_jwks: str | None = None

    # Signed commands (models/signing.py): "key-id:secret[,key-id:secret]"; unset, commands are
    # not signed. With keys, an unsigned, wrongly signed, stale or replayed command is rejected.
    command_keys: SecretStr | None = None
    # How far a signed command's issued_at may be from when it is routed, either way.
    command_max_age: timedelta = timedelta(minutes=5)

    log_format: str = Field(default="text", pattern="^(text|json)$")
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_is_host_ports(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        servers = [part.strip() for part in value.split(",")]
        for server in servers:
            match = _HOST_PORT.match(server)
            if not match or not 1 <= int(match.group(1)) <= 65535:
                raise ValueError(f"expected host:port[,host:port], not {server!r}")
        return ",".join(servers)

    @field_validator("topic_prefix", "app_id")
    @classmethod
    def _legal_in_topic_names(cls, value: str) -> str:
        if not _TOPIC_CHARS.match(value):
            raise ValueError("only letters, digits, '.', '_' and '-' are allowed in Kafka names")
        return value

    @field_validator("app_id")
    @classmethod
    def _app_id_not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("kafka_sasl_mechanism")
    @classmethod
    def _known_sasl_mechanism(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        mechanism = value.strip().upper()
        if mechanism not in SASL_MECHANISMS:
            raise ValueError(f"expected one of {', '.join(SASL_MECHANISMS)}")
        return mechanism

    @model_validator(mode="after")
    def _kafka_security_consistent(self) -> Settings:
        protocol = self.kafka_security_protocol.value
        sasl = {
            "METERWATCH_KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism,
            "METERWATCH_KAFKA_SASL_USERNAME": self.kafka_sasl_username,
            "METERWATCH_KAFKA_SASL_PASSWORD": self.kafka_sasl_password,
        }
        if protocol.startswith("SASL_"):
            missing = [name for name, value in sasl.items() if value is None]
            if missing:
                raise ValueError(f"METERWATCH_KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)}")
        else:
            given = [name for name, value in sasl.items() if value is not None]
            if given:
                raise ValueError(
                    f"{given[0]} is set but METERWATCH_KAFKA_SECURITY_PROTOCOL is {protocol}: "
                    "SASL needs SASL_SSL (or SASL_PLAINTEXT)"
                )
        if self.kafka_ssl_cafile is not None and not protocol.endswith("SSL"):
            raise ValueError(
                f"METERWATCH_KAFKA_SSL_CAFILE is set but METERWATCH_KAFKA_SECURITY_PROTOCOL is {protocol}: "
                "TLS needs SSL or SASL_SSL"
            )
        return self

    @field_validator("webhook_urls")
    @classmethod
    def _webhook_urls_https(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        urls = [part.strip() for part in value.split(",") if part.strip()]
        for number, url in enumerate(urls, 1):
            problem = webhook_url_problem(url)
            if problem is not None:
                raise ValueError(f"endpoint {number}: {problem}")
        if len(set(urls)) != len(urls):
            raise ValueError("an endpoint is listed twice")
        return ",".join(urls)

    @field_validator("auth_secret", "webhook_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"must be at least {MIN_SECRET_BYTES} bytes "
                "(for example: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return value

    @field_validator("command_keys")
    @classmethod
    def _command_keys_parse(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value().strip() == "":
            return None
        parse_keys(value.get_secret_value())  # raises ValueError naming what is wrong
        return value

    @model_validator(mode="after")
    def _webhooks_signed(self) -> Settings:
        if self.webhook_urls is not None and self.webhook_secret is None:
            raise ValueError(
                "METERWATCH_WEBHOOK_URLS is set but METERWATCH_WEBHOOK_SECRET is not: every webhook is signed "
                "(for example: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return self

    @field_validator("smtp_ca_file", "auth_jwks", "kafka_ssl_cafile", "webhook_ca_file")
    @classmethod
    def _ca_file_exists(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if not Path(value).is_file():
            raise ValueError("no such file")
        return value

    @model_validator(mode="after")
    def _contacts_fit_the_hourly_mails(self) -> Settings:
        if self.max_mails_per_workspace_hour < self.max_billing_contacts:
            raise ValueError(
                f"METERWATCH_MAX_MAILS_PER_WORKSPACE_HOUR ({self.max_mails_per_workspace_hour}) is below "
                f"METERWATCH_MAX_BILLING_CONTACTS ({self.max_billing_contacts}): a workspace with that many "
                "contacts could never be mailed"
            )
        return self

    @model_validator(mode="after")
    def _smtp_password_only_encrypted(self) -> Settings:
        if self.smtp_tls and self.smtp_starttls:
            raise ValueError(
                "METERWATCH_SMTP_TLS and METERWATCH_SMTP_STARTTLS exclude each other: "
                "TLS from the first byte (usually port 465) or an upgrade with STARTTLS (usually port 587)"
            )
        if (self.smtp_username is not None or self.smtp_password is not None) and not (
            self.smtp_tls or self.smtp_starttls
        ):
            raise ValueError(
                "METERWATCH_SMTP_USERNAME/METERWATCH_SMTP_PASSWORD need METERWATCH_SMTP_STARTTLS=true or "
                "METERWATCH_SMTP_TLS=true: without either the password would cross the network in clear"
            )
        return self

    @field_validator(*_DURATIONS, mode="before")
    @classmethod
    def _duration_with_unit(cls, value: Any) -> Any:
        if isinstance(value, str):
            parsed = parse_duration(value)
            return value if parsed is None else parsed
        return value

    @field_validator(*_DURATIONS)
    @classmethod
    def _window_positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration")
        return value

    @property
    def group_id(self) -> str:
        """The consumer group; it carries the prefix so deployments sharing a cluster never meet."""
        return f"{self.topic_prefix}{self.app_id}"

    @functools.cached_property
    def command_signing_keys(self) -> dict[str, bytes] | None:
        """Key id -> secret of the command keys (parsed once); None when commands are not signed."""
        return None if self.command_keys is None else parse_keys(self.command_keys.get_secret_value())

    @property
    def signed_command_max_age_ms(self) -> int | None:
        """How old a signed command may be, in milliseconds; None when commands are not signed."""
        return None if self.command_keys is None else int(self.command_max_age.total_seconds() * 1000)

    @property
    def webhook_endpoints(self) -> tuple[str, ...]:
        """The endpoints every alert, Fin transition and notification is posted to; () when off."""
        return tuple(self.webhook_urls.split(",")) if self.webhook_urls else ()

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def internal_topic(self, name: str) -> str:
        return f"{self.group_id}-{name}"

    def redacted(self) -> dict[str, Any]:
        """The settings as they may be logged."""
        return {k: ("***" if isinstance(v, SecretStr) else v) for k, v in self.model_dump().items()}


_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook endpoint, or None. HTTPS only; plain ``http://`` only to a
    loopback host (a receiver on the same machine, where nothing crosses a network)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return "not a URL"
    if not host:
        return "no host"
    if parts.username or parts.password:
        return "credentials in the URL"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http":
        return (
            None
            if host in _LOOPBACK_HOSTS or host.startswith("127.")
            else "http:// only to a loopback host; use https://"
        )
    return "expected an https:// URL"


def parse_duration(text: str) -> timedelta | None:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` as a duration; None if it is not one."""
    match = _DURATION.match(text.strip())
    if match is None:
        return None
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"])


class _GivenEnvironmentOnly(Settings):
    """Settings read from an explicit mapping only, never from the process environment."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **sources):  # type: ignore[no-untyped-def,override]
        return (init_settings,)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the settings from ``environ`` (default: the process environment).

    Raises ConfigError with one line naming the variable and what is wrong with it.
    """
    try:
        if environ is None:
            return Settings(**overrides)
        prefixed = {k[len("METERWATCH_") :].lower(): v for k, v in environ.items() if k.startswith("METERWATCH_")}
        return _GivenEnvironmentOnly(**{**prefixed, **overrides})
    except ValidationError as error:
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a rule over several settings: its message names them
            raise ConfigError(message) from None
        field = str(first["loc"][0])
        raise ConfigError(f"METERWATCH_{field.upper()}: {message} (got {_shown(first.get('input'), field)})") from None


def _shown(value: Any, field: str) -> str:
    # A webhook URL may carry the receiver's token in its path or query.
    if "password" in field or "secret" in field or "keys" in field or field == "webhook_urls":
        return "***"
    return repr(value)
