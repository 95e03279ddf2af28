"""Creating and checking topics before the worker subscribes to them."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from ...config import Settings
from ..topics import TopicSpec
from .kafka_client import client_options

log = logging.getLogger(__name__)


class TopicLayoutError(RuntimeError):
    """An existing topic does not have the layout meterwatch needs."""


async def ensure_topics(settings: Settings, specs: list[TopicSpec], bootstrap: str) -> None:
    """Create missing topics; refuse to run on internal topics with another partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            new_topics = [
                NewTopic(
                    name=spec.name,
                    num_partitions=spec.partitions,
                    replication_factor=settings.replication_factor,
                    topic_configs=spec.config(),
                )
                for spec in missing
            ]
            try:
                await admin.create_topics(new_topics)
            except TopicAlreadyExistsError:
                pass  # another worker of the same deployment created it first
            log.info("created topics: %s", ", ".join(spec.name for spec in missing))
        await _check_partitions(admin, [spec for spec in specs if spec.internal])
    finally:
        await admin.close()


async def _check_partitions(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> None:
    if not specs:
        return
    described = await admin.describe_topics([spec.name for spec in specs])
    counts = {d["topic"]: len(d.get("partitions") or []) for d in described}
    for spec in specs:
        found = counts.get(spec.name, 0)
        if found and found != spec.partitions:
            raise TopicLayoutError(
                f"topic {spec.name} has {found} partitions but METERWATCH_PARTITIONS is {spec.partitions}; "
                "internal topics cannot change partition count (see docs/operations.md)"
            )
