"""A closed-loop user simulator that talks to streamrec through Kafka only, like a real app.

Each simulated user has hidden tastes (a vector in a latent space that drifts
a little every session), browses in sessions, publishes events with the SDK,
waits for the recommendation that answers its latest event, logs it as an
``impression`` (with the slate's ``rec_id``), and reacts to it with a hidden
click model: a cascade over the slate with position bias,
attraction from the hidden tastes, and fatigue (every click in a session makes
the next less likely). A click may lead to add_to_cart and purchase; each is
published with the slate's ``rec_id`` and the item's ``position``. The
catalog is published on the `catalog` topic, with new items appearing over
time.

Nothing in streamrec reads the hidden model: it is only used to report the
*true* reward per A/B variant (the recommendation's ``variant``), both as
realised (what the users did) and expected (the hidden click model's mean
reward of the slate, a low-variance measure of its quality), next to the
expected reward of the best slate the hidden model allows at that moment
(`World.best_slate`: the ceiling no recommender can beat).

The world is pure (`World`: no Kafka, no clock), so it is tested alone:

>>> w = World(SimConfig(users=5, items=20, seed=1))
>>> user = w.users[0]
>>> view = w.next_event(user, now_ms=1_767_225_600_000)
>>> view["type"], view["item_id"] in w.item_ids
('view', True)
>>> World(SimConfig(users=5, items=20, seed=1)).item_vecs.tobytes() == w.item_vecs.tobytes()
True
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

REWARD_WEIGHTS = {"click": 1.0, "add_to_cart": 2.0, "purchase": 5.0, "skip": 0.0}


@dataclass(frozen=True)
class SimConfig:
    """The hidden world and the load: population, catalog, click model, rate."""

    users: int = 200
    items: int = 300
    categories: int = 12
    dim: int = 8
    seed: int = 0
    rate: float = 50.0
    """Most events per second the population publishes."""
    seconds: float = 60.0
    new_item_every_s: float = 5.0
    """A new item joins the catalog this often (0: never)."""
    retire_oldest: bool = False
    """Catalog turnover: each new item pushes the oldest one still listed out of the catalog (a tombstone on
    `catalog`; nobody can click or buy it any more), so the catalog keeps its size while it renews."""
    drift: float = 0.05
    """Std of the random step of a user's taste at each new session (then renormalised)."""
    session_steps: float = 6.0
    """Mean slates a session looks at before it ends (geometric)."""
    gap_s: float = 1.0
    """Think time between sessions of one user."""
    attraction_scale: float = 3.0
    attraction_bias: float = -1.5
    appeal: float = 1.0
    """Std of each item's own click appeal (a logit added to the taste match): how well its picture, title and
    price sell it when it is shown. Organic browsing does not depend on it, so a model trained on browsing
    logs cannot know it; only the reactions to recommendations reveal it (0: items differ by taste alone)."""
    position_decay: float = 0.8
    """Examination probability of rank r is ``1 / (1 + r) ** position_decay``."""
    fatigue: float = 0.7
    """Each click in the session multiplies the next click probabilities by this."""
    p_cart: float = 0.3
    p_purchase: float = 0.3
    slate_seen: int = 10
    """Ranks a user can see at most."""
    wait_s: float = 5.0
    """How long a user waits for a recommendation before giving up on the session."""
    bucket_s: float = 10.0
    """Width of the time buckets of the report."""
    bots: int = 0
    """Extra users that click every item of every slate (a poisoned stream); never in the true reward."""


@dataclass
class SimUser:
    user_id: str
    taste: np.ndarray
    session: int = 0
    steps_left: int = 0
    clicks: int = 0
    """Clicks in the current session (fatigue)."""
    seen: set = field(default_factory=set)
    """Items viewed or clicked in the current session (a recommender leaves them out, so does `best_slate`)."""

    @property
    def session_id(self) -> str:
        return f"{self.user_id}-s{self.session}"


