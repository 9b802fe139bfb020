"""The online feature store: applies planned batches to Redis, and reads features back.

An interface with a Redis implementation (as Feast does), so the feature logic
in `streamrec.stream.features` never touches a client. Writes go in pipelined
round trips: one for the user phase of a whole batch, one for the item and
trending phase. Redis being away is retried with backoff, never skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from importlib import resources
from typing import Callable

import redis

from streamrec import security
from streamrec.settings import Settings
from streamrec.stream import features
from streamrec.stream.features import DecodedEvent, Outcome
from streamrec.stream.keys import FeatureConfig, Keys

log = logging.getLogger(__name__)
RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


# Entry points. Per slot (Redis Cluster): one call per user / item / trending, keys
# declared. Batched (standalone Redis): one call per chunk of a phase, which spares
# a client round-trip share and a script start per event.
ENTRIES = {
    "user": "return cjson.encode(apply_user(KEYS[1], cjson.decode(ARGV[1])))",
    "item": "return apply_item(KEYS[1], cjson.decode(ARGV[1]))",
    "trending": "return apply_trending(KEYS[1], cjson.decode(ARGV[1]))",
    "user_batch": """local res = {}
for i, g in ipairs(cjson.decode(ARGV[1])) do res[i] = apply_user(g[1], g[2]) end
return cjson.encode(res)""",
    "item_batch": """local n = 0
for _, g in ipairs(cjson.decode(ARGV[1])) do
  if g[1] == 'trending' then n = n + apply_trending(g[2], g[3]) else n = n + apply_item(g[2], g[3]) end
