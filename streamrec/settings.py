"""One settings object for every part of streamrec.

Every field is read from an environment variable named ``STREAMREC_`` plus the
field name in upper case (``kafka_bootstrap`` -> ``STREAMREC_KAFKA_BOOTSTRAP``).
Defaults point at the local stack on 127.0.0.1, so nothing needs setting for
``make demo``. The object is built once, at the edge (CLI, test fixture), and
passed in; nothing deeper reads the environment.

>>> s = Settings.from_env({"STREAMREC_TOPIC_PREFIX": "shop1.", "STREAMREC_WORKER_PORT": "9201"})
>>> s.topic_prefix, s.worker_port
('shop1.', 9201)

Secrets never show: `repr`, `redacted_env` and `streamrec config` mask them.

>>> s = Settings(redis_url="rediss://app:hunter2@cache:6380/0", redis_password="pw", kafka_sasl_password="kpw")
>>> r = redact_settings(s)
>>> r["redis_url"], r["redis_password"], r["kafka_sasl_password"], r["kafka_sasl_username"]
('rediss://app:***@cache:6380/0', '***', '***', '')
>>> "hunter2" in repr(s) or "kpw" in repr(s)
False
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import msgspec

ENV_PREFIX = "STREAMREC_"


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Configuration shared by the CLI, the services and the tests."""

    # --- Kafka -------------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:9092"
    """Comma-separated host:port list of the Kafka brokers."""
    topic_prefix: str = ""
    """Prepended to every topic name, so several tenants can share a cluster."""
    topic_partitions: int = 3
    """Partitions for topics created by `streamrec topics create`."""
    topic_replication: int = 1
    """Replication factor for topics created by `streamrec topics create`. With 3 or more, the topics get
    min.insync.replicas=2: a record the producers' acks=all acknowledged survives the loss of any one broker."""

    # --- Redis -------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis (or Redis Cluster entry point) URL; `rediss://` for TLS."""
    redis_prefix: str = "sr:"
    """Prepended to every Redis key."""
    redis_cluster: bool = False
    """Redis Cluster: run one feature script per hash slot instead of one per batch chunk."""
    redis_sentinels: str = ""
    """Comma-separated host:port list of Redis Sentinels: clients then ask them for the primary named
    STREAMREC_REDIS_MASTER_NAME and follow a failover (STREAMREC_REDIS_URL gives only the database, the
    scheme and credentials). Empty: STREAMREC_REDIS_URL is the server."""
    redis_master_name: str = "streamrec"
    """The name the Sentinels monitor the primary under."""
    redis_wait_replicas: Annotated[int, msgspec.Meta(ge=-1)] = -1
    """Replicas that must hold a worker batch's Redis writes (Redis WAIT) before its offsets are committed, so a
    failover to a replica cannot lose features of committed events. -1: one, when the primary has a replica
    connected at the worker's start, else none; 0: never wait."""
    redis_wait_timeout_ms: int = 2000
    """How long one WAIT may take; a batch whose writes no replica confirmed is retried, not committed."""

    # --- stream worker ------------------------------------------------------------
    worker_batch_max: int = 2000
    """Most events the worker applies in one batch (one Redis round trip per phase)."""
    worker_batch_wait_ms: int = 20
    """Longest the worker waits to fill a batch."""
    worker_stall_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    """A worker whose events wait but which has started no batch for this long (its consumer stalled after a
    broker outage), or which got no lag reading for this long, recovers while Kafka and Redis answer: the faust
    engine restarts itself in place, the confluent engine replaces its consumer. A batch in hand for twice this
    long restarts either engine. 0 turns the watchdog off."""
    session_gap_s: int = 1800
    """Inactivity (event time) that ends a derived session."""
    lateness_s: int = 6 * 3600
    """Events older than the user's newest by more than this go to the DLQ as too_late."""
    dedup_ttl_s: int = 6 * 3600
    """How long, at least, event ids are remembered to drop duplicates (at most twice that; about 100 bytes each
    in Redis)."""
    # soak: the session TTL is a setting so a short soak run can see sessions expire (default as before)
    session_ttl_s: int = 2 * 86400
    """How long a derived session's keys (counts, item sequence) live after its last event."""

    # --- scorer ---------------------------------------------------------------------
    scorer_batch_max: int = 256
    """Most score requests scored together."""
    scorer_batch_wait_ms: int = 2
    """Longest the scorer waits to fill a batch."""
    scorer_stall_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    """A scorer whose score requests wait but which started no batch for this long (its Kafka consumer stalled
    after a broker outage), or which got no lag reading for this long, replaces its consumer while Kafka
    answers; a batch in hand for twice this long restarts the process. 0 turns the watchdog off."""
    scorer_top_n: int = 10
    """Items per recommendation."""
    scorer_max_candidates: int = 200
    """Candidates ranked per request after merging the sources."""
    scorer_seq_candidates: int = 100
    """Sequence-model retrieval candidates (inner-product top-K)."""
    scorer_covis_candidates: int = 50
    scorer_trending_candidates: int = 50
    scorer_content_candidates: int = 20
    """Content-similar candidates per request (nearest the session's content profile; 0 turns the source off)."""
    scorer_recent_items: int = 5
    """Session items whose co-visitation feeds candidates."""
    scorer_history_items: Annotated[int, msgspec.Meta(ge=0)] = 20
    """The user's newest items of earlier sessions put before the session's in the sequence and graph models'
    input (they train on users' whole histories); 0 = the session alone."""
    scorer_exploration: Literal["off", "epsilon", "softmax"] = "off"
    """Serving policy: every item carries its propensity under it."""
    scorer_epsilon: float = 0.1
    scorer_temperature: float = 1.0
    scorer_ab_arms: str = ""
    """A/B arms: "NAME=WEIGHT[:model@version...],..." (or "NAME=WEIGHT:trending": the popularity baseline,
    trending items only); empty = one arm "default"."""
    scorer_ab_salt: str = "ab1"
    """Salt of the user -> arm hash (1 to 16 bytes): a new salt re-draws which users are in which arm."""
    scorer_seq_model: str = "sasrec"
    """Registry name of the sequence model."""
    scorer_ranker_model: str = "ranker"
    """Registry name of the ranker."""
    scorer_redis_timeout_s: float = 0.25
    """Past this, a batch is served degraded from the in-memory trending snapshot."""
    scorer_redis_retry_s: float = 1.0
    scorer_item_stats_ttl_s: float = 1.0
    """How long item statistics and co-visitation lists read from Redis are reused."""

    # --- explanations (ranker feature attributions) --------------------------------
    scorer_explain_messages: bool = False
    """Also explain every item in the `recommendations` messages (costs a ranker run per feature group)."""
    scorer_explain_top: int = 3
    """Feature groups listed per explained item, largest effect first."""
    scorer_log_features: bool = True
    """Put the ranker's inputs for the shown items in each recommendation (`features`): the online trainer
    trains on what the ranker saw, not on features read after the user already reacted."""

    # --- graph candidates and candidate metrics (LightGCN, streamrec.serving.graph) ---
    scorer_graph_model: str = "graph"
    """Registry name of the graph model (candidate source with reason `graph`; none published = no source)."""
    scorer_graph_candidates: int = 50
    """Candidates from the graph model per request (0 turns the source off)."""
    scorer_click_memory: int = 100_000
    """Recommendations remembered (rec_id -> item -> sources) to count which sources proposed clicked items."""

    # --- content tower (text + category + tags; streamrec.serving.content) ---------
    scorer_content_model: str = "content"
    """Registry name of the content model (none published = content candidates from the sequence model's
    item vectors, for cold users only)."""
    scorer_content_max_items: int = 200_000
    """Catalog items whose content vectors the scorer keeps in memory (oldest give way); ~1.8 KB each."""
    scorer_content_profile_items: int = 10
    """Newest session items that make the session's content profile (candidates and `content_sim`)."""

    # --- online trainer (each also a `streamrec learn` flag, which wins) ----------
    learner_window_ms: int = 20_000
    """Attribution window: interactions later than this after their recommendation are dropped."""
    learner_reward_click: float = 1.0
    learner_reward_add_to_cart: float = 2.0
    learner_reward_purchase: float = 5.0
    learner_reward_skip: float = 0.0
    learner_gate_every_samples: int = 2000
    """Gate a candidate after this many new shown items..."""
    learner_gate_every_s: float = 30.0
    """...or this many seconds, whichever comes first."""
    learner_lr: float = 1e-3
    learner_seq_lr: float = 1e-4
    """Adam step of the sequence model's fine-tuning. Its losses train on clicked recommended items, so it
    drifts towards what gets clicked anywhere, which the ranker's attraction offsets already count; in
    `streamrec bench online` (three user splits each) 5e-4 lost taste match and gave +6.5%, 1e-4 +10.2%."""
    learner_embedding_lr: float = 0.0
    """SGD step per sample of the ranker's id embeddings (the dense layers use Adam at ``learner_lr``). 0 keeps
    them as trained offline: measured in `streamrec bench online`, fine-tuning them on a few dozen impressions
    per id added per-item noise that swamped the position-debiased attraction estimate (its correlation with
    the simulator's hidden item appeal fell from 0.47 to 0.07 at 0.05)."""
    learner_rl_mix: float = 0.5
    """Share of the off-policy REINFORCE loss in the sequence model's loss (the rest is next-item)."""
    learner_weight_cap: float = 10.0
    """Cap of the importance weights."""
    learner_impressions: Literal["auto", "required", "ignored"] = "auto"
    """Which slates were shown: a slate is shown when an `impression` event or an interaction carries its
    rec_id. ``required``: only shown slates are trained and gated on (the rest were never displayed, so
    their items are not negatives); ``auto``: the same once the stream has carried any impression with a
    rec_id, every slate before that; ``ignored``: every slate (apps that send no impressions)."""
    learner_checkpoint_dir: str = ".local/learner"
    learner_dry_run: bool = False
    """Gate candidates but never publish them."""

    # --- security: Kafka SASL/TLS, Redis ACL/TLS, pull API token (streamrec.security) ---
    # Secrets come from the variable itself or, better, from the file named by its *_FILE twin
    # (a mounted Kubernetes/Docker secret); they never appear in logs, reprs or `streamrec config`.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How clients talk to Kafka: SASL_SSL for SCRAM credentials over TLS."""
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_sasl_password_file: str = ""
    kafka_ssl_ca: str = ""
    """CA that signed the brokers' certificates: a PEM file path or the PEM text; empty = system CAs."""
    redis_username: str = ""
    """Redis ACL user (Redis 6+); credentials in STREAMREC_REDIS_URL work too but are best kept out of it."""
    redis_password: str = ""
    redis_password_file: str = ""
    redis_ssl_ca: str = ""
    """CA for `rediss://` URLs: a PEM file path or the PEM text; empty = system CAs."""
    scorer_pull_token: str = ""
    """When set (or its _FILE), GET /v1/recommendations/... requires `Authorization: Bearer <token>`."""
    scorer_pull_token_file: str = ""

    # --- customer segments (streamrec segments) ------------------------------------
    segments_k: int = 8
    """Number of customer segments (2..64) when `streamrec segments` is not given --k."""
    segments_ttl_s: int = 3 * 86400
    """Lifetime of a user's segment in Redis: a few refresh periods, so it never goes stale for good."""
    segments_port: int = 9104
    """Health and metrics of `streamrec segments --every`."""

    # --- service HTTP ports (health, readiness, metrics) --------------------
    http_host: str = "127.0.0.1"
    """Interface the services' HTTP endpoints bind to."""
    worker_port: int = 9101
    scorer_port: int = 9102
    learner_port: int = 9103

    # --- local stack (streamrec up) ------------------------------------------
    home: str = ".local"
    """Folder for the local stack's binaries, data and logs (ignored by git)."""
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    redis_port: int = 6379
    prometheus_port: int = 9090
    redis_replica_port: int = 6380
    """The replicated local stack (`streamrec up --replicated`): its Redis replica..."""
    redis_sentinel_port: int = 26379
    """...and the first of its three Sentinels (the next two ports are the others'); its Kafka brokers 2 and 3
    listen two and four ports above STREAMREC_KAFKA_PORT and STREAMREC_KAFKA_CONTROLLER_PORT."""
    kafka_heap: str = "512m"
    """Java heap of the local Kafka broker."""
    kafka_jvm_options: str = "-XX:TieredStopAtLevel=1"
    """Extra JVM options of the local Kafka broker, space-separated. The default compiles with C1 only: on a
    laptop's few cores, C2's compiler threads took half the broker's CPU for no throughput gain (BENCHMARKS.md,
    "The local broker's JIT"); an empty value gives the JVM's defaults."""

    # --- models ----------------------------------------------------------------
    registry_uri: str = ".local/registry"
    """Model registry root: a local path or an fsspec URL (s3://, gs://...)."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """Where the scorer runs its models: auto picks CUDA when present."""
    # fault suite: a model version larger than this is refused before it is read
    model_max_bytes: int = 2 << 30
    """Largest model version (all its files) the scorer loads, in bytes; bigger ones are refused."""
    model_load_nice: int = 10
    """Added to the nice value of the scorer's thread that reads and hashes model files (Linux); 0: no lower."""
    fault_events: int = 50_000
    """Events per case of the fault suite (`pytest -m faults`; `streamrec bench faults --events`)."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    gc_gen0: int = 50_000
    """Allocations between two young-generation garbage collections in the worker and the scorer (Python's
    default: 700; fewer passes, fewer full ones in the latency tail); 0 keeps Python's default."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Read every ``STREAMREC_*`` variable; unknown ones are an error (typos)."""
        environ = os.environ if environ is None else environ
        known = set(cls.__struct_fields__)
        values: dict[str, object] = {}
        for name, raw in environ.items():
            if not name.startswith(ENV_PREFIX):
                continue
            field = name[len(ENV_PREFIX):].lower()
            if field not in known:
                raise SettingsError(
                    f"{name} is not a streamrec setting; known: "
                    + ", ".join(env_name(f) for f in sorted(known))
                )
            values[field] = raw
        values.update(overrides)
        # Moving the local stack to other ports moves the clients with it, unless told otherwise.
        if "kafka_port" in values and "kafka_bootstrap" not in values:
            values["kafka_bootstrap"] = f"127.0.0.1:{values['kafka_port']}"
        if "redis_port" in values and "redis_url" not in values:
            values["redis_url"] = f"redis://127.0.0.1:{values['redis_port']}/0"
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise SettingsError(_explain(exc)) from None

    def replace(self, **changes) -> "Settings":
        """A copy with some fields changed (validated like the environment)."""
        return msgspec.convert({**msgspec.structs.asdict(self), **changes}, type(self), strict=False)

    def topic(self, name: str) -> str:
        """The full topic name for a logical topic (see `streamrec.stream.topics`)."""
        return f"{self.topic_prefix}{name}"

    def section(self, prefix: str, names) -> dict[str, Any]:
        """``{name: self.<prefix>_<name>}`` for each of `names` that has such a field: how a service's config
        dataclass takes its part of the settings (`ScorerConfig.from_settings`, `LearnerConfig.from_settings`)."""
        return {n: getattr(self, f"{prefix}_{n}") for n in names if hasattr(self, f"{prefix}_{n}")}

    @property
    def home_path(self) -> Path:
        return Path(self.home).resolve()

    def as_env(self) -> dict[str, str]:
        """The settings as environment variables, for child processes."""
        return {env_name(k): str(v) for k, v in msgspec.structs.asdict(self).items()}

    # --- secrets stay out of reprs and printed settings (`redact_settings` below) ---
    def redacted_env(self) -> dict[str, str]:
        """Like `as_env`, with every secret masked: what may be printed or logged."""
        return {env_name(k): v for k, v in redact_settings(self).items()}

    def __repr__(self) -> str:
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in redact_settings(self).items()) + ")"

    def __rich_repr__(self):
        yield from redact_settings(self).items()


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def field_docs() -> dict[str, str]:
    """Each setting's environment variable and its default, for `streamrec config`."""
    return {env_name(f): repr(d) for f, d in zip(Settings.__struct_fields__, Settings.__struct_defaults__)}