class World:
    """The hidden state: user tastes, item vectors, the click model. Seeded, deterministic."""

    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.centroids = self._unit(self.rng.normal(size=(cfg.categories, cfg.dim)))
        self.item_ids: list[str] = []
        self.item_cat: list[int] = []
        self.item_vecs = np.zeros((0, cfg.dim))
        self.item_appeal = np.zeros(0)
        # Appeal comes from its own stream, so tastes, item vectors and sessions are those of appeal=0.
        self._appeal_rng = np.random.default_rng([cfg.seed, 7])
        self.row: dict[str, int] = {}
        self.retired = 0
        """Items 0 .. retired-1 have left the catalog (oldest first, `retire_oldest`)."""
        for _ in range(cfg.items):
            self.add_item()
        self.users = []
        for u in range(cfg.users):
            cats = self.rng.choice(cfg.categories, size=2, replace=False)
            taste = self.centroids[cats[0]] + 0.5 * self.centroids[cats[1]] + 0.3 * self.rng.normal(size=cfg.dim)
            self.users.append(SimUser(f"sim-u{u}", self._unit(taste)))
        self.bots = {f"sim-bot{b}" for b in range(cfg.bots)}
        for b in sorted(self.bots):
            self.users.append(SimUser(b, self.centroids[0].copy()))

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def add_item(self) -> dict:
        """A new item (hidden vector near its category's centroid); returns its catalog record."""
        n = len(self.item_ids)
        cat = int(self.rng.integers(self.cfg.categories))
        vec = self._unit(self.centroids[cat] + 0.6 * self.rng.normal(size=self.cfg.dim))
        item_id = f"sim-i{n}"
        self.item_ids.append(item_id)
        self.item_cat.append(cat)
        self.item_vecs = np.vstack([self.item_vecs, vec[None]])
        self.item_appeal = np.append(self.item_appeal, self.cfg.appeal * self._appeal_rng.normal())
        self.row[item_id] = n
        return self.record(n)

    def record(self, n: int) -> dict:
        """Item ``n``'s catalog record; its text reflects its hidden category and vector (content: the same
        generator as `streamrec data synth`, its own seed, so the hidden world is unchanged)."""
        from streamrec.trainer.synth import item_text

        cat = self.item_cat[n]
        text = item_text(cat, self.item_vecs[n] - self.centroids[cat], self.cfg.seed + 2 + n)
        return {"item_id": self.item_ids[n], "category": f"cat{cat}", **text}

    def catalog(self) -> list[dict]:
        return [self.record(n) for n in range(self.retired, len(self.item_ids))]

    def retire_oldest(self) -> str:
        """The oldest listed item leaves the catalog; returns its id (for the tombstone)."""
        self.retired += 1
        return self.item_ids[self.retired - 1]

    # -- the hidden click model -------------------------------------------------- #
    def attraction(self, user: SimUser, items: list[str]) -> np.ndarray:
        """P(click | examined) of each item for the user now (unknown items: 0)."""
        rows = np.array([self.row.get(i, -1) for i in items], dtype=np.int64)
        a = np.zeros(len(items))
        known = rows >= self.retired  # unknown or retired items cannot be clicked
        if known.any():
            r = rows[known]
            logit = (self.cfg.attraction_scale * (self.item_vecs[r] @ user.taste) + self.cfg.attraction_bias
                     + self.item_appeal[r])
            a[known] = 1.0 / (1.0 + np.exp(-logit))
        return a

    def best_slate(self, user: SimUser) -> list[str]:
        """The slate of a recommender that knows the hidden model: the listed items outside the session, by
        their attraction to the user now (what any learner's expected reward is measured against). Items the
        user bought in earlier sessions stay in (the scorer leaves them out), so the ceiling is a little high.

        >>> w = World(SimConfig(users=1, items=30, seed=3))
        >>> u = w.users[0]
        >>> best = w.best_slate(u)
        >>> len(best), w.expected_reward(u, best) >= w.expected_reward(u, w.item_ids[:10])
        (10, True)
        """
        listed = [i for i in self.item_ids[self.retired:] if i not in user.seen]
        top = np.argsort(-self.attraction(user, listed), kind="stable")[: self.cfg.slate_seen]
        return [listed[k] for k in top]

    def examination(self, n: int) -> np.ndarray:
        return 1.0 / (1.0 + np.arange(n)) ** self.cfg.position_decay

    def click_probs(self, user: SimUser, items: list[str]) -> np.ndarray:
        """Probability that the user clicks each rank (cascade: the first click ends the scan)."""
        items = items[: self.cfg.slate_seen]
        p = self.attraction(user, items) * self.examination(len(items)) * self.cfg.fatigue ** user.clicks
        not_before = np.concatenate([[1.0], np.cumprod(1.0 - p)[:-1]])
        return p * not_before

    def expected_reward(self, user: SimUser, items: list[str]) -> float:
        """Mean reward of showing ``items`` to the user now (click, cart and purchase weighted)."""
        c = self.cfg
        per_click = (REWARD_WEIGHTS["click"] + c.p_cart * (REWARD_WEIGHTS["add_to_cart"]
                                                           + c.p_purchase * REWARD_WEIGHTS["purchase"]))
        return float(self.click_probs(user, items).sum() * per_click)

    def react(self, user: SimUser, items: list[str]) -> list[tuple[str, str, int]]:
        """What the user does with a slate: [(type, item_id, position)], empty when nothing is clicked."""
        if user.user_id in self.bots:
            return [("click", item, pos) for pos, item in enumerate(items)]
        probs = self.click_probs(user, items)
        u = self.rng.random()
        cum = np.cumsum(probs)
        pos = int(np.searchsorted(cum, u, side="right"))
        if pos >= len(probs):
            return []
        item = items[pos]
        user.clicks += 1
        user.seen.add(item)
        out = [("click", item, pos)]
        if self.rng.random() < self.cfg.p_cart:
            out.append(("add_to_cart", item, pos))
            if self.rng.random() < self.cfg.p_purchase:
                out.append(("purchase", item, pos))
        return out

    # -- sessions ----------------------------------------------------------------- #
    def start_session(self, user: SimUser) -> None:
        user.session += 1
        user.clicks = 0
        user.seen = set()
        user.steps_left = int(self.rng.geometric(1.0 / max(self.cfg.session_steps, 1.0)))
        user.taste = self._unit(user.taste + self.cfg.drift * self.rng.normal(size=self.cfg.dim))

    def browse(self, user: SimUser, k: int = 30) -> str:
        """An item the user finds by themselves (search, home page): by taste among a random few."""
        n = len(self.item_ids) - self.retired
        cand = self.retired + self.rng.choice(n, size=min(k, n), replace=False)
        logits = 4.0 * (self.item_vecs[cand] @ user.taste)
        p = np.exp(logits - logits.max())
        return self.item_ids[int(cand[self.rng.choice(len(cand), p=p / p.sum())])]

    def next_event(self, user: SimUser, now_ms: int) -> dict:
        """The organic view that opens a session step (fields for `EventPublisher.publish`)."""
        if user.steps_left <= 0:
            self.start_session(user)
        item = self.browse(user)
        user.seen.add(item)
        return {"type": "view", "user_id": user.user_id, "item_id": item, "session_id": user.session_id,
                "ts": now_ms}


