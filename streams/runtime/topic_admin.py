"""Creating and checking topics before the worker subscribes to them."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from ...config import Settings
from ..topics import TopicSpec
from .kafka_client import client_options

log = logging.getLogger(__name__)


class TopicLayoutError(RuntimeError):
    """The topics are not as meterwatch needs them: one could not be created, or an existing one
    has another layout."""


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
            response = await admin.create_topics(new_topics)
            # Each topic is answered on its own; one another worker of the deployment created
            # first already exists, which is as good.
            errors = {topic: (code, rest) for topic, code, *rest in response.topic_errors}
            refused = {t: e for t, e in errors.items() if e[0] not in (0, TopicAlreadyExistsError.errno)}
            if refused:
                topic, (code, rest) = sorted(refused.items())[0]
                reason = f"{for_code(code).__name__}{f' ({rest[0]})' if rest and rest[0] else ''}"
                raise TopicLayoutError(
                    f"the broker refused to create topic {topic}: {reason}"
                    f"{f' (and {len(refused) - 1} more)' if len(refused) > 1 else ''}; grant this worker's "
                    "principal what `meterwatch acls` prints, or create the topics beforehand (docs/operations.md)"
                )
            created = [spec.name for spec in missing if errors.get(spec.name, (0,))[0] == 0]
            if created:
                log.info("created topics: %s", ", ".join(created))
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
