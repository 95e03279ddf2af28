"""Stage one in a process of its own, so that it runs on another core than counting.

The worker's one thread ran both stages, and stage one (unpacking Kafka records, checking and
re-packing events) took about a third of it. Here the worker starts ``python -m
meterwatch.streams.pipeline.ingest_process`` with the app and supervises it (``IngestProcess``, a service
of the Faust app); the child runs the same ``IngestService`` (streams/pipeline/ingest.py) with its own
clients, group and transactional id, exactly as it runs inside the worker when
``METERWATCH_INGEST_PROCESS=false``.

The child reads the same ``METERWATCH_*`` environment as the worker. It reports on a pipe, a
JSON line at a time: whether it has joined its group, its lag per partition, and the metric
updates it made (counters and histograms, applied by the worker to its own registry so that
``/metrics`` shows one process). It stops on SIGTERM, finishing the batch in hand, and dies with
the worker, even when the worker is SIGKILLed (Linux's parent-death signal; elsewhere it stops
once its parent pid changes). When it stops, so does the worker: in good order if the child was asked to stop
(SIGTERM to the process group), with an error if it failed or was killed, as when the in-process
loop fails; the orchestrator restarts both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import logging.config
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from mode import Service
from prometheus_client import ProcessCollector

from ... import allocator, collector
from ...config import ProcessingGuarantee, Settings, load_settings
from ...logs import FAUST_SERVICES_LOG, logging_config
from ...processes import die_with_parent, exit_within
from ..http.metrics_endpoint import RELEASE_FREE_MEMORY_EVERY_SECONDS
from ..topics import TopicNames
from .ingest import FINISH_SECONDS, IngestService, forget_service, register_service
from .ingest_kafka import CLOSE_SECONDS

if TYPE_CHECKING:
    from ..app import Meterwatch

log = logging.getLogger("meterwatch.streams.pipeline.ingest")

# How often the child reports while nothing else makes it (lag, joining); metric updates are
# reported as soon as a batch has made them.
STATUS_SECONDS = 0.2
# The child's own stop: the batch in hand, then its two clients.
CHILD_STOP_SECONDS = FINISH_SECONDS + 2 * CLOSE_SECONDS
# How long the worker waits for its child after SIGTERM before it kills it.
PARENT_WAIT_SECONDS = CHILD_STOP_SECONDS + 1.0


# --- the child --------------------------------------------------------------------------------


class _Recorded:
    """One of the worker's metrics, as the child sees it: each update is recorded for the worker."""

    __slots__ = ("_name", "_updates", "_labels")

    def __init__(self, name: str, updates: Updates, labels: tuple[str, ...] = ()) -> None:
        self._name = name
        self._updates = updates
        self._labels = labels

    def labels(self, *labels: str) -> _Recorded:
        return _Recorded(self._name, self._updates, labels)

    def inc(self, amount: float = 1) -> None:
        self._updates.add(self._name, self._labels, "inc", amount)

    def observe(self, amount: float) -> None:
        self._updates.add(self._name, self._labels, "observe", amount)

    def set(self, value: float) -> None:
        # Gauges (the lag) travel as whole readings in every report instead.
        pass


class Updates:
    """Metric updates made since the last report; ``on_first`` is called when one arrives."""

    def __init__(self, on_first: Callable[[], None]) -> None:
        self.pending: list[tuple[str, tuple[str, ...], str, float]] = []
        self._on_first = on_first

    def add(self, name: str, labels: tuple[str, ...], op: str, amount: float) -> None:
        if not self.pending:
            self._on_first()
        self.pending.append((name, labels, op, amount))

    def take(self) -> list[tuple[str, tuple[str, ...], str, float]]:
        taken, self.pending = self.pending, []
        return taken


class RecordedMetrics:
    """The metrics ``IngestService`` updates, recorded for the worker."""

    def __init__(self, updates: Updates) -> None:
        for name in ("events_rejected", "batch_size", "batch_seconds", "consumer_lag"):
            setattr(self, name, _Recorded(name, updates))


