"""The worker's stall watchdog: when it fires, and that the in-place restart keeps the pid and the command."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from streamrec.stream.watchdog import RESTARTS_ENV, StallWatchdog


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_fires_only_after_the_stall_time_lagging_without_a_batch():
    clock, busy = Clock(), [False]
    w = StallWatchdog(60.0, busy=lambda: busy[0], clock=clock)
    clock.t = 59.0
    assert not w.stalled(lagging=True)
    clock.t = 61.0
    assert w.stalled(lagging=True)


def test_a_batch_started_or_in_hand_or_no_lag_resets_the_clock():
    clock, busy = Clock(), [False]
    w = StallWatchdog(60.0, busy=lambda: busy[0], clock=clock)
    clock.t = 50.0
    w.progressed()
    clock.t = 100.0
    assert not w.stalled(lagging=True)  # 50 s since the last batch
    busy[0] = True
    clock.t = 500.0
    assert not w.stalled(lagging=True)  # a batch waiting on Redis is not a stalled consumer
    busy[0] = False
    clock.t = 550.0
    assert not w.stalled(lagging=True)  # the clock restarted at 500
    clock.t = 600.0
    assert not w.stalled(lagging=False)  # caught up
    clock.t = 650.0
    assert not w.stalled(lagging=True)
    clock.t = 661.0
    assert w.stalled(lagging=True)


def test_zero_turns_it_off():
    clock = Clock()
    w = StallWatchdog(0.0, busy=lambda: False, clock=clock)
    clock.t = 1e6
    assert not w.stalled(lagging=True)


def test_restart_in_place_keeps_the_pid_and_the_command_line_and_counts(tmp_path):
    script = tmp_path / "svc.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from streamrec.stream.watchdog import restart_in_place, restarts_so_far
        print(os.getpid(), restarts_so_far(), sys.argv[1:], flush=True)
        if restarts_so_far() < 2:
            restart_in_place("test stall")
    """))
    out = subprocess.run([sys.executable, str(script), "--flag", "x"], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in __import__("os").environ.items() if k != RESTARTS_ENV})
    assert out.returncode == 0, out.stderr
    lines = [line.split(" ", 2) for line in out.stdout.strip().splitlines()]
    assert [n for _, n, _ in lines] == ["0", "1", "2"]
    assert len({pid for pid, _, _ in lines}) == 1  # the same process, re-executed
    assert all(argv == "['--flag', 'x']" for _, _, argv in lines)
    assert out.stderr.count("test stall; restarting the process in place") == 2


def test_docstring_example():
    import doctest

    from streamrec.stream import watchdog

    result = doctest.testmod(watchdog)
    assert result.attempted > 0 and result.failed == 0
