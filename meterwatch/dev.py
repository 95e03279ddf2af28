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
import threading
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from .brokers.embedded import EmbeddedBroker
from .brokers.probe import wait_for_broker
from .config import Settings
from .demo import (
    CONTRACT_ID,
    CONTRACT_WORKSPACES,
    SMS_WORKSPACE,
    WORKSPACES,
    LiveUsage,
    backfill,
    cycle_of,
    forecast_warning_command,
    setup_commands,
)
from .dev_receivers import LocalMailbox, LocalWebhookReceiver
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

# The stop budget, ten seconds in all: demo traffic, the output reader and the summary (which
# waits, within this, for the worker to account for the last events sent), then the worker (its
# own METERWATCH_SHUTDOWN_TIMEOUT is capped to this, and it is SIGKILLed a second after), then
# the broker, which exits at once on SIGTERM.
_TRAFFIC_STOP_SECONDS = 2.5
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
    account = _Account()
    try:
        if settings.smtp_host is None:
            # Kept after we stop, unlike the scratch directory: the mails are the demo's to show.
            path = os.path.join(tempfile.gettempdir(), f"meterwatch-dev-mail-{os.getpid()}.mbox")
            account.mailbox = LocalMailbox(path, _on_mail).start()
            _say(f"no SMTP server configured: mails go to a local one on port {account.mailbox.port}, kept in {path}")
        if not settings.webhook_endpoints:
            account.webhooks = LocalWebhookReceiver(_on_webhook)
            _say(f"no webhook endpoint configured: deliveries go to a local receiver at {account.webhooks.url}")
        bootstrap = settings.kafka_bootstrap
        if bootstrap is None:
            broker = EmbeddedBroker(log_path=os.path.join(scratch, "broker.log")).start()
            bootstrap = broker.bootstrap
            _say(f"embedded Kafka-compatible broker (Tansu) on {bootstrap}")
        else:
            _say(f"using the Kafka cluster at {bootstrap}")
        keys = _dev_keys(settings)
        worker = _start_worker(settings, bootstrap, scratch, keys, account)
        return asyncio.run(_run(settings, bootstrap, worker, rate, duration, stop, keys, account))
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
        if account.mailbox is not None:
            account.mailbox.stop()
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


