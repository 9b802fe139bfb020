"""A stalled consumer restarts itself in place.

faust-streaming's consumer can stop fetching for good after a broker outage:
it finds the group coordinator again but never rejoins or fetches, while its
timers keep running (seen here after a 10 s broker stop, RELIABILITY.md fault 7;
upstream faust-streaming/faust#523, #175). Nothing inside the process can be
trusted to recover it, so the worker watches its own progress: when it owns
partitions with records waiting, has no batch in hand, and has started no
batch for ``STREAMREC_WORKER_STALL_S`` seconds, it re-executes itself. The
restart keeps the pid (a supervisor, Kubernetes or the local scripts see one
process that went unready for a moment) and is safe for the same reason a
crash is: what was not acknowledged is read again, and the output ledger
skips what was already answered.

>>> clock = iter([0.0, 30.0, 61.0, 62.0]).__next__
>>> w = StallWatchdog(60.0, busy=lambda: False, clock=clock)   # t=0: starts watching
>>> w.stalled(lagging=True), w.stalled(lagging=True)          # t=30, t=61: 61 s lagging, no batch
(False, True)
>>> w.stalled(lagging=False)                                   # nothing waiting: not a stall
False
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable

log = logging.getLogger(__name__)
RESTARTS_ENV = "_STREAMREC_WORKER_STALL_RESTARTS"
"""How many in-place restarts came before this process (carried over the exec, for the metric). Not a
STREAMREC_ setting: the settings refuse names they do not know."""


class StallWatchdog:
    """Says when a consumer that has work waiting has made no progress for ``stall_s`` seconds."""

    def __init__(self, stall_s: float, busy: Callable[[], bool], clock: Callable[[], float] = time.monotonic):
        self.stall_s = stall_s
        self.busy = busy
        self.clock = clock
        self.last_progress = clock()

    def progressed(self) -> None:
        """A batch started."""
        self.last_progress = self.clock()

    def stalled(self, lagging: bool) -> bool:
        """Called every few seconds with whether an owned partition has records not yet processed."""
        now = self.clock()
        if self.stall_s <= 0:
            return False
        if not lagging or self.busy():
            # Caught up, or a batch in hand (a slow Redis is not a stalled consumer): the clock restarts.
            self.last_progress = now
            return False
        return now - self.last_progress > self.stall_s


def restarts_so_far() -> int:
    try:
        return int(os.environ.get(RESTARTS_ENV, "0"))
    except ValueError:
        return 0


def restart_in_place(reason: str) -> None:
    """Replace this process with a fresh run of the same command line (same pid); does not return."""
    count = restarts_so_far() + 1
    log.error("%s; restarting the process in place (restart %d since it was started)", reason, count)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    env = {**os.environ, RESTARTS_ENV: str(count)}
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
