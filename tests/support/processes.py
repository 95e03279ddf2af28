"""Processes as Linux's /proc shows them: who started whom, and whether they are gone.

Tests that stop ``meterwatch dev`` must know every process it started, including one that
outlives it and is re-parented to init. Each such test tags its process tree with an
environment variable that every descendant inherits, and finds the tree by that tag.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    session: int
    state: str
    # Ticks since boot at which it started: with the pid, it names one process even if the pid
    # is reused after it exits.
    started: int
    command: str

    def alive(self) -> bool:
        now = read_proc(self.pid)
        # A zombie has exited; it only waits for its parent (maybe init) to reap it.
        return now is not None and now.started == self.started and now.state not in ("Z", "X")

    def kill(self) -> None:
        """SIGKILL, if it is still this process; for clean-up after a failed test."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def read_proc(pid: int) -> Proc | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        command = (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may hold spaces and parentheses itself.
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 of proc(5): state, ppid, pgrp, session, ..., starttime is field 22.
    return Proc(
        pid=pid,
        ppid=int(fields[1]),
        session=int(fields[3]),
        state=fields[0],
        started=int(fields[19]),
        command=command,
    )


def all_processes() -> list[Proc]:
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            proc = read_proc(int(entry.name))
            if proc is not None:
                found.append(proc)
    return found


def children_of(pid: int) -> list[Proc]:
    return [proc for proc in all_processes() if proc.ppid == pid and proc.state not in ("Z", "X")]


def tagged(name: str, value: str) -> list[Proc]:
    """The live processes whose environment has ``name=value`` (inherited by every descendant)."""
    wanted = f"{name}={value}".encode()
    found = []
    for proc in all_processes():
        try:
            environ = (PROC / str(proc.pid) / "environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if wanted in environ and proc.alive():
            found.append(proc)
    return found


def wait_until_gone(procs: list[Proc], deadline: float) -> list[Proc]:
    """Wait until ``deadline`` (``time.monotonic()``) for ``procs`` to exit; those still alive."""
    procs = list({(proc.pid, proc.started): proc for proc in procs}.values())
    while True:
        left = [proc for proc in procs if proc.alive()]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)