@dataclass
class Tally:
    """Slates shown and true reward, by variant and time bucket."""

    bucket_s: float
    t0: float
    cells: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))

    users: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(lambda: [0, 0])))
    """(variant, bucket) -> user -> [slates, clicks]: the unit of an A/B arm is a user, not a slate."""

    def add(self, variant: str, now: float, realised: float, expected: float, clicked: bool, user: str = "",
            best: float = 0.0, degraded: bool = False) -> None:
        key = (variant, int((now - self.t0) // self.bucket_s))
        per_user = self.users[key][user]
        per_user[0] += 1
        per_user[1] += int(clicked)
        c = self.cells[key]
        c["slates"] += 1
        c["clicks"] += clicked
        c["reward"] += realised
        c["reward_sq"] += realised * realised
        c["expected"] += expected
        c["best"] += best
        c["degraded"] += degraded  # served without a full feature read or without models: not the arm's policy

    def report(self) -> dict:
        """{variant: {"buckets": [...], "total": {...}}}; CTR = clicks / slates, CI = 95% normal."""
        out: dict = {}
        for (variant, b), c in sorted(self.cells.items()):
            out.setdefault(variant, {"buckets": []})["buckets"].append(
                {"t_s": b * self.bucket_s, **_summary(c), "by_user": dict(self.users[(variant, b)])})
        for variant, v in out.items():
            tot: dict = defaultdict(float)
            for (var, _), c in self.cells.items():
                if var == variant:
                    for k, x in c.items():
                        tot[k] += x
            v["total"] = _summary(tot)
        return out


def _summary(c) -> dict:
    n = max(c["slates"], 1.0)
    mean = c["reward"] / n
    var = max(c["reward_sq"] / n - mean * mean, 0.0)
    half = 1.96 * math.sqrt(var / n)
    return {"slates": int(c["slates"]), "clicks": int(c["clicks"]), "ctr": c["clicks"] / n,
            "reward_per_slate": mean, "reward_ci95": [mean - half, mean + half],
            "expected_reward_per_slate": c["expected"] / n, "best_expected_reward_per_slate": c["best"] / n,
            "degraded": int(c["degraded"])}


class Simulation:
    """Drives a `World` against the live system: catalog, events and recommendations through Kafka."""

    def __init__(self, settings, cfg: SimConfig, on_tick: Callable[[dict], None] | None = None):
        self.settings = settings
        self.cfg = cfg
        self.world = World(cfg)
        self.on_tick = on_tick
        self.stats = defaultdict(int)
        self.models_seen: dict[str, set] = defaultdict(set)
        """Model versions that answered, per variant (shows hot-swaps and pins)."""
        self._stop = False
        self.tally: Tally | None = None
        """Live per-variant counts while running (read by the demo's view)."""

    def stop(self) -> None:
        self._stop = True

    def publish_catalog(self, producer, records: list[dict]) -> None:
        from streamrec.stream.schemas import CatalogItem, encode
        from streamrec.stream.topics import CATALOG

        topic = self.settings.topic(CATALOG)
        for r in records:
            producer.produce(topic, encode(CatalogItem(**r, created_ts=int(time.time() * 1000))),
                             key=r["item_id"].encode())
        producer.flush(30)

    def run(self) -> dict:
        """Run for ``cfg.seconds``; returns the report (true reward per variant over time)."""
        from confluent_kafka import Producer

        from streamrec.stream.sdk import EventPublisher, RecommendationConsumer
        from streamrec.stream.topics import CATALOG, kafka_security

        cfg, world = self.cfg, self.world
        cat_producer = Producer({"bootstrap.servers": self.settings.kafka_bootstrap, "linger.ms": 5,
                                 **kafka_security(self.settings)})
        self.publish_catalog(cat_producer, world.catalog())
        t0 = time.monotonic()
        tally = self.tally = Tally(cfg.bucket_s, t0)
        ready = {u.user_id: t0 + i / max(cfg.rate, 1e-9) for i, u in enumerate(world.users)}
        by_id = {u.user_id: u for u in world.users}
        waiting: dict[str, tuple[str, float]] = {}  # trigger event id -> (user, deadline)
        next_item = t0 + cfg.new_item_every_s if cfg.new_item_every_s > 0 else math.inf
        budget, last = 0.0, t0
        with RecommendationConsumer(self.settings) as recs, EventPublisher(self.settings) as pub:
            while not self._stop and (now := time.monotonic()) - t0 < cfg.seconds:
                if now >= next_item:
                    self.publish_catalog(cat_producer, [world.add_item()])
                    self.stats["new_items"] += 1
                    if cfg.retire_oldest:
                        cat_producer.produce(self.settings.topic(CATALOG), None, key=world.retire_oldest().encode())
                        self.stats["retired_items"] += 1
                    next_item += cfg.new_item_every_s
                budget = min(budget + (now - last) * cfg.rate, cfg.rate)  # at most 1 s of burst
                last = now
                due = [uid for uid, t in ready.items() if t <= now]
                for uid in due[: int(budget)]:
                    user = by_id[uid]
                    fields = world.next_event(user, int(time.time() * 1000))
                    fields.pop("ts")
                    eid = pub.publish(fields.pop("type"), **fields)
                    del ready[uid]
                    waiting[eid] = (uid, now + cfg.wait_s)
                    budget -= 1
                    self.stats["events"] += 1
                pub.producer.poll(0)
                rec = recs.poll(0.02)
                while rec is not None:
                    self._answer(rec, waiting, by_id, ready, pub, tally)
                    rec = recs.poll(0)
                now = time.monotonic()
                for eid in [e for e, (_, d) in waiting.items() if d < now]:
                    uid, _ = waiting.pop(eid)
                    by_id[uid].steps_left = 0
                    ready[uid] = now + cfg.gap_s
                    self.stats["timeouts"] += 1
                if self.on_tick is not None:
                    self.on_tick({"elapsed_s": now - t0, **self.stats})
            pub.flush()
        cat_producer.flush(10)
        return {"config": asdict(cfg), "seconds": time.monotonic() - t0, "counts": dict(self.stats),
                "models": {v: sorted(m)[-50:] for v, m in self.models_seen.items()},
                "variants": tally.report()}

    def _answer(self, rec, waiting, by_id, ready, pub, tally) -> None:
        got = waiting.pop(rec.trigger_event_id, None)
        if got is None:
            return  # a slate for an event we did not wait on (a click's, another app's)
        uid, _ = got
        user = by_id[uid]
        self.stats["slates"] += 1
        self.models_seen[rec.variant].update(rec.models)  # an arm without models is listed too
        items = [it.item_id for it in rec.items]
        if items:  # like an app that logs what it displays: the learner trains on shown slates only
            pub.publish("impression", user_id=uid, items=items[: self.cfg.slate_seen],
                        session_id=user.session_id, rec_id=rec.rec_id)
            self.stats["impression"] += 1
        expected = self.world.expected_reward(user, items)
        bot = uid in self.world.bots  # a bot's slates stay out of the tally: no ceiling to compute
        best = 0.0 if bot else self.world.expected_reward(user, self.world.best_slate(user))
        actions = self.world.react(user, items)
        realised = sum(REWARD_WEIGHTS[a] for a, _, _ in actions)
        if bot:
            self.stats["bot_slates"] += 1
        else:
            tally.add(rec.variant, time.monotonic(), realised, expected, bool(actions), uid, best, rec.degraded)
        for kind, item, pos in actions:
            pub.publish(kind, user_id=uid, item_id=item, session_id=user.session_id, rec_id=rec.rec_id,
                        position=pos)
            self.stats[kind] += 1
        user.steps_left -= 1
        ready[uid] = time.monotonic() + (0.0 if user.steps_left > 0 else self.cfg.gap_s)


def run_simulation(settings, cfg: SimConfig, on_tick=None) -> dict:
    """Run a simulation against the live system and return its report."""
    return Simulation(settings, cfg, on_tick).run()


def format_report(report: dict) -> str:
    return json.dumps(report, indent=2)


# The world `streamrec bench online` and `streamrec demo` simulate unless told otherwise: items that sell
# better or worse when shown by a hidden appeal no browsing log reveals, and about one slate in three clicked.
# (`SimConfig`'s own intercept clicks more than half of all slates: most slates are clicked whatever they
# hold, which leaves a learner little to show.) BENCHMARKS.md measures the online trainer in this world.
BENCH_WORLD = {"attraction_bias": -3.5, "appeal": 0.75}


def add_world_args(p) -> None:
    """The simulated world's flags, shared by `streamrec bench online` and `streamrec demo`; `world_of` reads
    them back as `SimConfig` fields."""
    p.add_argument("--drift", type=float, default=SimConfig.drift,
                   help=f"std of a user's taste step per session (default {SimConfig.drift})")
    p.add_argument("--new-item-every-s", type=float, default=SimConfig.new_item_every_s,
                   help=f"a new item joins the catalog this often, 0: never (default {SimConfig.new_item_every_s})")
    p.add_argument("--appeal", type=float, default=BENCH_WORLD["appeal"],
                   help="std of each item's hidden click appeal, unseen in organic browsing "
                        f"(default {BENCH_WORLD['appeal']})")
    p.add_argument("--attraction-bias", type=float, default=BENCH_WORLD["attraction_bias"],
                   help="intercept of the hidden click logit: lower, fewer clicks per slate (default "
                        f"{BENCH_WORLD['attraction_bias']}: about a third of the slates clicked; "
                        f"{SimConfig.attraction_bias}: more than half)")
    p.add_argument("--retire-oldest", action="store_true",
                   help="catalog turnover: each new item retires the oldest one (tombstone; default off)")


def world_of(args) -> dict:
    """The `SimConfig` fields that `add_world_args`' flags set."""
    return {"drift": args.drift, "new_item_every_s": args.new_item_every_s, "retire_oldest": args.retire_oldest,
            "appeal": args.appeal, "attraction_bias": args.attraction_bias}
