"""The stream worker, the single writer of features: its common service part and the
faust-streaming engine (the default). `streamrec.stream.confluent_worker` is the
same worker on a plain confluent-kafka consumer, for comparison and for users
who want it.

Faust runs two agents: one takes batches from `events` and hands them to
`EventProcessor` (decode, Redis, score requests), one applies `catalog`
records. Batches run in a worker thread so faust keeps fetching meanwhile;
events are acknowledged (and so committed by faust) only after their batch
has been applied and answered. SIGTERM finishes the batch in hand, commits,
and exits 0. A consumer that stops fetching while records wait (faust after a
broker outage) restarts the process in place (`streamrec.stream.watchdog`).

Within a process the events agent runs one instance: batches of a partition
must be applied in offset order (the replay guard relies on it). Scale out
with more processes (``--processes N`` or more replicas), which share the
partitions through the consumer group.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from streamrec.health import HealthServer
from streamrec.runtime import tune_gc
from streamrec.security import check_services, faust_credentials
from streamrec.settings import Settings
from streamrec.stream import topics
from streamrec.stream import worker_metrics as metrics
from streamrec.stream.feature_store import Stopping
from streamrec.stream.features import SourceEvent
from streamrec.stream.processor import CatalogProcessor, EventProcessor
from streamrec.stream.watchdog import ConsumerWatch, LagReader, restart_in_place, restarts_so_far

log = logging.getLogger(__name__)


def check_partitions(settings: Settings) -> None:
    """Outputs go to the partition number of their event: the counts must match."""
    meta = topics.admin_client(settings).list_topics(timeout=15).topics
    names = [settings.topic(t) for t in (topics.EVENTS, topics.SCORE_REQUESTS, topics.EVENTS_DLQ)]
    missing = [n for n in names if n not in meta]
    if missing:
        raise SystemExit(f"topics missing: {', '.join(missing)}; run `streamrec topics create`")
    counts = {n: len(meta[n].partitions) for n in names}
    if len(set(counts.values())) != 1:
        raise SystemExit(f"partition counts differ {counts}; the worker answers each event on the "
                         "partition of the same number, so give these topics equal partitions")


class WorkerService:
    """What every engine shares: processors, HTTP endpoints, lag reporting, start-up checks."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.owned: set[int] = set()
        """Partitions of `events` this process owns now."""
        self.processor = EventProcessor(settings)
        # The stall watch (RELIABILITY.md, faults 7, 9 and 10), with Kafka clients of its own: a stalled client
        # is what it looks for. It acts only while the broker and Redis answer: a restart into an outage helps
        # nothing.
        self.watch = ConsumerWatch(
            LagReader(settings, self.group_id(), settings.topic(topics.EVENTS), gauge=metrics.consumer_lag),
            settings.worker_stall_s, owned=lambda: self.owned,
            positions=lambda: {p: o + 1 for p, o in list(self.processor.last_offsets.items())},
            renewals=metrics.consumer_renewals, setting="STREAMREC_WORKER_STALL_S",
            servers_answer=lambda: self.watch.lag.broker_answers() and self.processor.store.ping(),
            **self.watch_options())
        self.catalog = CatalogProcessor(settings, self.processor.store, self.processor.producer)
        self.http = HealthServer(settings.http_host, settings.worker_port, checks={
            "redis": self.processor.store.ping,
            "consuming": self.consuming,
        }, port_setting="STREAMREC_WORKER_PORT")

    def consuming(self) -> bool:
        raise NotImplementedError

    def watch_options(self) -> dict:
        """How this engine's stall watch sees a batch in hand and acts on a stall (`ConsumerWatch`)."""
        return {}

    def group_id(self) -> str:
        return topics.group_id(self.settings, topics.WORKER_GROUP)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        check_services(self.settings)  # a refused login or certificate stops here, with the setting to fix
        check_partitions(self.settings)
        tune_gc(self.settings.gc_gen0)
        metrics.initialise()
        metrics.stall_restarts.set(restarts_so_far())
        metrics.redis_up.set(1 if self.processor.store.ping() else 0)
        self.http.start()
        log.info("worker: health and metrics on http://%s:%d", self.settings.http_host, self.http.port)
        try:
            return self.consume()
        finally:
            self.http.stop()
            self.watch.lag.close()
            self.processor.close()

    def consume(self) -> int:
        raise NotImplementedError


REVOKE_WAIT_S = 20.0  # a batch stuck on Redis does not hold a rebalance longer than this


