"""py-spy, sampling a meterwatch worker from outside while it counts (``bench/run.py --profile``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from harness import die_with_us, stop_process


def find_py_spy() -> str | None:
    for candidate in (
        os.environ.get("PY_SPY"),
        shutil.which("py-spy"),
        str(Path(__file__).resolve().parent.parent / ".venv/bin/py-spy"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def start_py_spy(pid: int, raw_path: Path, log_dir: Path) -> subprocess.Popen[bytes]:
    """Sample the worker from now until stopped; nothing is instrumented inside it."""
    py_spy = find_py_spy()
    assert py_spy is not None
    argv = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--output", str(raw_path),
            "--rate", "100", "--idle", "--function", "--threads", "--subprocesses"]  # fmt: skip
    with open(log_dir / f"{raw_path.stem}.py-spy.log", "wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_us
        )


def stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_process(proc)
