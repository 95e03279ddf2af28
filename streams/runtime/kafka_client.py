"""How every Kafka client meterwatch opens connects (security protocol, TLS, SASL), built once.

``client_options`` gives aiokafka's keyword arguments: the ingest service, the admin client,
the start-up probes and the command-results reader use them as they are, and
``start_plain_producer`` starts the period-tick and command producers with them.
``faust_credentials`` gives Faust the same thing in its own terms; Faust turns it back into
aiokafka's arguments (``credentials_to_aiokafka_auth``), and ``tests/unit/test_kafka_client.py``
checks that both ways end in the same options for every protocol and mechanism.
``close_quietly`` closes any of these clients within a time limit.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable
from typing import Any

import faust
from aiokafka import AIOKafkaProducer

from ...config import Settings

log = logging.getLogger(__name__)


def client_options(settings: Settings) -> dict[str, Any]:
    protocol = settings.kafka_security_protocol.value
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        # The settings require all three for a SASL protocol (config/settings.py).
        assert settings.kafka_sasl_password is not None
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


async def start_plain_producer(bootstrap: str, settings: Settings) -> AIOKafkaProducer:
    """A started producer that waits for all in-sync replicas; neither idempotent nor transactional."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **client_options(settings))
    try:
        await producer.start()
    except Exception:
        await producer.stop()
        raise
    return producer


async def close_quietly(what: str, closing: Awaitable[Any], seconds: float) -> None:
    """Close a client within ``seconds``: a worker must exit promptly even when the broker is gone.

    ``what`` names the client and whose it is (``ingest consumer``, ``settings API's command producer``)."""
    try:
        await asyncio.wait_for(closing, seconds)
    except TimeoutError:
        log.warning("the %s did not close within %.0fs; leaving it", what, seconds)
    except Exception as error:
        log.warning("closing the %s failed (%s: %s)", what, type(error).__name__, error)


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    options = client_options(settings)
    protocol = options["security_protocol"]
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    # Faust names the protocol after the TLS context: SASL_SSL with one, SASL_PLAINTEXT without.
    return faust.SASLCredentials(
        username=options["sasl_plain_username"],
        password=options["sasl_plain_password"],
        ssl_context=options.get("ssl_context"),
        mechanism=options["sasl_mechanism"],
    )
