"""Synthetic interaction history with planted structure, seeded.

Used by the tests, the benchmarks, the demo and (later) the simulator, so the
generator is a plain function from a config to events; writing files is
separate. What is planted, so that a model that learns it measurably beats
simple baselines:

- items belong to categories; popularity follows a power law (Zipf);
- each user has latent tastes (a few favourite categories and a latent
  vector) that drift a little every session;
- within a session, each item has a preferred successor in its category: the
  next item follows it with probability ``p_sequential``, otherwise the user
  picks by taste and popularity;
- the user is shown slates (``impression`` events) and clicks with a
  position-biased probability that depends on how well the item fits their
  taste, and on whether the user likes mainstream or niche items (a
  user x item-popularity interaction that a linear model on dense features
  cannot express).

>>> data = synthesize(SynthConfig(users=5, items=30, sessions_per_user=2, seed=1))
>>> sorted({e["type"] for e in data.events}) == ["click", "impression", "view"]
True
>>> data.events == synthesize(SynthConfig(users=5, items=30, sessions_per_user=2, seed=1)).events
True
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class SynthConfig:
    """Size and shape of a synthetic history; every default is chosen to be learnable in seconds."""

    users: int = 500
    items: int = 300
    categories: int = 12
    sessions_per_user: int = 6
    session_length: float = 8.0
    """Mean views per session (geometric)."""
    slate_size: int = 8
    impression_rate: float = 0.35
    """Probability that a view is followed by a slate of recommendations."""
    p_sequential: float = 0.55
    """Probability that the next item in a session is the previous item's successor."""
    zipf: float = 1.1
    dim: int = 8
    """Latent dimension of tastes and items."""
    drift: float = 0.15
    """Standard deviation of the taste random walk per session."""
    segments: int = 0
    """Planted customer segments: user ``uN`` belongs to segment ``N % segments`` and shares its
    favourite categories (disjoint between segments where the categories allow); 0 = each user
    picks their own. The same seed gives the same events otherwise."""
    seed: int = 0


@dataclass
class SynthData:
    """Events (dicts in the event schema v1) in time order, and the item catalog."""

    events: list[dict]
    items: list[dict]
    config: SynthConfig
    truth: dict = field(default_factory=dict)
    """Planted parameters (successor of each item, item categories), for checks."""


# content: item text that reflects the hidden category (theme words) and the item's own latent
# offset (adjectives), so a text model can pick up what users like about it.
THEMES = (
    ("hiking", ("boots", "backpack", "tent", "trail map", "water bottle"), ("outdoor", "mountain", "camping")),
    ("kitchen", ("frying pan", "chef knife", "blender", "cutting board", "kettle"), ("cooking", "recipes", "home")),
    ("gaming", ("console", "controller", "headset", "gaming mouse", "keyboard"), ("video games", "esports", "pc")),
    ("garden", ("shovel", "seeds", "flower pot", "hose", "pruning shears"), ("plants", "gardening", "lawn")),
    ("baby", ("stroller", "diapers", "crib", "baby bottle", "onesie"), ("infant", "toddler", "nursery")),
    ("fitness", ("dumbbells", "yoga mat", "protein powder", "running shoes", "kettlebell"), ("gym", "workout",
                                                                                              "sport")),
    ("books", ("novel", "cookbook", "biography", "poetry collection", "thriller"), ("reading", "literature",
                                                                                    "paperback")),
    ("music", ("guitar", "piano keyboard", "drum kit", "violin", "microphone"), ("instrument", "band", "studio")),
    ("pets", ("dog food", "cat litter", "leash", "aquarium", "bird cage"), ("animals", "pet care", "veterinary")),
    ("beauty", ("lipstick", "face cream", "perfume", "shampoo", "nail polish"), ("cosmetics", "skincare",
                                                                                 "makeup")),
    ("office", ("stapler", "desk lamp", "notebook", "fountain pen", "office chair"), ("stationery", "work",
                                                                                      "desk")),
    ("auto", ("car battery", "tyre", "motor oil", "dash camera", "wiper blades"), ("car", "vehicle", "garage")),
    ("travel", ("suitcase", "passport holder", "neck pillow", "travel adapter", "duffel bag"), ("trip", "luggage",
                                                                                                "vacation")),
    ("photo", ("camera lens", "tripod", "memory card", "flash", "camera bag"), ("photography", "dslr", "pictures")),
    ("tools", ("drill", "hammer", "screwdriver set", "saw", "tape measure"), ("diy", "hardware", "workshop")),
    ("toys", ("puzzle", "building blocks", "doll", "toy car", "board game"), ("kids", "play", "children")),
)
ADJECTIVES = (("lightweight", "heavy-duty"), ("budget", "premium"), ("classic", "modern"), ("compact", "large"),
              ("colourful", "black"), ("beginner", "professional"), ("eco-friendly", "high-tech"),
              ("quiet", "powerful"))


