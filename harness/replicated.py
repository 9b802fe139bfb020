"""Fault cases on the replicated topology: `streamrec bench faults --topology replicated` and the suite's
cheapest of them in `make test` run these.

The stack is `streamrec up --replicated` on ports and a folder of the suite's own: three KRaft brokers (each
also a controller; topics with three replicas and min.insync.replicas=2) and a Redis primary with one replica
and three Sentinels. The services reach it as a user's would: the three brokers, Redis through the Sentinels,
the worker waiting (WAIT) for the replica before it commits. Each case runs the worker and the scorer under
the steady stream of `streamrec.harness.faults` and is audited the same way, from Kafka and Redis alone.

Cases (`REPLICATED_CASES`): kill -9 of the broker that leads most partitions of `events`, and of the active
controller (the KRaft quorum's leader), each restarted after 10 s; that broker frozen (SIGSTOP) for 15 s,
longer than the controller's 9-s broker session, then resumed; a rolling restart of the three brokers, each
stopped and started once the previous one's replicas are back in sync; kill -9 of the Redis primary, the
Sentinels promoting the replica, the old primary restarted as the new one's replica. And the single-node
suite's learner-kill, on this topology.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from streamrec import security
from streamrec.harness.faults import (FaultStack, Run, _broker_outcome, _pipeline_case, consecutive_free_ports,
                                      run_learner_case)
from streamrec.settings import Settings
from streamrec.stream import topics

BROKER_DOWN_S = 10.0
FREEZE_S = 15.0


class ReplicatedFaultStack(FaultStack):
    """The replicated topology on ports and a folder of its own; `settings` reach it through every broker and
    the Sentinels."""

    def __init__(self, home: Path, base: Settings | None = None):
        from streamrec.deploy.localstack import LocalStack

        super().__init__(home, base)
        kafka, redis = consecutive_free_ports(6), consecutive_free_ports(5)
        own = self.settings.replace(kafka_port=kafka, kafka_controller_port=kafka + 1, redis_port=redis,
                                    redis_replica_port=redis + 1, redis_sentinel_port=redis + 2,
                                    redis_url=f"redis://127.0.0.1:{redis}/0", kafka_heap="256m")
        self.stack = LocalStack(own)
        self.settings = self.stack.replicated_settings()

    def up(self) -> None:
        self.stack.up(replicated=True, timeout=180, log=lambda m: None)

    def busiest_broker(self, s: Settings) -> str:
        """The broker that leads most partitions of `events` under `s`'s prefix."""
        name = s.topic(topics.EVENTS)
        meta = topics.admin_client(s).list_topics(name, timeout=10).topics[name]
        leaders = [p.leader for p in meta.partitions.values()]
        return f"kafka-{max(set(leaders), key=leaders.count)}"

    def redis_primary(self, s: Settings) -> str | None:
        """"redis" or "redis-replica": whichever the Sentinels name the primary now; None while they hold it
        down and have promoted no other yet."""
        from redis.sentinel import MasterNotFoundError

        client = security.redis_client(s)
        try:
            port = int(client.connection_pool.get_master_address()[1])
        except MasterNotFoundError:
            return None
        finally:
            client.close()
        return next(n for n in ("redis", "redis-replica") if self.stack.services[n].port == port)

    def fully_replicated(self, s: Settings) -> bool:
        """Every partition of the pipeline's topics has its three replicas in sync."""
        names = [s.topic(t) for t in (topics.EVENTS, topics.SCORE_REQUESTS, topics.RECOMMENDATIONS)]
        meta = topics.admin_client(s).list_topics(timeout=10).topics
        return all(len(p.isrs) == 3 for n in names for p in meta[n].partitions.values())


def _broker_kill(pick):
    def inject(run: Run) -> dict:
        name = pick(run)
        t = run.now()
        run.stack.kill(name)
        time.sleep(BROKER_DOWN_S)
        run.stack.start(name)
        outcome = _broker_outcome(run, t)
        outcome["details"] = {"broker": name}
        return outcome
    return inject


def _leader(run: Run) -> str:
    return run.stack.busiest_broker(run.settings)