class StreamWorker(WorkerService):
    """The faust-streaming engine."""

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apply")
        self.started = threading.Event()
        self._in_flight: asyncio.Future | None = None  # the batch being applied, awaited on revocation
        self.app = self._build_app()

    def watch_options(self) -> dict:
        # Nothing inside faust can be trusted to recover its consumer: the process restarts itself in place.
        return {"busy": self._busy, "on_stall": restart_in_place}

    def consuming(self) -> bool:
        return self.started.is_set() and not self.app.rebalancing

    def _busy(self) -> bool:
        return self._in_flight is not None and not self._in_flight.done()

    def _build_app(self):
        import faust

        s = self.settings
        datadir = s.home_path / "worker-data"
        datadir.mkdir(parents=True, exist_ok=True)
        app = faust.App(
            self.group_id(),
            broker=[f"kafka://{h}" for h in s.kafka_bootstrap.split(",")],
            broker_credentials=faust_credentials(s),  # SASL/TLS, as for the confluent clients
            broker_client_id=self.group_id(),  # the broker's logs and quotas name the app, not "faust-0.x"
            web_enabled=False,
            datadir=str(datadir),
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=1.0,
            # A crashed worker's partitions move after 10 s, not faust's default 60.
            broker_session_timeout=10.0,
            broker_heartbeat_interval=3.0,
            topic_disable_leader=True,
            stream_wait_empty=False,
        )
        raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        events = app.topic(s.topic(topics.EVENTS), **raw)
        catalog = app.topic(s.topic(topics.CATALOG), allow_empty=True, **raw)
        batch_max, within = s.worker_batch_max, s.worker_batch_wait_ms / 1000

        @app.agent(events, name="apply-events")
        async def apply_events(stream):
            self.started.set()
            async for batch in stream.noack_take(batch_max, within=within):
                self.watch.watchdog.progressed()
                await self._run_batch(self.processor.process, batch, stream)

        @app.agent(catalog, name="apply-catalog")
        async def apply_catalog(stream):
            async for batch in stream.noack_take(500, within=0.1):
                await self._run_batch(self.catalog.process, batch, stream)

        events_name = s.topic(topics.EVENTS)

        @app.on_partitions_assigned.connect
        async def assigned(app, assigned, **kwargs):
            mine = {tp.partition for tp in assigned if tp.topic == events_name}
            metrics.assigned_partitions.set(len(mine))
            log.info("events partitions assigned: %s", sorted(mine))
            self.owned = mine
            self.watch.assigned()
            self.processor.partitions_assigned()

        @app.on_partitions_revoked.connect
        async def revoked(app, revoked, **kwargs):
            self.owned = self.owned - {tp.partition for tp in revoked if tp.topic == events_name}
            # The next owner reads the outputs' tail to learn what is answered: the batch in hand
            # must reach the broker before the partitions move, or it would be answered twice.
            batch = self._in_flight
            if batch is not None and not batch.done():
                log.info("partitions revoked: finishing the batch in hand first")
                await asyncio.wait({asyncio.shield(batch)}, timeout=REVOKE_WAIT_S)

        return app

    async def _run_batch(self, fn, batch, stream) -> None:
        records = [SourceEvent(ev.message.topic, ev.message.partition, ev.message.offset, ev.message.key,
                               ev.message.value, int((ev.message.timestamp or time.time()) * 1000))
                   for ev in batch]
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn, records)
        self._in_flight = future
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            # Stopping: let the batch in hand finish (or give up on Redis), then ack what finished.
            try:
                await asyncio.wait_for(asyncio.shield(future), timeout=20)
            except (Stopping, asyncio.TimeoutError, asyncio.CancelledError):
                raise asyncio.CancelledError() from None
            for ev in batch:
                await stream.ack(ev)
            raise
        except Stopping:
            raise asyncio.CancelledError() from None
        for ev in batch:
            await stream.ack(ev)

    def consume(self) -> int:
        import faust

        # The batch thread and faust's loop share the GIL; Python's default 5 ms switch
        # interval made every Redis reply wait for the loop (p50 1.2 s at 2,000 ev/s, 0.1 s after).
        sys.setswitchinterval(0.0005)
        worker = faust.Worker(self.app, loglevel=self.settings.log_level, quiet=True,
                              redirect_stdouts=False, override_logging=False)

        watching = threading.Event()

        def stopping(*_):
            watching.set()
            self.http.stopping = True
            self.processor.store.stop_event.set()

        worker.on_worker_shutdown = stopping  # type: ignore[method-assign]
        worker.spinner = None  # a terminal spinner only garbles service logs
        self.watch.start(watching)  # a thread, not a faust timer: faust's loop is what may be stuck
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            code = exc.code or 0
        else:
            code = 0
        watching.set()
        self.executor.shutdown(wait=True)
        return int(code)


