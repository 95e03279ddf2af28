"""Counting through a real broker and a real worker process (CONTRACT 3.1, 4, 5.4, 6)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.kafka_io import produce, read_all
from tests.support.messages import event
from tests.support.worker import WorkerProcess, eventually, http_get

pytestmark = pytest.mark.integration


def usage_of(worker: WorkerProcess, workspace: str, metric: str) -> int | None:
    status, body = http_get(f"{worker.base_url}/usage/{workspace}")
    if status != 200:
        return None
    entry = body["metrics"].get(metric)
    return entry["usage"] if entry else None


async def test_events_round_trip_to_usage_api(running_worker: WorkerProcess, deployment: dict[str, str]) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    topic = deployment["METERWATCH_TOPIC_PREFIX"] + "usage.events"
    await produce(bootstrap, topic, [(b"ws_a", event("ws_a", quantity=3)), (b"ws_a", event("ws_a", quantity=4))])
    await eventually(lambda: usage_of(running_worker, "ws_a", "sms") == 7)
    status, body = http_get(f"{running_worker.base_url}/usage/ws_a")
    assert status == 200
    assert body["workspace_id"] == "ws_a"
    assert body["contract_id"] is None
    assert body["metrics"]["sms"]["last_updated"] is not None
    status, _ = http_get(f"{running_worker.base_url}/usage/ws_never_seen")
    assert status == 404


async def test_duplicates_misskeyed_batches_and_corrections(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    topic = deployment["METERWATCH_TOPIC_PREFIX"] + "usage.events"
    repeated = event("ws_b", quantity=5, event_id="evt-dup-1")
    batch = [event("ws_b", quantity=1) for _ in range(10)] + [event("ws_c", "email", 2)]
    await produce(
        bootstrap,
        topic,
        [
            (b"ws_b", repeated),
            (b"ws_b", repeated),  # the same event delivered again
            (b"some-other-key", repeated),  # and again, mis-keyed
            (b"not-the-workspace", event("ws_b", quantity=2)),  # mis-keyed but new
            (None, batch),
        ],
    )
    await eventually(lambda: usage_of(running_worker, "ws_c", "email") == 2)
    await eventually(lambda: usage_of(running_worker, "ws_b", "sms") == 5 + 2 + 10)
    # Messages on different partitions have no order between them, so the corrections are sent
    # once the usage above is counted: a correction larger than usage stops at zero.
    await produce(bootstrap, topic, [(b"ws_b", event("ws_b", quantity=-100)), (b"ws_b", event("ws_b", quantity=4))])
    await eventually(lambda: usage_of(running_worker, "ws_b", "sms") == 4)


async def test_conversations_count_once_and_retractions_undo_only_counted(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    topic = deployment["METERWATCH_TOPIC_PREFIX"] + "usage.events"
    fin = "fin_resolutions"
    await produce(
        bootstrap,
        topic,
        [
            (b"ws_f", event("ws_f", fin, 1, conversation="c1")),
            (b"ws_f", event("ws_f", fin, 1, conversation="c1")),  # resolved again: still one
            (b"ws_f", event("ws_f", fin, 1, conversation="c2")),
            (b"ws_f", event("ws_f", fin, -1, conversation="c9")),  # never counted: no effect
            (b"ws_f", event("ws_f", fin, -1, conversation="c2")),
            (b"ws_f", event("ws_f", fin, 1, conversation="c3")),
        ],
    )
    await eventually(lambda: usage_of(running_worker, "ws_f", fin) == 2)


async def test_each_bad_input_is_dead_lettered_with_its_own_code(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    now = datetime.now(UTC)
    good = event("ws_d", quantity=1)
    bad_in_batch = {**event("ws_d"), "metric": "carrier_pigeons"}
    messages = [
        (b"ws_d", b"{not json"),
        (b"ws_d", b"\xff\xfe"),
        (b"ws_d", {"event_id": "x", "workspace_id": "ws_d"}),
        (b"ws_d", event("ws_d", quantity=0)),
        (b"ws_d", event("ws_d", at=now + timedelta(hours=1))),
        (b"ws_d", event("ws_d", at=now - timedelta(days=80))),
        (b"ws_d", [good, bad_in_batch]),
        (b"ws_d", [event("ws_d") for _ in range(1001)]),
    ]
    await produce(bootstrap, prefix + "usage.events", messages)
    expected_codes = [
        "invalid_json",
        "invalid_encoding",
        "invalid_schema",
        "zero_quantity",
        "occurred_in_future",
        "period_closed",
        "unknown_metric",
        "batch_too_large",
    ]
    letters = await read_all(bootstrap, prefix + "usage.dead-letter", expect=len(expected_codes), timeout=30)
    assert sorted(letter["error"]["code"] for letter in letters) == sorted(expected_codes)
    by_code = {letter["error"]["code"]: letter for letter in letters}
    assert by_code["invalid_encoding"]["value_encoding"] == "base64"
    assert by_code["unknown_metric"]["source_topic"] == prefix + "usage.events"
    assert "carrier_pigeons" in by_code["unknown_metric"]["value"]
    assert by_code["invalid_json"]["value"] == "{not json"
    # The good event of the batch is still counted.
    await eventually(lambda: usage_of(running_worker, "ws_d", "sms") == 1)


async def test_a_worker_that_lost_its_disk_still_knows_every_event_id(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    """Event ids come back from the changelog (packed a batch at a time), not only from RocksDB."""
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    topic = deployment["METERWATCH_TOPIC_PREFIX"] + "usage.events"
    workspaces = [f"ws_disk_{i}" for i in range(4)]
    first = [event(workspaces[i % 4], quantity=1 + i % 3) for i in range(400)]
    expected = {ws: sum(e["quantity"] for e in first if e["workspace_id"] == ws) for ws in workspaces}
    await produce(bootstrap, topic, [(None, first[i : i + 50]) for i in range(0, len(first), 50)])
    await eventually(lambda: all(usage_of(running_worker, ws, "sms") == expected[ws] for ws in workspaces), timeout=60)

    running_worker.stop()
    shutil.rmtree(deployment["METERWATCH_DATA_DIR"])
    running_worker.start()
    running_worker.wait_healthy()
    # Every event again, as a producer retrying after a long outage would, then one new event each.
    again = [(e["workspace_id"].encode(), e) for e in first]
    fresh = [event(ws, quantity=5) for ws in workspaces]
    await produce(bootstrap, topic, again + [(e["workspace_id"].encode(), e) for e in fresh])
    await eventually(
        lambda: all(usage_of(running_worker, ws, "sms") == expected[ws] + 5 for ws in workspaces), timeout=90
    )