def _controller(run: Run) -> str:
    return f"kafka-{run.stack.stack.quorum_leader()}"


def _broker_freeze(run: Run) -> dict:
    name = _leader(run)
    t = run.now()
    run.stack.freeze(name)
    time.sleep(FREEZE_S)
    run.stack.freeze(name, frozen=False)
    outcome = _broker_outcome(run, t)
    outcome["details"] = {"broker": name}
    return outcome


def _rolling_restart(run: Run) -> dict:
    t = run.now()
    for n in (1, 2, 3):
        run.stack.stop(f"kafka-{n}")
        run.stack.start(f"kafka-{n}")
        deadline = time.monotonic() + 180
        while not run.stack.fully_replicated(run.settings):
            if time.monotonic() > deadline:
                raise RuntimeError(f"kafka-{n}'s replicas did not catch up within 180 s")
            time.sleep(0.5)
    return _broker_outcome(run, t)


def _redis_primary_kill(run: Run) -> dict:
    """kill -9 of the primary; the worker must have WAITed for the replica before, and the Sentinels must
    promote it. The old primary then comes back as the new one's replica, ready for the next case."""
    name = run.stack.redis_primary(run.settings)
    primary = security.redis_client(run.settings)
    waited = primary.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
    primary.close()
    t = run.now()
    run.stack.kill(name)
    deadline = time.monotonic() + 60
    while run.stack.redis_primary(run.settings) in (name, None) and time.monotonic() < deadline:
        time.sleep(0.2)
    promoted = run.stack.redis_primary(run.settings) not in (name, None)
    back = run.now()
    run.stack.start(name)
    rejoined = _wait_replica(run.stack.stack.services[name].port, deadline=time.monotonic() + 60)
    return {"down": back - t, "back": back,
            "checks": {"the worker WAITed for the replica before the kill": waited > 0,
                       "the Sentinels promoted the replica": promoted,
                       "the old primary rejoined as a replica": rejoined,
                       "worker alive": run.services["worker"].proc.poll() is None,
                       "scorer alive": run.services["scorer"].proc.poll() is None},
            "details": {"killed": name}}


def _wait_replica(port: int, deadline: float) -> bool:
    import redis

    client = redis.Redis(port=port, socket_timeout=2)
    try:
        while time.monotonic() < deadline:
            try:
                if client.info("replication")["role"] == "slave":
                    return True
            except redis.RedisError:
                pass
            time.sleep(0.5)
        return False
    finally:
        client.close()


REPLICATED_CASES = {
    "leader-kill": ("the broker leading most partitions of `events` kill -9, down 10 s, restarted",
                    _broker_kill(_leader)),
    "controller-kill": ("the active controller (the KRaft quorum's leader) kill -9, down 10 s, restarted",
                        _broker_kill(_controller)),
    "broker-freeze": ("the busiest broker frozen (SIGSTOP) for 15 s, resumed", _broker_freeze),
    "rolling-restart": ("the three brokers stopped and started in turn, each once the replicas are in sync",
                        _rolling_restart),
    "redis-primary-kill": ("the Redis primary kill -9; the Sentinels promote the replica", _redis_primary_kill),
}
MAKE_TEST_CASES = ("redis-primary-kill",)
"""In `make test`: the case of the replicated stack's own code (Sentinel-aware clients, the worker's WAIT), and
its cheapest (60 s). `streamrec bench faults --topology replicated` runs them all; the Kafka cases add about 90
s each to a suite that is already past its 10 minutes."""


CASES = (*REPLICATED_CASES, "learner-kill")
"""With the single-node suite's learner-kill: the online trainer's reward counts through Kafka and Redis
reached as a user's would reach a replicated deployment."""


def run_replicated_case(stack: ReplicatedFaultStack, case: str, events: int, rate: float, workdir: Path):
    if case == "learner-kill":
        return run_learner_case(stack, case, events, rate, workdir)
    fault, inject = REPLICATED_CASES[case]
    return _pipeline_case(stack, case, fault, events, rate, workdir, inject)
