"""``meterwatch dev``: an embedded broker, a worker, demo usage and a live account of what happens.

Everything it starts it stops on Ctrl-C (or after ``--duration``); the broker and the worker
also die with this process if it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
from datetime import UTC
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from .brokers.embedded import EmbeddedBroker
from .brokers.probe import wait_for_broker
from .config import Settings
from .demo import CONTRACT_WORKSPACES, WORKSPACES, setup_commands, usage_events


def run_dev(settings: Settings, *, events_per_second: float, duration: float | None) -> int:
    broker: EmbeddedBroker | None = None
    with tempfile.TemporaryDirectory(prefix="meterwatch-dev-") as scratch:
        bootstrap = settings.kafka_bootstrap
        if bootstrap is None:
            broker = EmbeddedBroker(log_path=os.path.join(scratch, "broker.log")).start()
            bootstrap = broker.bootstrap
            _say(f"embedded Kafka-compatible broker (Tansu) on {bootstrap}")
        else:
            _say(f"using the Kafka cluster at {bootstrap}")
        worker = _start_worker(settings, bootstrap, scratch)
        try:
            return asyncio.run(_run(settings, bootstrap, worker, events_per_second, duration))
        except KeyboardInterrupt:
            return 0
        finally:
            _stop_process(worker)
            if broker is not None:
                broker.stop()
            _say("stopped the worker" + (" and the broker" if broker else "") + "; bye")


def _start_worker(settings: Settings, bootstrap: str, scratch: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "METERWATCH_KAFKA_BOOTSTRAP": bootstrap}
    if settings.kafka_bootstrap is None:
        # The embedded broker forgets everything when it stops, so the worker's state must too.
        env["METERWATCH_DATA_DIR"] = os.path.join(scratch, "data")
    log = open(os.path.join(scratch, "worker.log"), "wb")
    _say(f"worker log: {log.name}")
    return subprocess.Popen(
        [sys.executable, "-m", "meterwatch", "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def _run(
    settings: Settings, bootstrap: str, worker: subprocess.Popen[bytes], rate: float, duration: float | None
) -> int:
    await wait_for_broker(bootstrap, timeout=30)
    base = f"http://127.0.0.1:{settings.web_port}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        await _wait_until_healthy(base, worker)
        _say("meterwatch is consuming. Look at:")
        for workspace in WORKSPACES:
            _say(f"  usage API   {base}/usage/{workspace}")
        _say(f"  usage page  {base}/ui/usage/{CONTRACT_WORKSPACES[0]}")
        _say(f"  daily       {base}/usage/{CONTRACT_WORKSPACES[0]}/daily?metric=messages_sent")
        _say(f"  metrics     {base}/metrics")
        _say(f"  health      {base}/health")
        _say("Ctrl-C stops everything.")
        tasks = [
            asyncio.create_task(_send_demo_usage(settings, producer, rate)),
            asyncio.create_task(_report_outputs(settings, bootstrap)),
            asyncio.create_task(_watch_worker(worker)),
        ]
        if duration is not None:
            tasks.append(asyncio.create_task(asyncio.sleep(duration)))
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return 0 if worker.poll() is None else 1
    finally:
        await producer.stop()


async def _wait_until_healthy(base: str, worker: subprocess.Popen[bytes]) -> None:
    while True:
        if worker.poll() is not None:
            raise SystemExit(f"meterwatch dev: the worker exited with code {worker.returncode}; see its log above")
        if await _http_status(f"{base}/health") == 200:
            return
        await asyncio.sleep(0.5)


async def _http_status(url: str) -> int | None:
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2)
    except (TimeoutError, OSError):
        return None
    try:
        writer.write(f"GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        return int(status_line.split()[1])
    except (TimeoutError, OSError, IndexError, ValueError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _send_demo_usage(settings: Settings, producer: AIOKafkaProducer, rate: float) -> None:
    from datetime import datetime

    for key, command in setup_commands(datetime.now(UTC)):
        await producer.send_and_wait(settings.topic("usage.control"), orjson.dumps(command), key=key.encode())
    rng = random.Random()
    for event in usage_events(rng):
        await producer.send(settings.topic("usage.events"), orjson.dumps(event), key=event["workspace_id"].encode())
        await asyncio.sleep(rng.expovariate(rate))


async def _report_outputs(settings: Settings, bootstrap: str) -> None:
    topics = {
        settings.topic(name): name
        for name in ("usage.alerts", "usage.limits", "usage.command-results", "usage.dead-letter")
    }
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="latest", group_id=None)
    await consumer.start()
    try:
        async for message in consumer:
            _say(_describe(topics[message.topic], orjson.loads(message.value)))
    finally:
        await consumer.stop()


def _describe(topic: str, record: dict[str, Any]) -> str:
    if topic == "usage.alerts":
        owner = record.get("workspace_id") or f"contract {record.get('contract_id')}"
        return (
            f"ALERT  {owner}: {record['metric']} reached {record['level']}% of {record['threshold']} "
            f"(usage {record['usage']}) [{record['alert_id'][:8]}]"
        )
    if topic == "usage.limits":
        return f"FIN    {record['workspace_id']}: Fin {record['state']} ({record['reason']}, usage {record['usage']} / limit {record['limit']})"
    if topic == "usage.dead-letter":
        return f"DEAD   {record['error']['code']}: {record['error']['message']}"
    detail = record.get("reason") or record.get("effective_from") or ""
    return f"COMMAND {record['command_id']}: {record['status']} {detail}".rstrip()


async def _watch_worker(worker: subprocess.Popen[bytes]) -> None:
    while worker.poll() is None:
        await asyncio.sleep(0.5)
    raise SystemExit(f"meterwatch dev: the worker stopped unexpectedly (exit code {worker.returncode})")


def _say(line: str) -> None:
    print(f"[meterwatch dev] {line}", flush=True)