def item_text(category: int, offset: np.ndarray, seed: int) -> dict:
    """Title, description and tags of one synthetic item (its own seed: the events are unchanged).

    The category picks a theme (its nouns and tags; categories past the themes
    combine two); the two largest coordinates of the item's latent offset from
    its category pick adjectives, so items a user likes read alike.

    >>> item_text(0, np.array([0.9, -0.1, 0, 0, 0, 0, 0, -0.5]), seed=1)["title"]
    'Lightweight powerful tent'
    """
    rng = np.random.default_rng(seed)
    name, nouns, tags = THEMES[category % len(THEMES)]
    if category >= len(THEMES):
        extra = THEMES[(category // len(THEMES) + category) % len(THEMES)]
        name, nouns, tags = f"{name} {extra[0]}", nouns + extra[1], tags[:2] + extra[2][:1]
    top = np.argsort(-np.abs(offset), kind="stable")[:2] % len(ADJECTIVES)
    adjectives = [ADJECTIVES[d][int(offset[d] < 0)] for d in top]
    noun = nouns[int(rng.integers(len(nouns)))]
    title = " ".join(adjectives + [noun]).capitalize()
    description = f"A {adjectives[0]} {noun} for {tags[0]} fans, {adjectives[1]} and made for {name}."
    return {"title": title, "description": description, "tags": [name, *tags[:2], adjectives[0]]}


def _position_bias(slate: int) -> np.ndarray:
    # The classic examination model: attention decays like 1/(rank+1).
    return 1.0 / (np.arange(slate) + 1.0)


def synthesize(cfg: SynthConfig) -> SynthData:
    """Generate a seeded history; the same config always gives the same events."""
    rng = np.random.default_rng(cfg.seed)
    n, c = cfg.items, cfg.categories
    item_ids = [f"i{j}" for j in range(n)]
    cat_of = rng.integers(0, c, size=n)
    cat_vec = rng.normal(size=(c, cfg.dim))
    item_vec = cat_vec[cat_of] + 0.5 * rng.normal(size=(n, cfg.dim))
    popularity = 1.0 / np.arange(1, n + 1) ** cfg.zipf
    popularity = popularity[rng.permutation(n)]
    popularity /= popularity.sum()
    pop_z = (np.log(popularity) - np.log(popularity).mean()) / np.log(popularity).std()
    # Each item's successor: another item of the same category (a planted
    # sequential pattern that the order of a session reveals).
    successor = np.empty(n, dtype=np.int64)
    for j in range(n):
        same = np.flatnonzero(cat_of == cat_of[j])
        same = same[same != j]
        successor[j] = rng.choice(same) if len(same) else rng.integers(n)

    bias = _position_bias(cfg.slate_size)
    events: list[dict] = []
    seq = 0

    def emit(kind: str, user: str, ts: int, session: str, **extra) -> None:
        nonlocal seq
        seq += 1
        events.append({"event_id": f"e{seq}", "type": kind, "user_id": user, "ts": int(ts),
                       "session_id": session, **extra})

    # Favourite categories of each planted segment, from their own generator so that the main
    # random stream (and so every other planted pattern) is the same with or without segments.
    per_segment = max(1, min(3, c // max(cfg.segments, 1)))
    order = np.random.default_rng(cfg.seed + 1).permutation(c)
    segment_favourites = [order[(g * per_segment + np.arange(per_segment)) % c] for g in range(cfg.segments)]
    for u in range(cfg.users):
        user = f"u{u}"
        favourites = rng.choice(c, size=min(3, c), replace=False)
        if cfg.segments:
            favourites = segment_favourites[u % cfg.segments]
        mainstream = rng.choice([-1.0, 1.0])  # clicks popular items more, or less, than their fit says
        taste = cat_vec[favourites].mean(axis=0) + 0.3 * rng.normal(size=cfg.dim)
        ts = START_MS + int(rng.integers(0, 7 * 86_400_000))
        for s in range(cfg.sessions_per_user):
            taste = taste + cfg.drift * rng.normal(size=cfg.dim)
            session = f"{user}-s{s}"
            affinity = item_vec @ taste
            pref = np.exp(affinity - affinity.max()) * popularity
            pref /= pref.sum()
            length = 1 + rng.geometric(1.0 / max(cfg.session_length, 1.0))
            prev = -1
            for _ in range(length):
                if prev >= 0 and rng.random() < cfg.p_sequential:
                    item = int(successor[prev])
                else:
                    item = int(rng.choice(n, p=pref))
                ts += int(rng.integers(20_000, 120_000))
                emit("view", user, ts, session, item_id=item_ids[item])
                prev = item
                if rng.random() < cfg.impression_rate:
                    # A slate mixing popular items and items the user may like.
                    cand = rng.choice(n, size=cfg.slate_size, replace=False, p=0.5 * popularity + 0.5 * pref)
                    rec_id = f"r{seq}"
                    ts += 500
                    emit("impression", user, ts, session, rec_id=rec_id, items=[item_ids[j] for j in cand])
                    logit = (2.0 * (affinity[cand] - affinity.mean()) / affinity.std()
                             + 1.5 * mainstream * pop_z[cand] - 1.5)
                    fit = 1.0 / (1.0 + np.exp(-logit))
                    clicks = rng.random(cfg.slate_size) < bias * fit
                    for pos in np.flatnonzero(clicks):
                        ts += int(rng.integers(2_000, 15_000))
                        emit("click", user, ts, session, rec_id=rec_id, position=int(pos),
                             item_id=item_ids[cand[pos]])
                        prev = int(cand[pos])
            ts += int(rng.integers(3_600_000, 3 * 86_400_000))  # next session hours or days later
    events.sort(key=lambda e: (e["ts"], e["event_id"]))
    items = [{"item_id": item_ids[j], "category": f"c{cat_of[j]}",
              **item_text(int(cat_of[j]), item_vec[j] - cat_vec[cat_of[j]], cfg.seed + 2 + j)} for j in range(n)]
    truth = {"successor": [item_ids[j] for j in successor], "category": [f"c{x}" for x in cat_of]}
    if cfg.segments:
        truth["segment"] = {f"u{u}": u % cfg.segments for u in range(cfg.users)}
        truth["segment_categories"] = [[f"c{x}" for x in favs] for favs in segment_favourites]
    return SynthData(events=events, items=items, config=cfg, truth=truth)


def write_synth(data: SynthData, out_dir: str | Path) -> dict[str, Path]:
    """Write ``events.jsonl`` (one event per line, schema v1) and ``items.csv`` (item_id, category, title,
    description, tags joined by ``|``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    events_path, items_path = out / "events.jsonl", out / "items.csv"
    enc = msgspec.json.Encoder()
    with open(events_path, "wb") as f:
        for e in data.events:
            f.write(enc.encode(e) + b"\n")
    with open(items_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["item_id", "category", "title", "description", "tags"])
        w.writeheader()
        w.writerows({**it, "tags": "|".join(it.get("tags", []))} for it in data.items)
    (out / "synth.json").write_text(json.dumps(data.config.__dict__, indent=2) + "\n")
    paths = {"events": events_path, "items": items_path}
    if "segment" in data.truth:  # planted segments: for `streamrec segments --truth`
        paths["segments"] = out / "segments.csv"
        with open(paths["segments"], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["user_id", "segment"])
            w.writerows(data.truth["segment"].items())
    return paths
