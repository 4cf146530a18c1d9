"""Child processes that end with their parent: a killed kernel or job leaves no trainer or decoder running."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

__all__ = ["die_with", "usable_cores", "thread_budget"]


def die_with(parent: int) -> Callable[[], None] | None:
    """A function that makes the process calling it get SIGTERM when ``parent`` dies (Linux ``PR_SET_PDEATHSIG``;
    None elsewhere): for ``preexec_fn``, or the first line of a spawned worker. libc's prctl is looked up here,
    so that a fork of a threaded process only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    term = int(signal.SIGTERM)

    def setup() -> None:
        prctl(1, term)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os.kill(os.getpid(), term)
    return setup


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def thread_budget() -> int:
    """Threads this process may use: ``OMP_NUM_THREADS`` (1 in shard processes and parallel batch runs) when set,
    else the usable cores."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return usable_cores()
