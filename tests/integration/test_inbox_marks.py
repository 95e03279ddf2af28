"""The workspace inbox: a group committed past what the tables hold is read again from its mark,
and a record counting cannot read is dead-lettered without the records beside it.

The tables record, per inbox partition, the last inbox offset counting applied
(streams/runtime/applied_marks.py). Here inbox records are written and the worker group's
committed offset moved past them while no worker runs, as a hand-over that committed work its
changelogs never got would leave things: the next worker must count them anyway, say so once, and
count it in ``meterwatch_inbox_rewinds_total``; a plain restart must rewind nothing.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from meterwatch.models.internal import RowPacker
from meterwatch.streams.pipeline.ingest import InboxPartitioner

from tests.support.kafka_io import committed_offsets, produce, read_all
from tests.support.messages import event
from tests.support.worker import WorkerProcess, eventually, http_get, metric_samples, usage_shown

WORKSPACE = "ws_marks"
REWIND = "the tables hold what was applied through offset"


class _SameProtocol(RoundRobinPartitionAssignor):
    """Joins the worker group under Faust's protocol name, as one of its members would."""

    name = "faust"


async def write_unapplied_rows(
    deployment: dict[str, str], inbox: str, quantities: list[int | bytes], workspace: str = WORKSPACE
) -> list[int]:
    """Inbox records of ``workspace`` no worker has applied, one event each (a ``bytes`` item is
    written as it is, in place of a record); their offsets."""
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    partition = InboxPartitioner(int(deployment["METERWATCH_PARTITIONS"]))(workspace)
    now = datetime.now(UTC)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        offsets = []
        for quantity in quantities:
            if isinstance(quantity, bytes):
                record = quantity
            else:
                packer = RowPacker()
                source = deployment["METERWATCH_TOPIC_PREFIX"] + "usage.events"
                packer.add_origin(source, 0, 0, workspace.encode(), int(now.timestamp() * 1000))
                packer.add_row(workspace, uuid.uuid4().hex, "messages_sent", quantity, now.isoformat(), None)
                (record,) = packer.records()
            sent = await producer.send_and_wait(inbox, record, key=workspace.encode(), partition=partition)
            offsets.append(sent.offset)
    finally:
        await producer.stop()
    return offsets


async def commit_as_the_group(deployment: dict[str, str], inbox: str, offset: int) -> None:
    """Commit ``offset`` on WORKSPACE's inbox partition for the worker group, as its only member
    (the embedded broker takes a commit only from a member of the group's generation)."""
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    group = deployment["METERWATCH_TOPIC_PREFIX"] + deployment["METERWATCH_APP_ID"]
    partition = InboxPartitioner(int(deployment["METERWATCH_PARTITIONS"]))(WORKSPACE)
    member = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        partition_assignment_strategy=(_SameProtocol,),
    )
    await member.start()
    try:
        member.subscribe([inbox])
        deadline = time.monotonic() + 60
        while not member.assignment():
            assert time.monotonic() < deadline, "the test's member was never given the inbox"
            await member.getmany(timeout_ms=200)
        await member.commit({TopicPartition(inbox, partition): offset})
    finally:
        await member.stop()


def rewinds(worker: WorkerProcess) -> float:
    samples = metric_samples(worker, "meterwatch_inbox_rewinds_total")
    return sum(value for _, value in samples)


def rewind_lines(log_path: Path, start: int) -> list[str]:
    text = log_path.read_text(errors="replace")
    run = text.split(f"===== start #{start} =====", 1)[1].split("===== start #", 1)[0]
    return [line for line in run.splitlines() if REWIND in line]


