"""``meterwatch worker``: check the broker, choose the processing guarantee, create topics, run."""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
import signal
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import faust

from . import allocator, collector
from .brokers.probe import BrokerUnreachable, broker_supports_transactions, wait_for_broker
from .config import ProcessingGuarantee, Settings
from .logs import logging_config
from .processes import EXIT_STOP_TIMED_OUT, exit_within
from .tokens import KeyConfigError, keys_for

log = logging.getLogger("meterwatch.worker")


class StartupError(RuntimeError):
    """meterwatch cannot start; the message is one line for people."""


async def prepare(settings: Settings, bootstrap: str) -> ProcessingGuarantee:
    """Wait for the broker, choose the guarantee and create the topics."""
    from .streams.runtime.kafka_client import client_options
    from .streams.runtime.topic_admin import TopicLayoutError, ensure_topics
    from .streams.topics import topic_specs

    try:
        await wait_for_broker(bootstrap, timeout=settings.startup_timeout.total_seconds(), **client_options(settings))
    except BrokerUnreachable as error:
        raise StartupError(f"{error} (METERWATCH_KAFKA_BOOTSTRAP)") from None
    guarantee = await choose_guarantee(settings, bootstrap)
    try:
        await ensure_topics(settings, topic_specs(settings), bootstrap)
    except TopicLayoutError as error:
        raise StartupError(str(error)) from None
    return guarantee


async def choose_guarantee(settings: Settings, bootstrap: str) -> ProcessingGuarantee:
    wanted = settings.processing_guarantee or ProcessingGuarantee.EXACTLY_ONCE
    if wanted is ProcessingGuarantee.AT_LEAST_ONCE:
        return wanted
    from .streams.runtime.kafka_client import client_options

    # aiokafka logs the broker's refusal as an error; here it is an answer, reported below.
    sender_log = logging.getLogger("aiokafka.producer.sender")
    previous_level = sender_log.level
    sender_log.setLevel(logging.CRITICAL)
    try:
        supported = await broker_supports_transactions(
            bootstrap, transactional_id_prefix=settings.group_id, **client_options(settings)
        )
    finally:
        sender_log.setLevel(previous_level)
    if supported:
        return ProcessingGuarantee.EXACTLY_ONCE
    if settings.processing_guarantee is ProcessingGuarantee.EXACTLY_ONCE:
        # Asked for by name: falling back would quietly weaken what the operator chose.
        raise StartupError(
            f"METERWATCH_PROCESSING_GUARANTEE=exactly_once, but the broker at {bootstrap} refused a transaction "
            "(it has none, or an ACL denies this principal its transactional ids); grant those, or unset it to "
            "fall back to at_least_once"
        )
    log.warning(
        "processing guarantee: the broker at %s refused a transaction (it has none, or an ACL denies this "
        "principal its transactional ids); "
        "falling back from exactly_once to at_least_once (counting stays exact: replays are idempotent)",
        bootstrap,
    )
    return ProcessingGuarantee.AT_LEAST_ONCE


def _kafka_identity(settings: Settings) -> str:
    """How the worker connects, for its start-up line: the protocol and, with SASL, who it is."""
    protocol = settings.kafka_security_protocol.value
    if settings.kafka_sasl_mechanism is None:
        return protocol
    return f"{protocol}, {settings.kafka_sasl_mechanism} as {settings.kafka_sasl_username}"


def run_worker(settings: Settings, *, parent_pid: int | None = None) -> int:
    allocator.configure()
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    if parent_pid is not None:
        _stop_when_parent_exits(parent_pid)
    bootstrap = settings.kafka_bootstrap
    if bootstrap is None:
        raise StartupError("METERWATCH_KAFKA_BOOTSTRAP is not set (use `meterwatch dev` for a local broker)")
    try:
        keys_for(settings)
    except KeyConfigError as error:
        raise StartupError(str(error)) from None
    guarantee = asyncio.run(prepare(settings, bootstrap))
    # asyncio.run closed its loop; Faust runs on a fresh one.
    asyncio.set_event_loop(asyncio.new_event_loop())
    from .streams.app import create_app

    Path(settings.data_dir, settings.group_id).parent.mkdir(parents=True, exist_ok=True)
    mw = create_app(settings, bootstrap, guarantee)
    log.info(
        "starting worker: group %s, %d partitions, guarantee %s, kafka %s (%s), web on %s:%d",
        settings.group_id,
        settings.partitions,
        guarantee.value,
        bootstrap,
        _kafka_identity(settings),
        settings.web_bind,
        settings.web_port,
    )
    worker = BoundedStopWorker(
        mw.app,
        shutdown_timeout_seconds=settings.shutdown_timeout.total_seconds(),
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level, settings.log_format),
        quiet=True,
        redirect_stdouts=False,
    )
    collector.tune()
    worker.execute_from_commandline()
    return 0


