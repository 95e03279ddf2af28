"""``GET /metrics`` after real traffic: counters moved by exactly what was sent, and no label
carries a workspace (CONTRACT 6; SRE metrics)."""

from __future__ import annotations

import uuid

from tests.support.kafka_io import produce
from tests.support.messages import event
from tests.support.worker import WorkerProcess, eventually, scrape


async def test_counters_match_the_traffic_and_name_no_workspace(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    topic = deployment["METERWATCH_TOPIC_PREFIX"] + "usage.events"
    workspace = f"ws_secret_{uuid.uuid4().hex[:6]}"
    sms = [event(workspace, "sms") for _ in range(20)]
    email = [event(workspace, "email", 3) for _ in range(10)]
    messages = [(workspace.encode(), e) for e in sms + email]
    messages += [(workspace.encode(), e) for e in sms[:5]]  # delivered again
    messages += [
        (workspace.encode(), b"{oops"),
        (workspace.encode(), b"[1,"),
        (workspace.encode(), event(workspace, "sms", 0)),
    ]
    await produce(bootstrap, topic, messages)

    def settled() -> dict | None:
        _, samples = scrape(running_worker)
        counted = samples.get(("meterwatch_events_counted_total", (("metric", "sms"),)), 0)
        repeated = samples.get(("meterwatch_events_repeated_total", ()), 0)
        return samples if counted == 20 and repeated == 5 else None

    samples = await eventually(settled, timeout=30)
    assert samples[("meterwatch_events_counted_total", (("metric", "email"),))] == 10
    assert samples[("meterwatch_events_rejected_total", (("reason", "invalid_json"),))] == 2
    assert samples[("meterwatch_events_rejected_total", (("reason", "zero_quantity"),))] == 1
    assert samples[("meterwatch_pipeline_latency_seconds_count", ())] == 30
    text, _ = scrape(running_worker)
    assert workspace not in text
    assert "meterwatch_consumer_lag_messages" in text
    assert "meterwatch_batch_duration_seconds_bucket" in text
