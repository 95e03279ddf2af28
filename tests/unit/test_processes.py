"""meterwatch.processes: a child ends with the process that started it, even one SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")

# Started by the test; starts a sleeping child armed one way or the other, prints its pid, waits.
PARENT = """
import subprocess, sys, time, signal
from meterwatch.processes import signal_when_parent_dies
how = sys.argv[1]
sleeper = "import time; time.sleep(120)"
if how == "preexec":
    child = subprocess.Popen([sys.executable, "-c", sleeper], preexec_fn=signal_when_parent_dies(signal.SIGKILL))
else:
    armed = "import os, time; from meterwatch.processes import die_with_parent; "
    armed += "assert die_with_parent(os.getppid()); print('armed', flush=True); time.sleep(120)"
    child = subprocess.Popen([sys.executable, "-c", armed], stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"armed\\n"
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("how", ["preexec", "in_child"])
def test_a_child_dies_with_its_sigkilled_parent(how: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(PARENT), how], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait()


def test_a_child_whose_parent_is_already_gone_is_told_so() -> None:
    code = "import os; from meterwatch.processes import die_with_parent; print(die_with_parent(os.getppid() + 1))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=30, env=os.environ)
    assert out.stdout.strip() == b"False"


def test_a_process_whose_main_thread_is_stuck_still_exits_in_time() -> None:
    code = "import time; from meterwatch.processes import exit_within; exit_within(0.3); time.sleep(60)"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], timeout=30)
    assert done.returncode == 3
    assert time.monotonic() - started < 10