def _start_worker(
    settings: Settings, bootstrap: str, scratch: str, keys: Keys | None, account: _Account
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "METERWATCH_KAFKA_BOOTSTRAP": bootstrap,
        "METERWATCH_SHUTDOWN_TIMEOUT": str(_worker_shutdown_timeout(settings).total_seconds()),
    }
    if account.mailbox is not None:
        env |= {"METERWATCH_SMTP_HOST": "127.0.0.1", "METERWATCH_SMTP_PORT": str(account.mailbox.port)}
    if account.webhooks is not None:
        env |= {"METERWATCH_WEBHOOK_URLS": account.webhooks.url, "METERWATCH_WEBHOOK_SECRET": account.webhooks.secret}
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
    account: _Account,
) -> int:
    current = asyncio.current_task()
    assert current is not None
    stop.attach(current)
    base = f"http://127.0.0.1:{settings.web_port}"
    valid_for = timedelta(seconds=duration) if duration else _LINKS_VALID_FOR
    service = keys.mint(datetime.now(UTC), valid_for, service=True, subject="meterwatch-dev") if keys else None
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    tasks: list[asyncio.Task[Any]] = []
    consuming = False
    try:
        if account.webhooks is not None:
            await account.webhooks.start()
        await wait_for_broker(bootstrap, timeout=30)
        await producer.start()
        await _wait_until_healthy(base, worker)
        consuming = True
        outputs = await _output_reader(settings, bootstrap)
        _say("meterwatch is consuming. Look at:")
        for line in _links(base, keys, valid_for):
            _say(line)
        _say("Ctrl-C stops everything.")
        usage = _Usage(base, service)
        tasks = [
            asyncio.create_task(_report_outputs(settings, outputs, account)),
            asyncio.create_task(_play_demo(settings, producer, rate, account, usage)),
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
        # The summary gives up waiting early enough to be printed within the budget.
        deadline = asyncio.get_running_loop().time() + _TRAFFIC_STOP_SECONDS - 0.3
        flushed = asyncio.create_task(producer.stop())
        closing = [*tasks, flushed]
        if consuming:
            closing.append(asyncio.create_task(_summarise(account, base, service, settings, flushed, deadline)))
        if account.webhooks is not None:
            closing.append(asyncio.create_task(account.webhooks.stop()))
        await asyncio.wait(closing, timeout=_TRAFFIC_STOP_SECONDS)
        for task in closing:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # retrieved: an error while stopping is expected, not news


class _Account:
    """What the demo did and what came of it, for the summary when it stops."""

    def __init__(self) -> None:
        self.sent = 0
        self.alerts = 0
        self.limit_changes = 0
        self.dead_letters = 0
        self.mailbox: LocalMailbox | None = None
        self.webhooks: LocalWebhookReceiver | None = None
        self.results: dict[str, dict[str, Any]] = {}

    def delivered(self, sent: asyncio.Future[Any]) -> None:
        """An event's send is over: it counts as sent once the broker has it."""
        if not sent.cancelled() and sent.exception() is None:
            self.sent += 1

    def note(self, topic: str, record: dict[str, Any]) -> None:
        if topic == USAGE_ALERTS:
            self.alerts += 1
        elif topic == USAGE_LIMITS:
            self.limit_changes += 1
        elif topic == USAGE_DEAD_LETTER:
            self.dead_letters += 1
        else:
            self.results[record["command_id"]] = record

    async def answered(self, command_ids: set[str], timeout: float) -> dict[str, dict[str, Any]]:
        deadline = asyncio.get_running_loop().time() + timeout
        while not command_ids <= self.results.keys():
            if asyncio.get_running_loop().time() > deadline:
                missing = ", ".join(sorted(command_ids - self.results.keys()))
                raise SystemExit(f"meterwatch dev: no answer to the demo's commands {missing} in {timeout:.0f}s")
            await asyncio.sleep(0.2)
        return {command_id: self.results[command_id] for command_id in command_ids}


class _Usage:
    """The worker's usage API, as the demo reads it."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base, self.token = base, token

    async def period_start(self, workspace_id: str) -> datetime | None:
        status, body = await _http_get(f"{self.base}/usage/{workspace_id}", self.token)
        return datetime.fromisoformat(orjson.loads(body)["period_start"]) if status == 200 else None

    async def wait_for_usage(self, workspace_id: str, metric: str, at_least: int, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            status, body = await _http_get(f"{self.base}/usage/{workspace_id}", self.token)
            entry = orjson.loads(body)["metrics"].get(metric) if status == 200 else None
            if entry is not None and entry["usage"] >= at_least:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise SystemExit(
                    f"meterwatch dev: {workspace_id}'s {metric} did not reach {at_least} in {timeout:.0f}s"
                )
            await asyncio.sleep(0.3)

    async def metrics(self) -> dict[str, float]:
        status, body = await _http_get(f"{self.base}/metrics", self.token)
        if status != 200:
            return {}
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals


async def _play_demo(
    settings: Settings, producer: AIOKafkaProducer, rate: float, account: _Account, usage: _Usage
) -> None:
    """Settings first, then the period so far, then usage as it happens."""
    # The contract first, as a product onboards a customer: its workspaces' settings, and the usage
    # that follows, then belong to the contract's billing periods.
    subscription, *settings_commands = setup_commands(datetime.now(UTC))
    await _send_commands(settings, producer, account, [subscription])
    for workspace in CONTRACT_WORKSPACES:
        expected = cycle_of(workspace).period_containing(datetime.now(UTC)).start
        deadline = asyncio.get_running_loop().time() + 60
        while await usage.period_start(workspace) != expected:
            if asyncio.get_running_loop().time() > deadline:
                raise SystemExit(f"meterwatch dev: {workspace} did not join contract {CONTRACT_ID} within 60s")
            await asyncio.sleep(0.3)
    await _send_commands(settings, producer, account, settings_commands)
    rng = random.Random()
    filled = backfill(datetime.now(UTC), rng)
    topic = settings.topic(USAGE_EVENTS)
    sending = [await producer.send(topic, orjson.dumps(e), key=e["workspace_id"].encode()) for e in filled.events]
    for sent in sending:
        sent.add_done_callback(account.delivered)
    await asyncio.gather(*sending)
    _say(f"DEMO   backfilled {len(filled.events)} events, the billing period so far: " + "; ".join(filled.notes))
    await usage.wait_for_usage(SMS_WORKSPACE, "sms", filled.totals[SMS_WORKSPACE, "sms"], timeout=60)
    _say(f"DEMO   {SMS_WORKSPACE} turns on forecast warnings for its SMS alert")
    await _send_commands(settings, producer, account, [forecast_warning_command(datetime.now(UTC))])
    live = LiveUsage(filled, rng)
    while True:
        event, note = live.next(datetime.now(UTC))
        sent = await producer.send(topic, orjson.dumps(event), key=event["workspace_id"].encode())
        sent.add_done_callback(account.delivered)
        if note is not None:
            _say(f"DEMO   {note}")
        await asyncio.sleep(rng.expovariate(rate))


async def _send_commands(
    settings: Settings, producer: AIOKafkaProducer, account: _Account, commands: list[tuple[str, dict[str, Any]]]
) -> None:
    signing = settings.command_signing_keys
    key_id, secret = next(iter(signing.items())) if signing else (None, b"")
    for key, command in commands:
        value = orjson.dumps(command)
        # With METERWATCH_COMMAND_KEYS set, the demo signs as the product's settings service would.
        headers = [signature_header(value, key_id, secret)] if key_id is not None else None
        await producer.send_and_wait(settings.topic(USAGE_CONTROL), value, key=key.encode(), headers=headers)
    results = await account.answered({command["command_id"] for _, command in commands}, timeout=60)
    if any(result["status"] != "applied" for result in results.values()):
        _say("some of the demo's settings were not applied (see above); the demo goes on all the same")


async def _summarise(
    account: _Account, base: str, token: str | None, settings: Settings, flushed: asyncio.Task[None], deadline: float
) -> None:
    """The summary line, once every event the broker took is counted, skipped as a repeat or
    rejected, or once ``deadline`` (event loop time) comes, whichever is first."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.shield(flushed), max(0.0, deadline - loop.time()))
    usage = _Usage(base, token)
    while True:
        metrics = await usage.metrics()
        counted = int(metrics.get("meterwatch_events_counted_total", 0))
        repeats = int(metrics.get("meterwatch_events_repeated_total", 0))
        rejected = int(metrics.get("meterwatch_events_rejected_total", 0))
        if counted + repeats + rejected >= account.sent or loop.time() + 0.1 > deadline:
            break
        await asyncio.sleep(0.1)
    if account.mailbox is not None:
        mails = f"mails: {account.mailbox.received} (in {account.mailbox.path})"
    else:
        mails = f"mails: {int(metrics.get('meterwatch_emails_sent_total', 0))} (to {settings.smtp_host})"
    if account.webhooks is not None:
        mails += f", webhooks: {account.webhooks.received} (to {account.webhooks.url})"
    else:
        mails += f", webhooks: {int(metrics.get('meterwatch_webhooks_sent_total', 0))}"
    _say(
        f"SUMMARY events sent: {account.sent}, counted: {counted}, repeats skipped: {repeats}, "
        f"dead letters: {account.dead_letters}, alerts: {account.alerts}, limit changes: {account.limit_changes}, {mails}"
    )


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
        f"              {curl} {base}/usage/{CONTRACT_WORKSPACES[1]}/alerts   # alert history, with deliveries"
    )
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
        status, _ = await _http_get(f"{base}/health")
        if status == 200:
            return
        await asyncio.sleep(0.5)


