"""A secured broker for the integration tests: SASL_SSL with SCRAM-SHA-512 and ACLs.

``.ci/kafka/broker.sh`` with ``KAFKA_SASL_SSL=1`` starts Apache Kafka with two listeners: a
PLAINTEXT one whose anonymous clients are super users (the tests' own producers and readers,
named by ``METERWATCH_TEST_BOOTSTRAP``) and a SASL_SSL one where ACLs apply.
``METERWATCH_TEST_SASL_SSL`` names the file it writes about the second (``sasl_ssl.env``).

With it set, every worker the tests start on the session broker connects through SASL_SSL as
the user ``meterwatch``, and each deployment grants that user exactly what ``meterwatch acls``
prints for it, no more; the user ``producer`` starts with no grants at all.
"""

from __future__ import annotations

import asyncio
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from aiokafka.client import AIOKafkaClient
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.admin import CreateAclsRequest
from meterwatch.config import load_settings
from meterwatch.streams.topics import AclBinding, acl_bindings

WORKER_USER = "meterwatch"
PRODUCER_USER = "producer"

# Kafka's protocol codes (org.apache.kafka.common.resource / acl).
_RESOURCE = {"topic": 2, "group": 3, "cluster": 4, "transactional-id": 5}
_PATTERN = {False: 3, True: 4}  # LITERAL, PREFIXED
_OPERATION = {
    "Read": 3, "Write": 4, "Create": 5, "Delete": 6, "Alter": 7, "Describe": 8,
    "ClusterAction": 9, "DescribeConfigs": 10, "AlterConfigs": 11, "IdempotentWrite": 12,
}  # fmt: skip
_ALLOW = 3


@dataclass(frozen=True)
class SaslSslListener:
    bootstrap: str
    plain_bootstrap: str
    ca_file: str
    mechanism: str
    passwords: dict[str, str]

    @classmethod
    def read(cls, path: Path) -> SaslSslListener:
        values = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        passwords = {key.removesuffix("_password"): value for key, value in values.items() if key.endswith("_password")}
        return cls(values["bootstrap"], values["plain_bootstrap"], values["ca_file"], values["mechanism"], passwords)

    def worker_settings(self, user: str = WORKER_USER) -> dict[str, str]:
        """The ``METERWATCH_KAFKA_*`` variables of a worker connecting as ``user``."""
        return {
            "METERWATCH_KAFKA_BOOTSTRAP": self.bootstrap,
            "METERWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "METERWATCH_KAFKA_SASL_MECHANISM": self.mechanism,
            "METERWATCH_KAFKA_SASL_USERNAME": user,
            "METERWATCH_KAFKA_SASL_PASSWORD": self.passwords[user],
            "METERWATCH_KAFKA_SSL_CAFILE": self.ca_file,
        }

    def client_options(self, user: str) -> dict[str, object]:
        """aiokafka options of a client connecting as ``user``."""
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": self.mechanism,
            "sasl_plain_username": user,
            "sasl_plain_password": self.passwords[user],
            "ssl_context": create_ssl_context(cafile=self.ca_file),
        }


@functools.cache
def session_listener() -> SaslSslListener | None:
    path = os.environ.get("METERWATCH_TEST_SASL_SSL")
    return SaslSslListener.read(Path(path)) if path else None


def as_worker(env: dict[str, str]) -> dict[str, str]:
    """``env`` as a worker process gets it: on the session broker, when it is secured, through
    SASL_SSL as the user ``meterwatch``. Other brokers (a test's own) are left alone."""
    listener = session_listener()
    if listener is None or env.get("METERWATCH_KAFKA_BOOTSTRAP") != listener.plain_bootstrap:
        return env
    return {**env, **listener.worker_settings()}


async def grant(plain_bootstrap: str, principal: str, bindings: list[AclBinding]) -> None:
    """Create the ACLs, as a super user on the PLAINTEXT listener."""
    client = AIOKafkaClient(bootstrap_servers=plain_bootstrap, client_id="meterwatch-tests-acls")
    await client.bootstrap()
    try:
        node = client.get_random_node()
        for binding in bindings:
            for operation in binding.operations:
                request = CreateAclsRequest(
                    _RESOURCE[binding.resource], binding.name, _PATTERN[binding.prefixed],
                    principal, "*", _OPERATION[operation], _ALLOW,
                )  # fmt: skip
                response = await client.send(node, request)
                [(error_code, message)] = response.creation_responses
                if error_code:
                    raise RuntimeError(
                        f"CreateAcls {binding} {operation} for {principal}: error {error_code}: {message}"
                    )
    finally:
        await client.close()


def grant_deployment(env: dict[str, str]) -> None:
    """Grant the user ``meterwatch`` what ``meterwatch acls`` prints for ``env``'s deployment."""
    listener = session_listener()
    if listener is None or env.get("METERWATCH_KAFKA_BOOTSTRAP") != listener.plain_bootstrap:
        return
    bindings = acl_bindings(load_settings(env))
    asyncio.run(grant(listener.plain_bootstrap, f"User:{WORKER_USER}", bindings))