async def test_a_commit_past_the_tables_is_read_again(deployment: dict[str, str], tmp_path: Path) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    inbox = deployment["METERWATCH_TOPIC_PREFIX"] + deployment["METERWATCH_APP_ID"] + "-workspace-inbox"
    log_path = tmp_path / "worker.log"
    worker = WorkerProcess(env=deployment, log_path=log_path, web_port=int(deployment["METERWATCH_WEB_PORT"]))
    partition = InboxPartitioner(int(deployment["METERWATCH_PARTITIONS"]))(WORKSPACE)
    try:
        worker.start().wait_healthy()
        await produce(
            bootstrap,
            deployment["METERWATCH_TOPIC_PREFIX"] + "usage.events",
            [(WORKSPACE.encode(), event(WORKSPACE, "messages_sent", 1)) for _ in range(4)],
        )
        await eventually(lambda: usage_shown(worker, [WORKSPACE]) == {WORKSPACE: 4}, timeout=60)
        worker.stop()
        applied = (await committed_offsets(deployment, inbox))[partition]
        assert applied, "the worker commits what it counted when it stops"

        # Three records the tables never saw, and the group committed past them.
        past = (await write_unapplied_rows(deployment, inbox, [10, 10, 10]))[-1] + 1
        await commit_as_the_group(deployment, inbox, past)
        assert (await committed_offsets(deployment, inbox))[partition] == past

        worker.start().wait_healthy()
        await eventually(lambda: usage_shown(worker, [WORKSPACE]) == {WORKSPACE: 34}, timeout=60)
        lines = rewind_lines(log_path, 2)
        assert len(lines) == 1, lines
        assert (
            f"[{partition}]: {REWIND} {applied - 1} but the group committed {past}; reading from {applied} again"
            in (lines[0])
        )
        assert rewinds(worker) == 1

        # A plain restart finds the committed offset where the tables are: nothing is read again.
        worker.stop()
        worker.start().wait_healthy()
        await eventually(lambda: usage_shown(worker, [WORKSPACE]) == {WORKSPACE: 34}, timeout=60)
        assert rewind_lines(log_path, 3) == []
        assert rewinds(worker) == 0
    finally:
        worker.stop()
        print(f"\n--- worker log tail ---\n{worker.log_tail(40)}")


async def test_an_inbox_record_counting_cannot_read_is_dead_lettered_and_the_others_counted(
    deployment: dict[str, str], tmp_path: Path
) -> None:
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    inbox = prefix + deployment["METERWATCH_APP_ID"] + "-workspace-inbox"
    workspace = "ws_unreadable_inbox"
    worker = WorkerProcess(
        env=deployment, log_path=tmp_path / "worker.log", web_port=int(deployment["METERWATCH_WEB_PORT"])
    )
    try:
        worker.start().wait_healthy()
        # Other workspaces' events in the same batches, on every partition.
        await produce(
            deployment["METERWATCH_KAFKA_BOOTSTRAP"],
            prefix + "usage.events",
            [(f"ws_beside_{i}".encode(), event(f"ws_beside_{i}", "messages_sent", 1)) for i in range(40)],
        )
        offsets = await write_unapplied_rows(
            deployment, inbox, [10, b"{not an inbox record", b'{"kind": "other"}', 5], workspace
        )
        await eventually(lambda: usage_shown(worker, [workspace]) == {workspace: 15}, timeout=60)
        beside = [f"ws_beside_{i}" for i in range(40)]
        await eventually(lambda: usage_shown(worker, beside) == dict.fromkeys(beside, 1), timeout=60)
        letters = await read_all(deployment["METERWATCH_KAFKA_BOOTSTRAP"], prefix + "usage.dead-letter", expect=2)
        partition = InboxPartitioner(int(deployment["METERWATCH_PARTITIONS"]))(workspace)
        assert sorted(
            (letter["source_topic"], letter["partition"], letter["offset"], letter["value"]) for letter in letters
        ) == [
            (inbox, partition, offsets[1], "{not an inbox record"),
            (inbox, partition, offsets[2], '{"kind": "other"}'),
        ]
        assert {(letter["key"], letter["error"]["code"]) for letter in letters} == {(workspace, "internal_error")}
        assert http_get(f"{worker.base_url}/health")[0] == 200
    finally:
        worker.stop()
        print(f"\n--- worker log tail ---\n{worker.log_tail(40)}")
