"""A workspace whose value outgrows one Kafka record: tens of thousands of bytes of Fin
conversations in one period go to the changelog in parts, and a restarted worker rebuilds the
value whole (CONTRACT 3.1, ``fin_resolutions``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import healthy_worker
from tests.support.kafka_io import produce, topic_reader
from tests.support.messages import event
from tests.support.worker import WorkerProcess, eventually, http_get, usage_shown

pytestmark = pytest.mark.integration

WORKSPACE = "ws_many_conversations"
FIN = "fin_resolutions"
# 6,000 conversations of 200 characters: a stored value of about 1.2 MB, past the 1 MB that a
# Kafka record may hold by default.
CONVERSATIONS = [f"conv-{i:06d}-" + "x" * 188 for i in range(6_000)]
PER_MESSAGE = 100


def resolved(worker: WorkerProcess) -> int | None:
    return usage_shown(worker, [WORKSPACE], FIN).get(WORKSPACE)


async def record_sizes(bootstrap: str, topic: str) -> list[int]:
    """The size (key and value) of every committed record of ``topic``, read until it is quiet."""
    consumer = topic_reader(bootstrap, topic)
    await consumer.start()
    sizes: list[int] = []
    try:
        quiet = 0
        while quiet < 4:
            batch = await consumer.getmany(timeout_ms=500)
            got = [len(m.key or b"") + len(m.value or b"") for records in batch.values() for m in records]
            sizes.extend(got)
            quiet = 0 if got else quiet + 1
    finally:
        await consumer.stop()
    return sizes


def healthy(worker: WorkerProcess) -> bool:
    status, _ = http_get(f"{worker.base_url}/health")
    return status == 200


async def test_a_workspace_value_past_the_record_limit_is_written_in_parts_and_recovered_whole(
    deployment: dict[str, str], tmp_path: Path
) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    topic = deployment["METERWATCH_TOPIC_PREFIX"] + "usage.events"
    key = WORKSPACE.encode()
    resolutions = [event(WORKSPACE, FIN, 1, conversation) for conversation in CONVERSATIONS]
    batches = [resolutions[i : i + PER_MESSAGE] for i in range(0, len(resolutions), PER_MESSAGE)]

    with healthy_worker(deployment, tmp_path / "worker-1.log") as worker:
        await produce(bootstrap, topic, [(key, batch) for batch in batches])
        await eventually(lambda: resolved(worker) == len(CONVERSATIONS), timeout=120)
        assert healthy(worker)
    # Every record of the workspace table's changelog stays under the 1 MB a broker takes by
    # default, though the value it holds is larger.
    changelog = f"{deployment['METERWATCH_TOPIC_PREFIX']}{deployment['METERWATCH_APP_ID']}-workspaces-changelog"
    sizes = await record_sizes(bootstrap, changelog)
    assert sizes and max(sizes) < 1_000_000

    # The tables are rebuilt from their changelogs at every start.
    with healthy_worker(deployment, tmp_path / "worker-2.log") as worker:
        assert resolved(worker) == len(CONVERSATIONS)
        # The conversations themselves came back: resolving one again changes nothing, a
        # retraction of a counted one takes one off, and two new ones add two (one message, in
        # this order: had the conversations been lost, the total would be two higher).
        await produce(
            bootstrap,
            topic,
            [
                (
                    key,
                    [
                        event(WORKSPACE, FIN, 1, CONVERSATIONS[10]),
                        event(WORKSPACE, FIN, -1, CONVERSATIONS[20]),
                        event(WORKSPACE, FIN, 1, "conv-new"),
                        event(WORKSPACE, FIN, 1, "conv-newer"),
                    ],
                )
            ],
        )
        await eventually(lambda: resolved(worker) != len(CONVERSATIONS), timeout=30)
        assert resolved(worker) == len(CONVERSATIONS) + 1
        assert healthy(worker)
