"""Questions meterwatch asks a Kafka cluster before it starts: is it there, does it do transactions."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError


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
    bootstrap: str, timeout: float = 10.0, **client_options: Any
) -> bool:
    """Whether a transactional producer can be initialised and commit a transaction there.

    Raises BrokerUnreachable rather than answering False when no broker answers at all, so an
    outage at start-up never silently downgrades exactly-once to at-least-once.
    """
    await wait_for_broker(bootstrap, timeout, **client_options)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"meterwatch-probe-{uuid.uuid4().hex}",
        client_id="meterwatch-probe",
        request_timeout_ms=max(1000, int(timeout * 1000)),
        **client_options,
    )
    try:
        async with asyncio.timeout(timeout):
            await producer.start()  # sends InitProducerId, which brokers without transactions refuse
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
    except (KafkaConnectionError, KafkaError, OSError, TimeoutError):
        return False
    finally:
        await client.close()


def _hosts(bootstrap: str) -> list[tuple[str, int]]:
    hosts = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        hosts.append((host.strip("[]"), int(port)))
    return hosts