end
return n""",
}
LIBRARY = ("common", "user", "item", "trending")
CHUNK = 200  # groups per batched call: bounds how long one script holds Redis


def _script(entry: str, cfg: dict) -> str:
    """Script source: the constants (as a Lua table), the shared functions, then the entry point."""
    lua = resources.files("streamrec.stream").joinpath("lua")
    parts = [f"local cfg = {features.lua_literal(cfg)}"]
    parts += [lua.joinpath(f"{name}.lua").read_text() for name in LIBRARY]
    return "\n".join(parts + [ENTRIES[entry]])


def redis_client(settings: Settings):
    """A Redis client for the settings: a cluster-aware one when STREAMREC_REDIS_CLUSTER is on,
    with the ACL user and TLS CA of the settings (`streamrec.security`)."""
    return security.redis_client(settings, socket_timeout=5, socket_connect_timeout=2)


class Stopping(Exception):
    """Raised out of a retry loop when the service is asked to stop."""


class RedisFeatureStore:
    """Redis implementation of the feature store (one client, lazily connected)."""

    def __init__(self, settings: Settings, config: FeatureConfig | None = None,
                 on_health: Callable[[bool], None] | None = None):
        self.settings = settings
        self.keys = Keys(settings.redis_prefix)
        self.config = config or FeatureConfig()
        cfg = features.script_config(self.config)
        self.client = redis_client(settings)
        self.per_slot = settings.redis_cluster
        self._scripts = {name: _script(name, cfg) for name in ENTRIES}
        self._sha = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in self._scripts.items()}
        self._on_health = on_health or (lambda ok: None)
        self.stop_event = threading.Event()
        self._categories: dict[str, tuple[float, str]] = {}
        self.category_ttl_s = 60.0
        self._replica_check = (0.0, 0)  # (when, replicas connected) for STREAMREC_REDIS_WAIT_REPLICAS=-1

    # ------------------------------------------------------------------ writes
    def apply(self, batch: list[DecodedEvent]) -> list[Outcome]:
        """Apply a batch (both phases); returns the user-phase outcome of each event."""
        if not batch:
            return []
        self._fill_categories(batch)
        calls = features.user_calls(batch, self.keys)
        outcomes: list[Outcome | None] = [None] * len(batch)
        if self.per_slot:
            results = self._run_many([("user", [(key, arg) for key, arg, _ in calls])])
        else:
            chunks = [calls[k:k + CHUNK] for k in range(0, len(calls), CHUNK)]
            results = [r for raw in self._run_many([("user_batch", [
                ("", "[" + ",".join(f"[{json.dumps(key)},{arg}]" for key, arg, _ in chunk) + "]")
                for chunk in chunks])]) for r in json.loads(raw)]
        for (_, _, idx), raw in zip(calls, results):
            for i, outcome in zip(idx, features.parse_user_result(raw)):
                outcomes[i] = outcome
        item_calls = features.item_calls(batch, outcomes, self.keys)
        if self.per_slot:
            trending = [c for c in item_calls if c[0] == self.keys.trending_base]
            items = [c for c in item_calls if c[0] != self.keys.trending_base]
            self._run_many([("item", items), ("trending", trending)])
        else:
            def group(key: str, arg: str) -> str:
                kind = "trending" if key == self.keys.trending_base else "item"
                return f"[{json.dumps(kind)},{json.dumps(key)},{arg}]"
            self._run_many([("item_batch", [
                ("", "[" + ",".join(group(k, a) for k, a in item_calls[c:c + CHUNK]) + "]")
                for c in range(0, len(item_calls), CHUNK)])])
        return outcomes  # type: ignore[return-value]

    def _run_many(self, groups: list[tuple[str, list[tuple[str, str]]]]) -> list:
        """EVALSHA every call in one pipelined round trip; retry the whole round on failure.

        Retrying is safe: every script is idempotent (event markers, offset guards).
        """
        while True:
            commands = [(self._sha[script], key, arg) for script, calls in groups for key, arg in calls]
            wait = self._replicas_to_wait_for()
            results = self._with_retry(lambda: self._evalsha_all(commands, wait))
            if wait:
                confirmed = results.pop()
                if not isinstance(confirmed, int) or confirmed < wait:
                    self._replicas_short(confirmed, wait)
                    continue  # run the round again (idempotent) rather than commit writes a failover may lose
            if any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
                self._with_retry(self._load_scripts)  # Redis restarted or flushed its script cache
                continue
            if self.per_slot and any(isinstance(r, redis.ResponseError) and str(r).startswith(("MOVED", "ASK"))
                                     for r in results):
                self.client.nodes_manager.initialize()  # slots moved: learn the new layout, retry
                continue
            errors = [r for r in results if isinstance(r, Exception)]
            if errors:  # a script error is a bug, not an outage: fail loudly
                raise errors[0]
            return results

    def _evalsha_all(self, commands: list[tuple[str, str, str]], wait: int = 0) -> list:
        """Run EVALSHA commands pipelined, then WAIT for `wait` replicas on the same connection (WAIT counts only
        the connection's own writes); on a cluster, one pipeline per node owning the keys (redis-py does not
        pipeline scripts across a cluster itself)."""
        if not self.per_slot:
            pipe = self.client.pipeline(transaction=False)
            for sha, key, arg in commands:
                if key:
                    pipe.evalsha(sha, 1, key, arg)
                else:  # a batched call on a standalone server: keys are in the argument
                    pipe.evalsha(sha, 0, arg)
            if wait:
                pipe.execute_command("WAIT", wait, self.settings.redis_wait_timeout_ms)
            return pipe.execute(raise_on_error=False)
        by_node: dict[str, tuple[object, list[int]]] = {}
        for i, (_, key, _) in enumerate(commands):
            node = self.client.get_node_from_key(key)
            by_node.setdefault(node.name, (node, []))[1].append(i)
        results: list = [None] * len(commands)
        for node, idx in by_node.values():
            pipe = node.redis_connection.pipeline(transaction=False)
            for i in idx:
                sha, key, arg = commands[i]
                pipe.evalsha(sha, 1, key, arg)
            for i, r in zip(idx, pipe.execute(raise_on_error=False)):
                results[i] = r
        return results

    def _replicas_to_wait_for(self) -> int:
        """STREAMREC_REDIS_WAIT_REPLICAS, or with -1 one if the primary has a replica connected (asked every 10 s,
        so a replica that joins or leaves is followed). Redis Cluster: none (its shards fail over on their own;
        not covered)."""
        wanted = self.settings.redis_wait_replicas
        if self.per_slot or wanted == 0:
            return 0
        if wanted > 0:
            return wanted
        when, connected = self._replica_check
        if time.monotonic() - when > 10.0:
            info = self._with_retry(lambda: self.client.info("replication"))
            connected = int(info.get("connected_slaves", 0))
            self._replica_check = (time.monotonic(), connected)
        return min(connected, 1)

    def _replicas_short(self, confirmed, wanted: int) -> None:
        log.warning("Redis WAIT: %s of %d replica(s) confirmed the batch's writes within %d ms; running it again",
                    confirmed, wanted, self.settings.redis_wait_timeout_ms)
        self._replica_check = (0.0, 0)  # ask again whether a replica is connected
        self.stop_event.wait(0.1)
        if self.stop_event.is_set():
            raise Stopping()

    def _load_scripts(self) -> None:
        if self.per_slot:  # every primary needs the scripts
            for node in self.client.get_primaries():
                for name, src in self._scripts.items():
                    self._sha[name] = node.redis_connection.script_load(src)
            return
        for name, src in self._scripts.items():
            self._sha[name] = self.client.script_load(src)

    # -------------------------------------------------------------- catalog
    def _fill_categories(self, batch: list[DecodedEvent]) -> None:
        """Look up the category of each event's item (cached briefly; it rarely changes)."""
        now = time.monotonic()
        missing = set()
        for d in batch:
            if d.event.type != "impression":
                cached = self._categories.get(d.event.item_id)
                if cached is None or cached[0] < now:
                    missing.add(d.event.item_id)
        if missing:
            names = sorted(missing)
            values = self._with_retry(lambda: self._hget_many(names))
            for name, value in zip(names, values):
                self._categories[name] = (now + self.category_ttl_s, (value or b"").decode())
            if len(self._categories) > 200_000:
                self._categories.clear()
        for d in batch:
            if d.event.type != "impression":
                d.category = self._categories.get(d.event.item_id, (0, ""))[1]

    def _hget_many(self, items: list[str]) -> list:
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.hget(self.keys.item_meta(item), "category")
        return pipe.execute()

    def _with_retry(self, fn):
        """Call `fn` until Redis answers, backing off to 5 s; health follows the outcome."""
        delay = 0.05
        while True:
            if self.stop_event.is_set():
                raise Stopping()
            try:
                result = fn()
                self._on_health(True)
                return result
            except RETRYABLE as exc:
                self._on_health(False)
                log.warning("Redis unavailable (%s); retrying in %.2f s", exc, delay)
                self.stop_event.wait(delay)
                delay = min(delay * 2, 5.0)

    def put_item_meta(self, item_id: str, meta: dict[str, str]) -> None:
        """Store catalog metadata of an item (and un-remove it)."""
        def write():
            pipe = self.client.pipeline(transaction=False)
            key = self.keys.item_meta(item_id)
            pipe.delete(key)
            pipe.hset(key, mapping=meta)
            pipe.expire(key, self.config.catalog_ttl_s)
            pipe.srem(self.keys.removed, item_id)
            pipe.execute()
        self._with_retry(write)
        self._categories.pop(item_id, None)

    def remove_item(self, item_id: str) -> None:
        """A catalog tombstone: drop the metadata and remember the removal (idempotent)."""
        def write():
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(self.keys.item_meta(item_id))
            pipe.sadd(self.keys.removed, item_id)
            pipe.expire(self.keys.removed, self.config.catalog_ttl_s)
            pipe.execute()
        self._with_retry(write)
        self._categories.pop(item_id, None)

    # -------------------------------------------------------------- privacy
    def forget(self, user_id: str, now_ms: int) -> int:
        """Delete every key of a user (all in the user's slot) and refuse their older events.

        Returns how many keys were deleted. The audit trail keeps only a hash of the id.
        """
        base = self.keys.user_base(user_id)
        pattern = base.replace("[", "\\[").replace("]", "\\]").replace("*", "\\*").replace("?", "\\?") + ":*"
        deleted = 0
        batch = []
        for key in self.client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += self.client.delete(*batch)
                batch = []
        if batch:
            deleted += self.client.delete(*batch)
        self.client.set(self.keys.forgotten(user_id), now_ms, ex=self.config.forgotten_ttl_s)
        digest = hashlib.sha256(user_id.encode()).hexdigest()[:16]
        self.client.rpush(self.keys.forget_audit, f"{now_ms} user-sha256:{digest} keys:{deleted}")
        self.client.expire(self.keys.forget_audit, self.config.audit_ttl_s)
        return deleted

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self.client.close()
