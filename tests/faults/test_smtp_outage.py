"""The SMTP server down for 60 s under alert traffic (fault suite).

Counting must not wait for mail: events/s with the server down stay within 25 % of
undisturbed runs measured in the same test, on the same worker, with the same traffic shape.
Each side has four runs of about 3 s, each begun on a quiet machine: undisturbed ones before the
outage and after its mail has gone out, and four inside the 60 s outage. A busy machine only ever slows a run (single runs
on either side range over +-15 % on a 2-core machine), so each side is judged by its fastest
run; the fastest of four can still differ by 15 % between the sides, hence the bound. Counting
that waited for mail would lose whole seconds a run to connection retries, far below it. Afterwards every alert is mailed exactly once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from tests.support.kafka_io import apply_commands, produce, read_all
from tests.support.messages import command
from tests.support.smtp import SmtpServer
from tests.support.worker import WorkerProcess, eventually, http_get

WORKSPACES_PER_RUN = 10
# About 3 s of counting per run: shorter runs measure the polling and producing more than counting.
EVENTS_PER_RUN = 400_000
BATCH = 100
THRESHOLD = EVENTS_PER_RUN // WORKSPACES_PER_RUN  # every workspace reaches 100 %: 3 alerts each
OUTAGE_SECONDS = 60.0
# The previous run's commits, changelog flushes and mails, and the broker's own background work,
# would slow the run after it; without a pause only the first run after the outage's idle minute
# would start rested.
SETTLE_SECONDS = 5.0
OUTAGE_RUNS = ("down-a", "down-b", "down-c", "down-d")
RUNS = ("warm", "calm-a", "calm-b", *OUTAGE_RUNS, "calm-c", "calm-d")


def batches(workspaces: list[str]) -> list[tuple[None, list[dict]]]:
    now = datetime.now(UTC).isoformat()
    events = [
        {
            "event_id": uuid.uuid4().hex,
            "workspace_id": workspaces[i % len(workspaces)],
            "metric": "email",
            "quantity": 1,
            "occurred_at": now,
        }
        for i in range(EVENTS_PER_RUN)
    ]
    return [(None, events[i : i + BATCH]) for i in range(0, len(events), BATCH)]


def events_counted(worker: WorkerProcess) -> float:
    _, text = http_get(f"{worker.base_url}/metrics")
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "meterwatch_events_counted_total"
    )


class Deployment:
    def __init__(self, env: dict[str, str], worker: WorkerProcess) -> None:
        self.deployment = env
        self.bootstrap = env["METERWATCH_KAFKA_BOOTSTRAP"]
        self.prefix = env["METERWATCH_TOPIC_PREFIX"]
        self.worker = worker

    async def configure(self, workspaces: list[str]) -> None:
        commands = []
        for ws in workspaces:
            commands.append(command("billing_contacts", ws, emails=[f"billing@{ws}.example.com"]))
            commands.append(
                command("alert_settings", ws, metric="email", threshold=THRESHOLD, early_warnings=True, enabled=True)
            )
        await apply_commands(self.deployment, commands, applied=True)

    async def counting_rate(self, workspaces: list[str]) -> float:
        """Events/s from the first publish until the worker has counted every event of the run."""
        messages = batches(workspaces)
        await asyncio.sleep(SETTLE_SECONDS)
        before = events_counted(self.worker)
        started = time.monotonic()
        await produce(self.bootstrap, self.prefix + "usage.events", messages)
        await eventually(lambda: events_counted(self.worker) >= before + EVENTS_PER_RUN, timeout=300, interval=0.1)
        return EVENTS_PER_RUN / (time.monotonic() - started)


async def test_counting_keeps_its_pace_while_smtp_is_down_and_every_alert_is_mailed_once(
    mailing_worker: WorkerProcess,
    smtp_server: SmtpServer,
    deployment: dict[str, str],
    fault_figures: Callable[[str], None],
) -> None:
    run = Deployment(deployment, mailing_worker)
    runs = {name: [f"ws-{name}-{i}" for i in range(WORKSPACES_PER_RUN)] for name in RUNS}
    await run.configure([ws for workspaces in runs.values() for ws in workspaces])
    await run.counting_rate(runs["warm"])  # first batches pay for connections and caches

    calm_rates = [await run.counting_rate(runs["calm-a"]), await run.counting_rate(runs["calm-b"])]
    smtp_server.stop()
    outage_began = time.monotonic()
    outage_rates = [await run.counting_rate(runs[name]) for name in OUTAGE_RUNS]
    during_outage = {ws for name in OUTAGE_RUNS for ws in runs[name]}
    await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage_began)))
    mails_during_outage = len(smtp_server.mails)
    smtp_server.start()
    outage_seconds = time.monotonic() - outage_began

    alerts_expected = 3 * WORKSPACES_PER_RUN * (len(RUNS) - 2)  # 50, 80, 100 % each, but calm-c's and calm-d's
    alerts = await read_all(run.bootstrap, run.prefix + "usage.alerts", expect=alerts_expected, timeout=60)
    await eventually(lambda: len(smtp_server.mails) >= len(alerts), timeout=180)
    calm_rates += [await run.counting_rate(runs[name]) for name in ("calm-c", "calm-d")]  # with the backlog mailed
    alerts = await read_all(
        run.bootstrap, run.prefix + "usage.alerts", expect=alerts_expected + 6 * WORKSPACES_PER_RUN, timeout=60
    )
    await eventually(lambda: len(smtp_server.mails) >= len(alerts), timeout=180)
    await asyncio.sleep(3)  # a duplicate would arrive now
    expected = Counter(a["alert_id"] for a in alerts)
    mailed = Counter(m.message["X-Meterwatch-Alert-Id"] for m in smtp_server.mails)
    calm, down = max(calm_rates), max(outage_rates)
    fault_figures(
        f"\n[smtp outage] {EVENTS_PER_RUN:,} events per run: undisturbed "
        f"{', '.join(f'{r:,.0f}' for r in calm_rates)} events/s (fastest {calm:,.0f}); SMTP down "
        f"{', '.join(f'{r:,.0f}' for r in outage_rates)} (fastest {down:,.0f}, {down / calm:.2f} x); "
        f"outage {outage_seconds:.0f} s; alerts {len(alerts)}, mails {sum(mailed.values())}"
    )
    assert len(alerts) == 3 * WORKSPACES_PER_RUN * len(RUNS)  # every workspace of every run reached 100 %
    assert len(expected) == len(alerts)
    assert mailed == expected, "every alert mailed exactly once"
    outage_alerts = {a["alert_id"] for a in alerts if a["workspace_id"] in during_outage}
    assert mails_during_outage <= len(alerts) - len(outage_alerts), "nothing was mailed while the server was down"
    assert down >= 0.75 * calm, f"counting slowed to {down / calm:.2f} x while SMTP was down"