async def _http_get(url: str, token: str | None = None) -> tuple[int | None, bytes]:
    """(status, body) of a GET over HTTP/1.0, or (None, b"") if the server does not answer."""
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2)
    except (TimeoutError, OSError):
        return None, b""
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    try:
        writer.write(f"GET /{path} HTTP/1.0\r\nHost: {host}\r\n{authorization}\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 5)
        head, _, body = response.partition(b"\r\n\r\n")
        return int(head.split(maxsplit=2)[1]), body
    except (TimeoutError, OSError, IndexError, ValueError):
        return None, b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


_REPORTED = (USAGE_ALERTS, USAGE_LIMITS, USAGE_COMMAND_RESULTS, USAGE_DEAD_LETTER)


async def _output_reader(settings: Settings, bootstrap: str) -> AIOKafkaConsumer:
    """A reader of what meterwatch publishes, placed at the end of each topic before the demo sends anything."""
    topics = [settings.topic(name) for name in _REPORTED]
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="latest", group_id=None)
    await consumer.start()
    # Without a group every partition of the topics is assigned, once their metadata has arrived.
    while {partition.topic for partition in consumer.assignment()} != set(topics):
        await asyncio.sleep(0.1)
    partitions = list(consumer.assignment())
    await consumer.seek_to_end(*partitions)
    for partition in partitions:
        await consumer.position(partition)
    return consumer