def _explain(exc: msgspec.ValidationError) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.redis_port`"; name the variable instead.
    msg = str(exc)
    if " - at `$." in msg:
        text, _, path = msg.partition(" - at `$.")
        field = path.rstrip("`").split(".")[0].split("[")[0]
        return f"{env_name(field)}: {text}; fix the variable or unset it to use the default"
    return msg


SECRET_FIELDS = frozenset({"kafka_sasl_password", "redis_password", "scorer_pull_token"})
"""Settings whose values are secrets: masked wherever settings are shown."""
URL_FIELDS = ("redis_url", "kafka_bootstrap", "registry_uri")
"""Settings that may carry `user:password@` in a URL: their password part is masked."""
MASK = "***"
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@/\s]*)@")


# --------------------------------------------------------------------------- #
# What may be shown: secrets masked
# --------------------------------------------------------------------------- #
def redact_url(url: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://user:***@host`` (anything else unchanged)."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", url)


def redact_settings(settings: Settings) -> dict[str, Any]:
    """Every setting by field name, secrets masked (empty secrets stay empty: "not set" is not secret)."""
    out: dict[str, Any] = {}
    for name in settings.__struct_fields__:
        value = getattr(settings, name)
        if name in SECRET_FIELDS and value:
            value = MASK
        elif name in URL_FIELDS and isinstance(value, str):
            value = redact_url(value)
        out[name] = value
    return out
