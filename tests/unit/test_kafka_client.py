"""Every Kafka client connects alike: the options given to aiokafka directly and those Faust
derives from its credentials agree, for every protocol and mechanism."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from meterwatch.config import ConfigError, ProcessingGuarantee, load_settings
from meterwatch.streams.app import create_app
from meterwatch.streams.runtime.kafka_client import client_options, faust_credentials

SASL = {"METERWATCH_KAFKA_SASL_USERNAME": "meterwatch", "METERWATCH_KAFKA_SASL_PASSWORD": "p4ss-word"}


@pytest.fixture(scope="module")
def cafile(tmp_path_factory: pytest.TempPathFactory) -> str:
    # Any readable CA bundle will do: the system's, copied.
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_text(Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt").read_text())
    return str(path)


CASES = [
    ({}, "PLAINTEXT", None, False),
    ({"METERWATCH_KAFKA_SECURITY_PROTOCOL": "SSL"}, "SSL", None, True),
    ({"METERWATCH_KAFKA_SECURITY_PROTOCOL": "SSL", "CAFILE": "1"}, "SSL", None, True),
    ({"METERWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "METERWATCH_KAFKA_SASL_MECHANISM": "PLAIN", **SASL},
     "SASL_PLAINTEXT", "PLAIN", False),
    ({"METERWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "METERWATCH_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256", **SASL},
     "SASL_SSL", "SCRAM-SHA-256", True),
    ({"METERWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "METERWATCH_KAFKA_SASL_MECHANISM": "scram-sha-512", **SASL},
     "SASL_SSL", "SCRAM-SHA-512", True),
    ({"METERWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "METERWATCH_KAFKA_SASL_MECHANISM": " plain ", "CAFILE": "1",
      **SASL}, "SASL_SSL", "PLAIN", True),
]  # fmt: skip


@pytest.mark.parametrize(("environ", "protocol", "mechanism", "tls"), CASES)
def test_faust_and_every_other_client_connect_alike(
    environ: dict[str, str], protocol: str, mechanism: str | None, tls: bool, cafile: str
) -> None:
    environ = {k: v for k, v in environ.items() if k != "CAFILE"} | (
        {"METERWATCH_KAFKA_SSL_CAFILE": cafile} if "CAFILE" in environ else {}
    )
    settings = load_settings({"METERWATCH_AUTH": "off", **environ})
    direct = client_options(settings)
    through_faust = dict(credentials_to_aiokafka_auth(faust_credentials(settings)))
    assert direct["security_protocol"] == through_faust["security_protocol"] == protocol
    assert direct.get("sasl_mechanism") == through_faust.get("sasl_mechanism") == mechanism
    for key in ("sasl_plain_username", "sasl_plain_password"):
        assert direct.get(key) == through_faust.get(key)
    assert (direct.get("ssl_context") is not None) == (through_faust.get("ssl_context") is not None) == tls
    if mechanism is not None:
        assert direct["sasl_plain_username"] == "meterwatch" and direct["sasl_plain_password"] == "p4ss-word"
    # And the app builds with them (a lowercase mechanism once crashed it).
    asyncio.set_event_loop(asyncio.new_event_loop())
    create_app(settings, "127.0.0.1:9092", ProcessingGuarantee.AT_LEAST_ONCE)


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"METERWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "SASL_SSL needs METERWATCH_KAFKA_SASL_MECHANISM, "),
        ({"METERWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "METERWATCH_KAFKA_SASL_MECHANISM": "PLAIN"},
         "needs METERWATCH_KAFKA_SASL_USERNAME, METERWATCH_KAFKA_SASL_PASSWORD"),
        ({"METERWATCH_KAFKA_SASL_MECHANISM": "PLAIN", **SASL}, "is PLAINTEXT: SASL needs SASL_SSL"),
        ({"METERWATCH_KAFKA_SECURITY_PROTOCOL": "SSL", **SASL}, "METERWATCH_KAFKA_SASL_USERNAME is set but"),
        ({"METERWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "METERWATCH_KAFKA_SASL_MECHANISM": "GSSAPI", **SASL},
         "METERWATCH_KAFKA_SASL_MECHANISM: expected one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
        ({"METERWATCH_KAFKA_SSL_CAFILE": "/etc/hostname"}, "TLS needs SSL or SASL_SSL"),
        ({"METERWATCH_KAFKA_SECURITY_PROTOCOL": "SSL", "METERWATCH_KAFKA_SSL_CAFILE": "/nonexistent.pem"},
         "METERWATCH_KAFKA_SSL_CAFILE: no such file"),
    ],
)  # fmt: skip
def test_security_settings_that_cannot_work_are_refused_in_one_line(environ: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")) as refused:
        load_settings(environ)
    assert "p4ss-word" not in str(refused.value)
