"""Child processes that end with the process that started them, however it ends.

Linux sends a child a chosen signal when its parent dies, SIGKILL included
(``prctl(PR_SET_PDEATHSIG)``); elsewhere this is a no-op and each child's own parent check covers
it. The signal is armed either before the child's program starts (``signal_when_parent_dies``,
a ``preexec_fn``) or by the child itself (``die_with_parent``). Either way a parent that died
before the signal was armed is seen by comparing the child's parent pid afterwards: an orphan's
parent becomes init or a subreaper, never the pid it had. ``exit_within`` is the last resort of
a process whose orderly stop takes too long.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
# The exit status of a worker or stage-one process that gave up on an orderly stop (2 is a
# refused start).
EXIT_STOP_TIMED_OUT = 3


def signal_when_parent_dies(signum: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send ``signum`` to the child when we die.

    Linux sends it when the *thread* that forked the child ends, so it is armed only from the
    main thread (None elsewhere, and off Linux)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signum))
        if os.getppid() != parent:  # we died before prctl took effect
            os._exit(1)

    return arm


def die_with_parent(parent_pid: int) -> bool:
    """In a child of ``parent_pid``: have Linux kill this process (SIGKILL) when that parent
    dies. False if it is gone already."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL))
    return os.getppid() == parent_pid


def exit_within(seconds: float) -> None:
    """From now on, exit (``EXIT_STOP_TIMED_OUT``) at the latest ``seconds`` later, even if the
    main thread is blocked."""
    timer = threading.Timer(seconds, os._exit, args=(EXIT_STOP_TIMED_OUT,))
    timer.daemon = True
    timer.start()