async def _report_outputs(settings: Settings, consumer: AIOKafkaConsumer, account: _Account) -> None:
    topics = {settings.topic(name): name for name in _REPORTED}
    try:
        async for message in consumer:
            topic, record = topics[message.topic], orjson.loads(message.value)
            account.note(topic, record)
            _say(_describe(topic, record))
    finally:
        await consumer.stop()


def _on_mail(recipients: list[str], subject: str) -> None:
    _say(f"MAIL   to {', '.join(recipients)}: {subject}")


def _on_webhook(event: str, record_id: str, verified: bool) -> None:
    _say(f"WEBHOOK {event} {record_id[:8]}: " + ("signature verified" if verified else "BAD SIGNATURE, refused"))


def _describe(topic: str, record: dict[str, Any]) -> str:
    if topic == USAGE_ALERTS:
        owner = record.get("workspace_id") or f"contract {record.get('contract_id')}"
        if record.get("kind") == "forecast":
            return (
                f"FORECAST {owner}: {record['metric']} projected to reach {record['level']}% of {record['threshold']} "
                f"by {record['projected_date']} (usage {record['usage']}, {record['projected_usage']} by the period's end)"
            )
        if record.get("kind") == "cost":
            limit, cost = record["cost_threshold"], record["estimated_cost"]
            return (
                f"COST   {owner}: estimated {record['metric']} cost {cost['amount']} {cost['currency']} reached "
                f"{record['level']}% of {limit['amount']} {limit['currency']} [{record['alert_id'][:8]}]"
            )
        return (
            f"ALERT  {owner}: {record['metric']} reached {record['level']}% of {record['threshold']} "
            f"(usage {record['usage']}) [{record['alert_id'][:8]}]"
        )
    if topic == USAGE_LIMITS:
        fin = record["metric"] == "fin_resolutions"
        label, what = ("FIN   ", "Fin") if fin else ("LIMIT ", record["metric"])
        return (
            f"{label} {record['workspace_id']}: {what} {record['state']} "
            f"({record['reason']}, usage {record['usage']} / limit {record['limit']})"
        )
    if topic == USAGE_DEAD_LETTER:
        return f"DEAD   {record['error']['code']}: {record['error']['message']}"
    detail = record.get("reason") or record.get("effective_from") or ""
    return f"COMMAND {record['command_id']}: {record['status']} {detail}".rstrip()


async def _watch_worker(worker: subprocess.Popen[bytes]) -> None:
    while worker.poll() is None:
        await asyncio.sleep(0.5)
    raise SystemExit(f"meterwatch dev: the worker stopped unexpectedly (exit code {worker.returncode})")


_SAYING = threading.Lock()


def _say(line: str) -> None:
    # One write per line, under a lock: the local SMTP server reports from a thread of its own,
    # and print() writes a line and its newline separately. The terminal may be gone (a closed
    # pipe); stopping what we started must not depend on it.
    with _SAYING, contextlib.suppress(OSError):
        sys.stdout.write(f"[meterwatch dev] {line}\n")
        sys.stdout.flush()
