"""A stalled consumer is replaced, or its process restarts itself in place.

faust-streaming's consumer can stop fetching for good after a broker outage:
it finds the group coordinator again but never rejoins or fetches, while its
timers keep running (RELIABILITY.md faults 7 and 10; upstream
faust-streaming/faust#523, #175); librdkafka's can leave its group and never
rejoin (fault 9). Nothing inside the consumer can be trusted to recover it, so
each service watches its own progress from a thread of its own (`ConsumerWatch`,
never on the consumer's loop, which is what may be stuck), with Kafka clients of
its own (`LagReader`). The faust worker then re-executes itself: the restart
keeps the pid (a supervisor, Kubernetes or the local scripts see one process
that went unready for a moment) and is safe for the same reason a crash is:
what was not acknowledged is read again, and the output ledger skips what was
already answered. The scorer and the confluent engine replace their consumer.

>>> clock = iter([0.0, 30.0, 61.0, 62.0]).__next__
>>> w = StallWatchdog(60.0, busy=lambda: False, clock=clock)   # t=0: starts watching
>>> w.stall(lagging=True), w.stall(lagging=True)              # t=30, t=61: 61 s lagging, no batch
(None, 'records waited 61 s and no batch started')
>>> w.stall(lagging=False) is None                             # nothing waiting: not a stall
True

Three states are stalls, each once it lasts longer than its limit:

- records wait and no batch starts (``stall_s``);
- no lag reading at all (``stall_s``): a broker that does not answer pauses the first clock, but a reading
  that never comes back while the broker answers fresh clients is the watch itself going blind;
- a batch in hand for longer than a batch can take (``2 * stall_s``): it waits on something that will
  never answer.

A stall is acted on only while the servers answer a fresh client (`ConsumerWatch`): during an outage a
restart would only fail its start-up checks, and the outage is not the consumer's fault; after one, every
clock starts again.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable

log = logging.getLogger(__name__)
RESTARTS_ENV = "_STREAMREC_WORKER_STALL_RESTARTS"
"""How many in-place restarts came before this process (carried over the exec, for the metric). Not a
STREAMREC_ setting: the settings refuse names they do not know."""


class StallWatchdog:
    """Says when a consumer has made no progress for too long while something should have moved it (above)."""

    def __init__(self, stall_s: float, busy: Callable[[], bool], clock: Callable[[], float] = time.monotonic):
        self.stall_s = stall_s
        self.batch_stuck_s = 2 * stall_s
        """A batch in hand this long waits on something that will not answer."""
        self.busy = busy
        self.clock = clock
        self.last_progress = self.last_reading = clock()
        self.waited = 0.0
        """Seconds of readings with records waiting and no batch, since the last progress."""
        self.blind = 0.0
        """Seconds without a reading, since the last reading or progress."""

    def progressed(self) -> None:
        """A batch started (or partitions were assigned, or an outage ended): every clock starts again."""
        self.last_progress = self.clock()
        self.waited = self.blind = 0.0

    def stall(self, lagging: bool | None) -> str | None:
        """Called every few seconds with whether records wait for this consumer (None: no reading); returns why
        the consumer counts as stalled, or None."""
        now = self.clock()
        since = now - max(self.last_reading, self.last_progress)
        if self.last_progress > self.last_reading:
            self.waited = self.blind = 0.0  # a batch started since the last reading
        self.last_reading = now
        if self.stall_s <= 0:
            return None
        if self.busy():
            # A slow Redis or broker is not a stalled consumer, up to the time no batch can take.
            self.waited = self.blind = 0.0
            in_hand = now - self.last_progress
            return f"a batch has been in hand for {in_hand:.0f} s" if in_hand > self.batch_stuck_s else None
        if lagging is False:
            self.waited = self.blind = 0.0
            return None
        if lagging is None:
            self.blind += since
            return f"no lag reading for {self.blind:.0f} s" if self.blind > self.stall_s else None
        self.blind = 0.0
        self.waited += since
        return f"records waited {self.waited:.0f} s and no batch started" if self.waited > self.stall_s else None


class LagReader:
    """Reads whether records wait for one member of a consumer group, with Kafka clients of its own (never the
    member's: a stalled client is what it looks for). Records wait on a partition the member owns when its
    high watermark is past the member's position; owning none, on a partition whose group position no member
    moved since the last reading (a member left without partitions by a broker outage, which never rejoins,
    sees the whole group stand still)."""

    def __init__(self, settings, group_id: str, topic: str, gauge=None):
        self.settings = settings
        self.group_id = group_id
        self.topic = topic
        self.gauge = gauge
        """A Gauge labelled by partition: the lag of each owned partition."""
        self._gauged: set[int] = set()
        self._group_positions: dict[int, int] = {}  # at the last reading that owned nothing
        self._watermarks = self._offsets = None  # the clients, made when first needed
        # A client closed by one thread while another reads through it would crash librdkafka: one at a time.
        self._lock = threading.RLock()

    def read(self, owned: set[int], positions: dict[int, int]) -> bool | None:
        """``positions``: the next offset to process of partitions this member has processed (the others count
        from the group's commit). True: records wait; None: the broker gave no reading."""
        with self._lock:
            return self._read(owned, positions)

    def _read(self, owned: set[int], positions: dict[int, int]) -> bool | None:
        from confluent_kafka import TopicPartition

        for gone in self._gauged - owned:  # another member's lag now: not this one's to report
            self.gauge.remove(str(gone))  # only gauged ones are in the set
        self._gauged &= owned
        if not owned:
            return self._group_stands_still()
        self._group_positions = {}
        positions = {p: o for p, o in positions.items() if p in owned}
        if owned - positions.keys():
            positions.update(self.committed(owned - positions.keys()) or {})
        lagging, unknown = False, bool(owned - positions.keys())
        for partition, position in positions.items():
            high = self._high(TopicPartition(self.topic, partition))
            if high is None:
                unknown = True
                break
            lag = max(0, high - position)
            if self.gauge is not None:
                self.gauge.labels(str(partition)).set(lag)
                self._gauged.add(partition)
            lagging = lagging or lag > 0
        return True if lagging else None if unknown else False

    def _group_stands_still(self) -> bool | None:
        from confluent_kafka import TopicPartition

        try:
            count = len(self._watermark_client().list_topics(self.topic, timeout=5).topics[self.topic].partitions)
        except Exception:  # noqa: BLE001 - no reading this time
            self.close()
            return None
        committed = self.committed(set(range(count)))
        if committed is None:
            return None
        highs = {p: self._high(TopicPartition(self.topic, p)) for p in committed}
        before, self._group_positions = self._group_positions, committed
        if None in highs.values():
            return None
        return any(highs[p] > at and before.get(p) == at for p, at in committed.items())

    def committed(self, partitions: set[int]) -> dict[int, int] | None:
        """The group's committed positions of these partitions (0 where none); None when the broker gave none."""
        from confluent_kafka import Consumer, TopicPartition

        from streamrec.stream.topics import kafka_security

        if self._offsets is None:
            # A consumer of the member's group that never subscribes, so never joins: it only reads the
            # group's commits. (Not the admin client's ListConsumerGroupOffsets: librdkafka 2.16 crashes
            # the process when that request meets a coordinator that moved, as after a broker restart.)
            self._offsets = Consumer({"bootstrap.servers": self.settings.kafka_bootstrap, "group.id": self.group_id,
                                      "enable.auto.commit": False, **kafka_security(self.settings)})
        try:
            got = self._offsets.committed([TopicPartition(self.topic, p) for p in sorted(partitions)], timeout=5)
        except Exception:  # noqa: BLE001 - no reading this time
            self.close()
            return None
        if any(tp.error for tp in got):
            # A group client can stay stuck on a coordinator that moved (librdkafka#3396): next time, a fresh one.
            self.close()
            return None
        return {tp.partition: max(tp.offset, 0) for tp in got}

    def broker_answers(self) -> bool:
        """Whether the brokers give a brand-new client the topic's metadata now (the reading's own clients may
        be the ones stuck)."""
        from confluent_kafka.admin import AdminClient

        from streamrec.stream.topics import kafka_security

        client = AdminClient({"bootstrap.servers": self.settings.kafka_bootstrap, **kafka_security(self.settings)})
        try:
            topic = client.list_topics(self.topic, timeout=10).topics.get(self.topic)
            return topic is not None and topic.error is None and bool(topic.partitions)
        except Exception:  # noqa: BLE001 - no answer
            return False

    def _watermark_client(self):
        if self._watermarks is None:
            from streamrec.stream.ledger import OutputLedger
            self._watermarks = OutputLedger(self.settings)  # its consumer joins no group
        return self._watermarks.consumer

    def _high(self, tp) -> int | None:
        try:
            return self._watermark_client().get_watermark_offsets(tp, timeout=2, cached=False)[1]
        except Exception:  # noqa: BLE001 - a lag reading is not worth failing over
            self.close()
            return None

    def fresh(self) -> "LagReader":
        """A reader like this one with clients of its own (this one's may be stuck inside a call)."""
        reader = LagReader(self.settings, self.group_id, self.topic, self.gauge)
        reader._gauged = set(self._gauged)
        return reader

    def close(self) -> None:
        """At exit, and when a reading failed: after a broker restart a client can lose a partition from its
        metadata for minutes ("Unknown partition"), so the next reading starts with fresh clients and a
        stalled consumer is still seen."""
        with self._lock:
            clients, self._watermarks, self._offsets = (self._watermarks, self._offsets), None, None
            for client in clients:
                if client is not None:
                    try:
                        client.close()
                    except Exception:  # noqa: BLE001 - closing a broken client
                        pass


class ConsumerWatch:
    """The stall watch of a service's group consumer, in a thread of its own: never on the consumer's loop, which
    is what may be stuck. Every few seconds it reads the lag (`LagReader`, which also sets the lag gauges; a
    reading that does not return within ``READ_DEADLINE_S`` counts as none, and the next one starts with fresh
    clients) and asks `StallWatchdog`. On a stall, while the servers answer fresh clients (``servers_answer``:
    the broker, and whatever else the service needs), it calls ``on_stall(reason)``; by default that sets
    ``wanted``, and the loop that polls the consumer swaps in a fresh one with `renew` (the scorer, the worker's
    confluent engine). The faust worker restarts its process instead."""

    INTERVAL_S = 5.0
    READ_DEADLINE_S = 30.0
    CLOSE_WAIT_S = 30.0

    def __init__(self, lag: LagReader, stall_s: float, owned: Callable[[], set[int]],
                 positions: Callable[[], dict[int, int]], renewals, setting: str,
                 busy: Callable[[], bool] | None = None, on_stall: Callable[[str], None] | None = None,
                 servers_answer: Callable[[], bool] | None = None):
        self.lag = lag
        self.watchdog = StallWatchdog(stall_s, busy=busy or (lambda: self.in_batch))
        self.owned = owned
        self.positions = positions
        """The next offset to process of the partitions processed so far."""
        self.renewals = renewals
        """A Counter: consumers replaced."""
        self.setting = setting
        self.on_stall = on_stall or self._replace_or_restart
        self.servers_answer = servers_answer or (lambda: self.lag.broker_answers())
        self.in_batch = False
        self.wanted = threading.Event()
        self.stopping = threading.Event()
        """Set when the service stops: a batch that waits out its shutdown is no stall to act on."""

    def start(self, stopping: threading.Event) -> None:
        self.stopping = stopping
        threading.Thread(target=self._run, name="consumer-watch", daemon=True).start()

    def _run(self) -> None:
        while not self.stopping.wait(self.INTERVAL_S):
            if not self.wanted.is_set():
                self.check()

    def check(self) -> str | None:
        """One look: read the lag, and act on a stall; returns the stall's reason, if acted on."""
        owned = self.owned()
        reason = self.watchdog.stall(self._read(owned))
        if reason is None:
            return None
        if not self.servers_answer():
            # An outage: once the servers are back the consumer gets the full stall time again (a batch that
            # waited for them through it finishes then, and need not be restarted).
            log.warning("%s, but the servers do not answer a fresh client either: waiting for them", reason)
            self.watchdog.progressed()
            return None
        if self.stopping.is_set():
            return None  # a restart now would swallow the SIGTERM being handled
        where = f"partitions {sorted(owned)}" if owned else "partitions no member takes"
        reason = f"{reason} on {where} ({self.setting}={self.watchdog.stall_s:g}): the Kafka consumer stalled"
        log.error("%s", reason)
        self.on_stall(reason)
        return reason

    def _replace_or_restart(self, reason: str) -> None:
        """A consumer that does not fetch is replaced by the loop that polls it; but a batch stuck in hand holds
        that loop, so only a restart of the process frees it (as safe as a crash: nothing of it was committed)."""
        if self.watchdog.busy():
            restart_in_place(reason)
        self.wanted.set()

    def _read(self, owned: set[int]) -> bool | None:
        """The lag reading, or None when it fails or does not return in time (a client stuck in librdkafka)."""
        got: list[bool | None] = [None]

        def read() -> None:
            try:
                got[0] = self.lag.read(owned, self.positions())
            except Exception:  # noqa: BLE001 - the watch must outlive any surprise of its own
                log.exception("lag reading failed")

        reading = threading.Thread(target=read, name="lag-reading", daemon=True)
        reading.start()
        reading.join(self.READ_DEADLINE_S)
        if reading.is_alive():
            log.warning("the lag reading did not return in %g s; the next one uses fresh clients",
                        self.READ_DEADLINE_S)
            self.lag = self.lag.fresh()  # the stuck thread keeps the old clients (and their lock)
            return None
        return got[0]

    @contextmanager
    def batch(self):
        """Around each batch: progress, and a batch in hand (a slow Redis or broker) is no stall."""
        self.watchdog.progressed()
        self.in_batch = True
        try:
            yield
        finally:
            self.in_batch = False

    def assigned(self) -> None:
        self.watchdog.progressed()  # a new assignment gets the full stall time to start fetching

    def renew(self, old, new: Callable[[], object]):
        """Close the stalled consumer (in a thread: it may never answer) and return ``new()``. Nothing is
        committed first: the next owner of each partition reads the outputs' tail and skips what is answered."""
        closing = threading.Thread(target=old.close, name="consumer-close", daemon=True)
        closing.start()  # leaves the group, so the new consumer gets the partitions at once...
        closing.join(self.CLOSE_WAIT_S)  # ...unless the stalled client cannot even do that
        if closing.is_alive():
            log.warning("the stalled consumer did not close in %g s; going on without it", self.CLOSE_WAIT_S)
        consumer = new()
        self.watchdog.progressed()
        self.renewals.inc()
        self.wanted.clear()
        return consumer


def restarts_so_far() -> int:
    try:
        return int(os.environ.get(RESTARTS_ENV, "0"))
    except ValueError:
        return 0


def restart_in_place(reason: str) -> None:
    """Replace this process with a fresh run of the same command line (same pid); does not return."""
    count = restarts_so_far() + 1
    log.error("%s; restarting the process in place (restart %d since it was started); its threads were:",
              reason, count)
    for handler in logging.getLogger().handlers:
        handler.flush()
    faulthandler.dump_traceback(all_threads=True)  # what the stall looked like from inside, for the post-mortem
    sys.stdout.flush()
    sys.stderr.flush()
    env = {**os.environ, RESTARTS_ENV: str(count)}
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
