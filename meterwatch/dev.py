"""``meterwatch dev``: an embedded broker, a worker, demo usage and a live account of what happens.

Everything it starts it stops on Ctrl-C, SIGTERM or after ``--duration``, in that order: demo
traffic, the worker (which commits and leaves the group), the broker; within ten seconds. If this
process dies without doing so (SIGKILL), the broker and the worker die with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from .brokers.embedded import EmbeddedBroker
from .brokers.probe import wait_for_broker
from .config import Settings
from .demo import CONTRACT_WORKSPACES, WORKSPACES, setup_commands, usage_events
from .models.signing import signature_header
from .processes import signal_when_parent_dies
from .streams.topics import (
    USAGE_ALERTS,
    USAGE_COMMAND_RESULTS,
    USAGE_CONTROL,
    USAGE_DEAD_LETTER,
    USAGE_EVENTS,
    USAGE_LIMITS,
)
from .tokens import Keys

# The stop budget, ten seconds in all: demo traffic and the output reader, then the worker (its
# own METERWATCH_SHUTDOWN_TIMEOUT is capped to this, and it is SIGKILLed a second after), then
# the broker, which exits at once on SIGTERM.
_TRAFFIC_STOP_SECONDS = 1.5
_WORKER_STOP_SECONDS = 5.0


class _StopSignals:
    """SIGTERM and SIGINT start the stop once; signals that follow wait for it.

    A process manager, ``timeout`` or a container runtime stops us with SIGTERM and sends it to
    this process only, so it must be handled like Ctrl-C. Outside the event loop a signal raises
    KeyboardInterrupt where the main thread is; inside it, it cancels the main task (as
    ``asyncio.run`` does for Ctrl-C), so that the loop's own clean-up runs.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.stopping = False
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> _StopSignals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def attach(self, task: asyncio.Task[Any]) -> None:
        self._task, self._loop = task, task.get_loop()

    def begin(self) -> None:
        """From here on everything is being stopped; a signal has nothing left to interrupt."""
        self.stopping = True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.received = signal.Signals(signum)
        if self._task is not None and self._loop is not None and not self._task.done():
            self._task.cancel()
            self._loop.call_soon_threadsafe(lambda: None)  # wakes the loop if it is waiting
        else:
            raise KeyboardInterrupt


def run_dev(settings: Settings, *, events_per_second: float, duration: float | None) -> int:
    stop = _StopSignals().install()
    try:
        with tempfile.TemporaryDirectory(prefix="meterwatch-dev-") as scratch:
            return _run_dev(settings, scratch, stop, events_per_second, duration)
    finally:
        stop.uninstall()


def _run_dev(settings: Settings, scratch: str, stop: _StopSignals, rate: float, duration: float | None) -> int:
    broker: EmbeddedBroker | None = None
    worker: subprocess.Popen[bytes] | None = None
    try:
        bootstrap = settings.kafka_bootstrap
        if bootstrap is None:
            broker = EmbeddedBroker(log_path=os.path.join(scratch, "broker.log")).start()
            bootstrap = broker.bootstrap
            _say(f"embedded Kafka-compatible broker (Tansu) on {bootstrap}")
        else:
            _say(f"using the Kafka cluster at {bootstrap}")
        keys = _dev_keys(settings)
        worker = _start_worker(settings, bootstrap, scratch, keys)
        return asyncio.run(_run(settings, bootstrap, worker, rate, duration, stop, keys))
    except (KeyboardInterrupt, asyncio.CancelledError):
        if stop.received is None:
            raise
        return 0
    finally:
        stop.begin()
        if stop.received is not None:
            _say(f"{stop.received.name} received; stopping")
        if worker is not None:
            _stop_process(worker, timeout=_worker_shutdown_timeout(settings).total_seconds() + 1)
        if broker is not None:
            broker.stop()
        if worker is not None or broker is not None:
            _say("stopped the worker" + (" and the broker" if broker else "") + "; bye")


def _worker_shutdown_timeout(settings: Settings) -> timedelta:
    return min(settings.shutdown_timeout, timedelta(seconds=_WORKER_STOP_SECONDS))


def _dev_keys(settings: Settings) -> Keys | None:
    """The keys the demo's links are signed with: the configured secret, or one made for this run."""
    if settings.auth == "off":
        return None
    secret = settings.auth_secret.get_secret_value() if settings.auth_secret is not None else None
    return Keys.load(secret or secrets.token_urlsafe(32), settings.auth_jwks)


def _start_worker(settings: Settings, bootstrap: str, scratch: str, keys: Keys | None) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "METERWATCH_KAFKA_BOOTSTRAP": bootstrap,
        "METERWATCH_SHUTDOWN_TIMEOUT": str(_worker_shutdown_timeout(settings).total_seconds()),
    }
    if keys is not None and keys.secret is not None:
        env["METERWATCH_AUTH_SECRET"] = keys.secret.decode()
    if settings.kafka_bootstrap is None:
        # The embedded broker forgets everything when it stops, so the worker's state must too.
        env["METERWATCH_DATA_DIR"] = os.path.join(scratch, "data")
    # If we die without stopping the worker, the embedded broker dies with us (SIGKILL, see
    # EmbeddedBroker) and an orderly stop would only wait for it: the worker is killed too. With a
    # cluster that lives on, it is asked to stop, so that it commits what it finished.
    on_our_death = signal.SIGKILL if settings.kafka_bootstrap is None else signal.SIGTERM
    log = open(os.path.join(scratch, "worker.log"), "wb")
    _say(f"worker log: {log.name}")
    with log:
        return subprocess.Popen(
            [sys.executable, "-m", "meterwatch", "worker", "--parent-pid", str(os.getpid())],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # A session of its own: Ctrl-C in the terminal reaches only us, and we stop the
            # worker before the broker. Where Linux cannot signal it when we die, its
            # --parent-pid check stops it within half a second.
            start_new_session=True,
            preexec_fn=signal_when_parent_dies(on_our_death),
        )