class BoundedStopWorker(faust.Worker):
    """Faust's worker, which exits at the latest ``shutdown_timeout_seconds`` after SIGTERM or SIGINT.

    Faust's orderly stop commits finished work and leaves the group; with a broker up it takes
    a second or two. Without one it can wait on the consumer's fetcher for minutes, longer than
    any orchestrator waits before it SIGKILLs (Kubernetes: 30 s by default). The first stop signal
    therefore starts a watchdog thread's countdown: a thread, not a loop timer, so that it fires
    even when the event loop is blocked, or already closed while the interpreter waits for other
    threads.
    """

    def __init__(self, *args: Any, shutdown_timeout_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shutdown_timeout_seconds = shutdown_timeout_seconds
        self._stop_signal: signal.Signals | None = None
        self._stop_signalled_at = 0.0
        self._stop_signalled = threading.Event()
        # The thread that runs the loop, whose stack the give-up line may have to show.
        self._main_thread = threading.get_ident()

    def install_signal_handlers(self) -> None:
        super().install_signal_handlers()  # the event loop runs Faust's orderly stop
        if sys.platform == "win32":
            return  # Faust's own SIGTERM handler there is a plain signal handler; ours would replace it
        threading.Thread(target=self._watchdog, name="shutdown-watchdog", daemon=True).start()
        # The loop learns of a signal through its wake-up fd, which stays; this Python-level handler
        # replaces only asyncio's no-op one. It runs in the main thread at the next bytecode (and
        # interrupts a blocking system call), so the countdown starts even if the loop is stuck.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop_signal)

    def _on_stop_signal(self, signum: int, frame: types.FrameType | None) -> None:
        # No logging here: a signal handler may interrupt the main thread inside a log call.
        if self._stop_signal is None:
            self._stop_signal = signal.Signals(signum)
            self._stop_signalled_at = time.monotonic()
            self._stop_signalled.set()

    def _watchdog(self) -> None:
        self._stop_signalled.wait()
        assert self._stop_signal is not None
        log.info(
            "shutdown: %s received; stopping (at most %gs)", self._stop_signal.name, self._shutdown_timeout_seconds
        )
        time.sleep(max(0.0, self._stop_signalled_at + self._shutdown_timeout_seconds - time.monotonic()))
        self._give_up()

    def _give_up(self) -> None:
        exit_within(2.0)  # should the log line itself block (a stderr nobody reads)
        try:
            log.error(
                "shutdown: still stopping after %gs (%s); exiting now: "
                "what is not committed yet will be processed again by the partitions' next owner",
                self._shutdown_timeout_seconds,
                self._stuck_at(self._main_thread),
            )
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
        finally:
            os._exit(EXIT_STOP_TIMED_OUT)

    def _stuck_at(self, main_thread: int) -> str:
        """What the stop is waiting for, for the give-up line."""
        try:
            services = _services_stopping(self.loop)
            if services:
                return "waiting for " + ", ".join(services) + " to stop"
            done = "services stopped, " if self._signal_stop_future and self._signal_stop_future.done() else ""
            frame = sys._current_frames().get(main_thread)
            if frame is None:
                return done + "main thread ended, other threads still running"
            code = frame.f_code
            return f"{done}main thread in {code.co_qualname}, {Path(code.co_filename).name}:{frame.f_lineno}"
        except Exception as error:  # a report is not worth failing the exit for
            return f"cannot tell where: {error!r}"


def _services_stopping(loop: asyncio.AbstractEventLoop) -> list[str]:
    """The Faust services whose ``stop()`` is still waiting, innermost of each waiting task.

    Read from another thread while the loop runs: the tasks and frames may change under us, which
    only makes the answer less precise.
    """
    from mode import Service

    stopping = {}
    for task in asyncio.all_tasks(loop):
        awaitable: Any = task.get_coro()
        for _ in range(100):
            frame = getattr(awaitable, "cr_frame", None)
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if frame.f_code.co_name == "stop" and isinstance(owner, Service):
                stopping[id(owner)] = owner
            awaitable = awaitable.cr_await
            if isinstance(awaitable, asyncio.Task):
                awaitable = awaitable.get_coro()
    # A service waits for its children to stop: name only the ones nothing else waits on.
    waited_on = {id(node.data) for service in stopping.values() for node in list(service.beacon.walk())[1:]}
    return sorted({service.shortlabel for key, service in stopping.items() if key not in waited_on})


def _stop_when_parent_exits(parent_pid: int) -> None:
    """Stop (as on SIGTERM) once ``parent_pid`` is no longer this process's parent.

    ``meterwatch dev`` also has Linux signal its worker when it dies (``PR_SET_PDEATHSIG``);
    this check covers the systems without it. Comparing our parent pid cannot be fooled by pid
    reuse: an orphan's parent becomes init (or a subreaper), never ``parent_pid`` again.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        log.warning("shutdown: parent process %d has exited; stopping", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
