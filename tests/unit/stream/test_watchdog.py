"""The worker's stall watchdog: when it fires, and that the in-place restart keeps the pid and the command."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

from streamrec.settings import Settings
from streamrec.stream.watchdog import RESTARTS_ENV, ConsumerWatch, LagReader, StallWatchdog


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_fires_only_after_the_stall_time_lagging_without_a_batch():
    clock, busy = Clock(), [False]
    w = StallWatchdog(60.0, busy=lambda: busy[0], clock=clock)
    clock.t = 59.0
    assert w.stall(lagging=True) is None
    clock.t = 61.0
    assert w.stall(lagging=True) == "records waited 61 s and no batch started"


def test_a_batch_started_or_in_hand_or_no_lag_resets_the_clock():
    clock, busy = Clock(), [False]
    w = StallWatchdog(60.0, busy=lambda: busy[0], clock=clock)
    clock.t = 50.0
    w.progressed()
    clock.t = 100.0
    assert w.stall(lagging=True) is None  # 50 s since the last batch
    busy[0] = True
    w.progressed()
    clock.t = 160.0
    assert w.stall(lagging=True) is None  # a batch waiting on Redis is not a stalled consumer...
    busy[0] = False
    clock.t = 210.0
    assert w.stall(lagging=True) is None  # the clock restarted at 160
    clock.t = 260.0
    assert w.stall(lagging=False) is None  # caught up
    clock.t = 310.0
    assert w.stall(lagging=True) is None
    clock.t = 321.0
    assert w.stall(lagging=True)


def test_a_batch_in_hand_longer_than_a_batch_can_take_is_a_stall():
    """...up to twice the stall time: a batch still in hand then waits on something that will not answer."""
    clock = Clock()
    w = StallWatchdog(60.0, busy=lambda: True, clock=clock)
    w.progressed()  # the batch starts at 0
    for t in range(5, 120, 5):
        clock.t = float(t)
        assert w.stall(lagging=True) is None and w.stall(lagging=None) is None
    clock.t = 121.0
    assert w.stall(lagging=None) == "a batch has been in hand for 121 s"


def test_no_reading_pauses_the_lag_clock_and_runs_its_own():
    """A broker that does not answer is not the consumer's stall: the time lagging before the outage still
    counts, the outage does not. But no reading for longer than the stall time is a stall of its own (the
    watch acts on it only while the servers answer a fresh client: `ConsumerWatch.check`)."""
    clock = Clock()
    w = StallWatchdog(60.0, busy=lambda: False, clock=clock)
    clock.t = 30.0
    assert w.stall(lagging=True) is None  # 30 s lagging
    for t in range(35, 95, 5):
        clock.t = float(t)
        assert w.stall(lagging=None) is None  # no reading for up to 60 s
    clock.t = 100.0
    assert w.stall(lagging=None) == "no lag reading for 70 s"
    clock.t = 105.0
    assert w.stall(lagging=True) is None  # 30 + 5 s
    clock.t = 125.0
    assert w.stall(lagging=True) is None  # 55 s
    clock.t = 131.0
    assert w.stall(lagging=True) == "records waited 61 s and no batch started"


def test_a_batch_between_readings_clears_the_time_already_waited():
    clock = Clock()
    w = StallWatchdog(60.0, busy=lambda: False, clock=clock)
    clock.t = 50.0
    assert w.stall(lagging=True) is None
    clock.t = 55.0
    w.progressed()
    clock.t = 100.0
    assert w.stall(lagging=True) is None  # 45 s since the batch, not 100
    clock.t = 116.0
    assert w.stall(lagging=True)


def test_zero_turns_it_off():
    clock = Clock()
    w = StallWatchdog(0.0, busy=lambda: True, clock=clock)
    clock.t = 1e6
    assert w.stall(lagging=True) is None and w.stall(lagging=None) is None


class Reader:
    """Stands in for `LagReader` where the watch's own logic is under test: readings on demand, or a hang."""

    def __init__(self, reading=None, hang: threading.Event | None = None):
        self.reading, self.hang, self.made = reading, hang, 0

    def read(self, owned, positions):
        if self.hang is not None:
            self.hang.wait(30)
        return self.reading

    def fresh(self):
        self.made += 1
        return Reader(self.reading)


def watch_for(reader, servers_answer, clock, stall_s=60.0, busy=lambda: False):
    from prometheus_client import CollectorRegistry, Counter

    renewals = Counter("renewals", "test", registry=CollectorRegistry())
    acted: list[str] = []
    watch = ConsumerWatch(reader, stall_s, owned=lambda: {0}, positions=dict, renewals=renewals, setting="X",
                          busy=busy, on_stall=acted.append, servers_answer=servers_answer)
    watch.watchdog = StallWatchdog(stall_s, busy=busy, clock=clock)  # on the test's clock
    return watch, acted


def test_the_watch_acts_on_a_stall_only_while_the_servers_answer():
    clock, answering = Clock(), [False]
    watch, acted = watch_for(Reader(reading=True), lambda: answering[0], clock)
    for t in range(5, 200, 5):  # records wait, no batch, and the servers are away: an outage, not a stall
        clock.t = float(t)
        assert watch.check() is None
    answering[0] = True  # back at 200: the consumer gets the full stall time again
    for t in range(200, 260, 5):
        clock.t = float(t)
        assert watch.check() is None
    clock.t = 261.0
    reason = watch.check()
    assert reason and acted == [reason]
    assert "records waited" in reason and "partitions [0]" in reason and "X=60" in reason


def test_a_reading_that_never_returns_counts_as_none_and_the_next_uses_fresh_clients():
    clock, hang = Clock(), threading.Event()
    stuck = Reader(reading=True, hang=hang)
    watch, acted = watch_for(stuck, lambda: True, clock)
    watch.READ_DEADLINE_S = 0.2
    try:
        clock.t = 30.0
        assert watch._read({0}) is None
        assert stuck.made == 1 and watch.lag is not stuck
        for t in range(35, 65, 5):
            clock.t = float(t)
            watch.lag = stuck  # stuck every time
            assert watch.check() is None
        clock.t = 65.0
        watch.lag = stuck
        reason = watch.check()
        assert reason and reason.startswith("no lag reading for 65 s") and acted == [reason]
    finally:
        hang.set()


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
