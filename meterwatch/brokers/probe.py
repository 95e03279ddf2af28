"""Questions meterwatch asks a Kafka cluster before it starts: is it there, does it do transactions."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaProducer
from aiokafka.errors import KafkaError


class BrokerUnreachable(RuntimeError):
    """No Kafka broker answers at the configured bootstrap address; the message is one line."""


async def wait_for_broker(bootstrap: str, timeout: float, **client_options: Any) -> None:
    """Return once a broker in ``bootstrap`` answers a metadata request, else raise BrokerUnreachable.

    ``client_options`` are passed to aiokafka (security protocol, SSL context, SASL settings).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        # aiokafka logs an error for every refused connection, so it is only asked once some
        # host accepts TCP connections.
        if remaining > 0 and await _any_host_accepts(bootstrap, remaining):
            remaining = deadline - loop.time()
            if remaining > 0 and await _metadata_answers(bootstrap, remaining, client_options):
                return
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise BrokerUnreachable(f"no Kafka broker answers at {bootstrap}")
        await asyncio.sleep(min(0.25, remaining))


async def broker_supports_transactions(
    bootstrap: str, timeout: float = 10.0, *, transactional_id_prefix: str = "meterwatch", **client_options: Any
) -> bool:
    """Whether a transactional producer can be initialised there and commit a transaction.

    Brokers that advertise the transaction APIs but refuse them (Tansu answers InitProducerId
    with UNKNOWN_SERVER_ERROR) and brokers whose transaction coordinator never becomes
    available within ``timeout`` both count as no. Raises BrokerUnreachable instead of
    answering False when no broker answers at all, so an outage at start-up never quietly
    turns exactly-once into at-least-once. The probe's transactional id starts with
    ``transactional_id_prefix``, so the ACL that grants a worker its own transactional ids
    covers it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await wait_for_broker(bootstrap, timeout, **client_options)
    remaining = max(deadline - loop.time(), 0.5)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"{transactional_id_prefix}-probe-{uuid.uuid4().hex}",
        client_id="meterwatch-probe",
        request_timeout_ms=int(remaining * 1000),
        **client_options,
    )
    try:
        async with asyncio.timeout(remaining):
            await producer.start()  # InitProducerId: where brokers without transactions fail
            async with producer.transaction():
                pass
    except (KafkaError, TimeoutError):
        return False
    finally:
        await producer.stop()
    return True


async def _any_host_accepts(bootstrap: str, timeout: float) -> bool:
    for host, port in _hosts(bootstrap):
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            continue
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return True
    return False


async def _metadata_answers(bootstrap: str, timeout: float, client_options: dict[str, Any]) -> bool:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, client_id="meterwatch-probe", **client_options)
    try:
        async with asyncio.timeout(timeout):
            await client.bootstrap()
        return True
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await client.close()


def _hosts(bootstrap: str) -> list[tuple[str, int]]:
    hosts = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():  # "host" or "[::1]" without a port
            host, port = server.strip(), "9092"
        hosts.append((host.strip("[]"), int(port)))
    return hosts