class _ChildApp:
    """What ``IngestService`` asks of its app: to crash it when its loop dies."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self.crashed: BaseException | None = None

    async def crash(self, error: BaseException) -> None:
        self.crashed = error
        self._stop.set()


@dataclass
class IngestContext:
    """The parts of ``Meterwatch`` stage one uses, without a Faust app."""

    app: Any
    settings: Settings
    bootstrap: str
    guarantee: ProcessingGuarantee
    names: TopicNames
    metrics: Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meterwatch-ingest")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--guarantee", required=True, choices=[g.value for g in ProcessingGuarantee])
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    # Stage one ends with the worker, however the worker ends, as it does inside it (a stopping
    # worker stops its child first).
    if not die_with_parent(args.parent_pid):
        return 0  # the worker died before we got here
    # The worker's own tuning: few malloc arenas, free pages handed back (below), rarer young-
    # generation collections while batches are decoded.
    allocator.configure()
    settings = load_settings()
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    status = os.fdopen(args.status_fd, "wb", buffering=0)
    return asyncio.run(_run(settings, args.bootstrap, ProcessingGuarantee(args.guarantee), status, args.parent_pid))


async def _run(settings: Settings, bootstrap: str, guarantee: ProcessingGuarantee, status: Any, parent_pid: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    report_now = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    updates = Updates(lambda: loop.call_soon(report_now.set))
    app = _ChildApp(stop)
    context = IngestContext(
        app, settings, bootstrap, guarantee, TopicNames.for_settings(settings), RecordedMetrics(updates)
    )
    service = IngestService(context)  # type: ignore[arg-type]

    def report() -> None:
        line = {"joined": service.joined, "lag": [[t, p, n] for (t, p), n in service.lag().items()]}
        line["updates"] = updates.take()
        status.write(orjson.dumps(line) + b"\n")

    await service.start()
    collector.tune()
    trimmed_at = time.monotonic()
    try:
        while not stop.is_set():
            if os.getppid() != parent_pid:
                log.warning("ingest: the worker (pid %d) has exited; stopping", parent_pid)
                break
            try:
                report()
            except OSError:  # the worker closed the pipe: it is gone
                break
            report_now.clear()
            if time.monotonic() - trimmed_at >= RELEASE_FREE_MEMORY_EVERY_SECONDS:
                trimmed_at = time.monotonic()
                await loop.run_in_executor(None, allocator.release_free_memory)
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(report_now.wait())]
            await asyncio.wait(waits, timeout=STATUS_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()
    finally:
        exit_within(CHILD_STOP_SECONDS)
        await service.stop()
        with contextlib.suppress(OSError):
            report()
    return 1 if app.crashed is not None else 0


# --- the worker's side ------------------------------------------------------------------------


class IngestProcess(Service):
    """Runs stage one's process from the app's start to its stop, and reports for it."""

    logger = FAUST_SERVICES_LOG

    def __init__(self, mw: Meterwatch, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._mw = mw
        self.joined = False
        self._lag: dict[tuple[str, int], int] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._watched = False
        register_service(mw, self)

    def _pid(self) -> int:
        process = self._process
        return process.pid if process is not None else -1  # no such process: no figures

    async def on_start(self) -> None:
        mw = self._mw
        read_fd, write_fd = os.pipe()
        argv = [
            sys.executable, "-m", __name__,
            "--bootstrap", mw.bootstrap,
            "--guarantee", mw.guarantee.value,
            "--status-fd", str(write_fd),
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        try:
            self._process = subprocess.Popen(argv, pass_fds=(write_fd,), stdin=subprocess.DEVNULL)
        finally:
            os.close(write_fd)
        log.info("ingest: reading %s in process %d", mw.names.usage_events, self._process.pid)
        if not self._watched:
            # Its CPU and memory, beside the worker's own process_* figures.
            ProcessCollector(namespace="meterwatch_ingest", pid=self._pid, registry=mw.metrics.registry)
            self._watched = True
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read_reports, args=(read_fd, loop), name="ingest-reports", daemon=True).start()

    def _read_reports(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        with os.fdopen(fd, "rb") as pipe:
            for line in pipe:
                try:
                    report = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if not _call_soon(loop, self._apply, report):
                    return
        _call_soon(loop, self._ended)

    def _apply(self, report: dict[str, Any]) -> None:
        self.joined = bool(report["joined"])
        self._lag = {(topic, partition): behind for topic, partition, behind in report["lag"]}
        metrics = self._mw.metrics
        for name, labels, op, amount in report["updates"]:
            getattr(getattr(metrics, name).labels(*labels), op)(amount)

    def _ended(self) -> None:
        process = self._process
        if process is None or self._stopping:
            return
        returncode = process.wait()
        self.joined = False
        if returncode == 0:
            # It was asked to stop (a SIGTERM to the whole process group, say): so is the worker,
            # in good order (a second SIGTERM is no news to a worker already stopping).
            log.info("ingest: its process (pid %d) has stopped; stopping the worker", process.pid)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        log.critical("ingest: its process (pid %d) exited with code %d; stopping the worker", process.pid, returncode)
        asyncio.ensure_future(self._mw.app.crash(RuntimeError(f"the ingest process exited with code {returncode}")))

    def lag(self) -> dict[tuple[str, int], int]:
        return dict(self._lag) if self._process is not None and self._process.poll() is None else {}

    async def on_stop(self) -> None:
        self._stopping = True
        forget_service(self._mw)
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + PARENT_WAIT_SECONDS
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            log.warning("ingest: its process did not stop within %.0fs; killing it", PARENT_WAIT_SECONDS)
            process.kill()
            await loop.run_in_executor(None, process.wait)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> bool:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: the worker is gone
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
