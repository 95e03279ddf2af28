"""Worker processes under a kill schedule: the kills done to them and the crashes they had on
their own, each crashed worker started again as a supervisor would."""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.worker import WorkerProcess, http_get


@dataclass
class Kill:
    at: float  # seconds after the load started
    worker: int


@dataclass
class Crash:
    """A worker that exited without being killed: the contract allows no such thing."""

    at: float
    worker: int
    returncode: int | None
    log_excerpt: list[str]


class WorkerPool:
    """The workers, the kills done to them, and the crashes they had on their own.

    A crashed worker is started again, as a supervisor would, so one crash does not end the run
    and hide what else went wrong; the crash itself fails the test.
    """

    def __init__(self, workers: list[WorkerProcess], started_at: float) -> None:
        self.workers = workers
        self.started_at = started_at
        self.kills: list[Kill] = []
        self.crashes: list[Crash] = []

    def since_start(self) -> float:
        return asyncio.get_running_loop().time() - self.started_at

    def kill_and_restart(self, index: int) -> None:
        self.restart_if_crashed()  # otherwise kill() of a dead worker would hide its crash
        killed_at = self.since_start()
        self.workers[index].kill()
        self.workers[index].start()
        self.kills.append(Kill(killed_at, index))
        print(f"  t+{self.kills[-1].at:5.1f}s SIGKILL worker{index}, restarted")

    def restart_if_crashed(self) -> None:
        for index, worker in enumerate(self.workers):
            if worker.process is not None and worker.process.poll() is not None:
                crash = Crash(self.since_start(), index, worker.process.returncode, crash_excerpt(worker.log_path))
                self.crashes.append(crash)
                print(f"  t+{crash.at:5.1f}s worker{index} CRASHED (exit {crash.returncode}), restarted")
                worker.start()

    async def watch(self) -> None:
        while True:
            self.restart_if_crashed()
            await asyncio.sleep(0.5)

    async def kill_at_random(self, pauses: list[float], rng: random.Random, warm_up: float) -> None:
        await asyncio.sleep(warm_up)
        for pause in pauses:
            self.kill_and_restart(rng.randrange(len(self.workers)))
            await asyncio.sleep(pause)

    def restart_all(self) -> None:
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            worker.start()

    async def all_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(http_get(f"{w.base_url}/health")[0] == 200 for w in self.workers):
                return True
            await asyncio.sleep(1)
        return False


def crash_excerpt(log_path: Path) -> list[str]:
    """The last start's lines that say why it ended: what crashed, where in meterwatch's own code,
    and with which exception."""
    last_start = log_path.read_text(errors="replace").split("===== start #")[-1].splitlines()
    telling = re.compile(r"Crashed reason=|^\s+File \"(?!.*site-packages)|^[A-Za-z_.]*(Error|Exception)\b.*:|CRITICAL")
    return [line for line in last_start if telling.search(line)][:8]
