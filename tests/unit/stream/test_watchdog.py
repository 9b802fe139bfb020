"""The worker's stall watchdog: when it fires, and that the in-place restart keeps the pid and the command."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from streamrec.settings import Settings
from streamrec.stream.watchdog import RESTARTS_ENV, LagReader, StallWatchdog


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


def test_no_reading_pauses_the_clock_without_clearing_it():
    """A broker that does not answer is not the consumer's stall; once it answers, the time lagging before the
    outage still counts, the outage does not."""
    clock = Clock()
    w = StallWatchdog(60.0, busy=lambda: False, clock=clock)
    clock.t = 30.0
    assert not w.stalled(lagging=True)  # 30 s lagging
    for t in range(35, 500, 5):
        clock.t = float(t)
        assert not w.stalled(lagging=None)  # a long outage: no reading
    clock.t = 500.0
    assert not w.stalled(lagging=True)  # 30 + 5 s
    clock.t = 520.0
    assert not w.stalled(lagging=True)  # 55 s
    clock.t = 526.0
    assert w.stalled(lagging=True)  # 61 s of readings with records waiting and no batch


def test_a_batch_between_readings_clears_the_time_already_waited():
    clock = Clock()
    w = StallWatchdog(60.0, busy=lambda: False, clock=clock)
    clock.t = 50.0
    assert not w.stalled(lagging=True)
    clock.t = 55.0
    w.progressed()
    clock.t = 100.0
    assert not w.stalled(lagging=True)  # 45 s since the batch, not 100
    clock.t = 116.0
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


def test_no_lag_reading_without_a_broker_and_fresh_clients_after():
    """A broker that does not answer gives no reading (the watchdog's clock pauses), not "nothing waits"; the
    failed clients are dropped, since after a broker restart a client can miss partitions for minutes."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reader = LagReader(Settings.from_env({}).replace(kafka_bootstrap=f"127.0.0.1:{port}"), "g", "events")
    try:
        assert reader.read({0}, {0: 5}) is None
        assert reader._watermarks is None and reader._offsets is None
        assert reader.read(set(), {}) is None  # owning nothing: the group's positions cannot be read either
    finally:
        reader.close()


def test_a_consumer_that_cannot_close_does_not_hold_its_replacement(caplog):
    """The stalled client may never answer, even to leave its group: the loop goes on with the new one."""
    import threading

    from prometheus_client import CollectorRegistry, Counter

    from streamrec.stream.watchdog import ConsumerWatch

    class Stuck:
        released = threading.Event()

        def close(self):
            self.released.wait(10)

    renewals = Counter("renewals", "test", registry=CollectorRegistry())
    watch = ConsumerWatch(lag=None, stall_s=30, owned=set, positions=dict, renewals=renewals, setting="X")
    watch.CLOSE_WAIT_S = 0.2
    watch.wanted.set()
    new = object()
    try:
        assert watch.renew(Stuck(), lambda: new) is new
    finally:
        Stuck.released.set()
    assert renewals._value.get() == 1 and not watch.wanted.is_set()
    assert "did not close" in caplog.text