def _stop_process(process: subprocess.Popen[bytes], *, timeout: float) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def _run(
    settings: Settings,
    bootstrap: str,
    worker: subprocess.Popen[bytes],
    rate: float,
    duration: float | None,
    stop: _StopSignals,
    keys: Keys | None,
) -> int:
    current = asyncio.current_task()
    assert current is not None
    stop.attach(current)
    base = f"http://127.0.0.1:{settings.web_port}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    tasks: list[asyncio.Task[Any]] = []
    try:
        await wait_for_broker(bootstrap, timeout=30)
        await producer.start()
        await _wait_until_healthy(base, worker)
        _say("meterwatch is consuming. Look at:")
        for line in _links(base, keys, timedelta(seconds=duration) if duration else _LINKS_VALID_FOR):
            _say(line)
        _say("Ctrl-C stops everything.")
        tasks = [
            asyncio.create_task(_send_demo_usage(settings, producer, rate)),
            asyncio.create_task(_report_outputs(settings, bootstrap)),
            asyncio.create_task(_watch_worker(worker)),
        ]
        if duration is not None:
            tasks.append(asyncio.create_task(asyncio.sleep(duration)))
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return 0 if worker.poll() is None else 1
    finally:
        stop.begin()
        for task in tasks:
            task.cancel()
        # Bounded: the stop budget must hold even if the broker no longer answers.
        closing = [*tasks, asyncio.create_task(producer.stop())]
        await asyncio.wait(closing, timeout=_TRAFFIC_STOP_SECONDS)
        for task in closing:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # retrieved: an error while stopping is expected, not news


_LINKS_VALID_FOR = timedelta(hours=24)


def _links(base: str, keys: Keys | None, valid_for: timedelta) -> list[str]:
    """Where to look, ready to use: the page's link carries a token (kept in a cookie once opened),
    the API's requests send the same token as a header, ``/metrics`` a service token."""
    workspace = CONTRACT_WORKSPACES[0]
    if keys is None:
        token = service = None
    else:
        now = datetime.now(UTC)
        token = keys.mint(now, valid_for, workspaces=WORKSPACES, billing=True, subject="meterwatch-dev")
        service = keys.mint(now, valid_for, service=True, subject="meterwatch-dev")
    lines = [f"  usage page  {base}/ui/usage/{workspace}" + (f"?token={token}" if token else "")]
    curl = "curl"
    if token is not None:
        lines.append(f"  usage API   TOKEN={token}")
        curl = 'curl -H "Authorization: Bearer $TOKEN"'
    lines += [f"              {curl} {base}/usage/{w}" for w in WORKSPACES]
    lines.append(f"              {curl} '{base}/usage/{workspace}/daily?metric=messages_sent'")
    lines.append(
        f"  metrics     curl -H 'Authorization: Bearer {service}' {base}/metrics"
        if service
        else f"  metrics     {base}/metrics"
    )
    lines.append(f"  health      {base}/health")
    return lines


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

    signing = settings.command_signing_keys
    key_id, secret = next(iter(signing.items())) if signing else (None, b"")
    for key, command in setup_commands(datetime.now(UTC)):
        value = orjson.dumps(command)
        # With METERWATCH_COMMAND_KEYS set, the demo signs as the product's settings service would.
        headers = [signature_header(value, key_id, secret)] if key_id is not None else None
        await producer.send_and_wait(settings.topic(USAGE_CONTROL), value, key=key.encode(), headers=headers)
    rng = random.Random()
    for event in usage_events(rng):
        await producer.send(settings.topic(USAGE_EVENTS), orjson.dumps(event), key=event["workspace_id"].encode())
        await asyncio.sleep(rng.expovariate(rate))


async def _report_outputs(settings: Settings, bootstrap: str) -> None:
    topics = {
        settings.topic(name): name for name in (USAGE_ALERTS, USAGE_LIMITS, USAGE_COMMAND_RESULTS, USAGE_DEAD_LETTER)
    }
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="latest", group_id=None)
    await consumer.start()
    try:
        async for message in consumer:
            _say(_describe(topics[message.topic], orjson.loads(message.value)))
    finally:
        await consumer.stop()


def _describe(topic: str, record: dict[str, Any]) -> str:
    if topic == USAGE_ALERTS:
        owner = record.get("workspace_id") or f"contract {record.get('contract_id')}"
        return (
            f"ALERT  {owner}: {record['metric']} reached {record['level']}% of {record['threshold']} "
            f"(usage {record['usage']}) [{record['alert_id'][:8]}]"
        )
    if topic == USAGE_LIMITS:
        return f"FIN    {record['workspace_id']}: Fin {record['state']} ({record['reason']}, usage {record['usage']} / limit {record['limit']})"
    if topic == USAGE_DEAD_LETTER:
        return f"DEAD   {record['error']['code']}: {record['error']['message']}"
    detail = record.get("reason") or record.get("effective_from") or ""
    return f"COMMAND {record['command_id']}: {record['status']} {detail}".rstrip()


async def _watch_worker(worker: subprocess.Popen[bytes]) -> None:
    while worker.poll() is None:
        await asyncio.sleep(0.5)
    raise SystemExit(f"meterwatch dev: the worker stopped unexpectedly (exit code {worker.returncode})")


def _say(line: str) -> None:
    # The terminal may be gone (a closed pipe); stopping what we started must not depend on it.
    with contextlib.suppress(OSError):
        print(f"[meterwatch dev] {line}", flush=True)
