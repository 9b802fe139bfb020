"""An offline closed loop of the simulator's world: how much can re-ranking by learned item attraction earn?

Not part of the product: an analysis that runs in seconds what `streamrec bench online` runs in minutes,
to compare ways of using the attraction estimate (`streamrec.online.attraction`) without Kafka, Redis or
the learner. Same hidden world (`World`), same pre-trained sequence model (`pretrained_sasrec`), three arms
of fixed user groups (user index mod 3), one slate per organic view:

- ``popularity``: popularity only, like the scorer's ``trending`` arm: all items by views and clicks so far
  (a click counts twice, as in the worker's trending weights), minus the session's items;
- ``frozen``: the candidates ordered by the sequence model's score (standardised over the candidates); the
  sequence model reads the user's items of earlier sessions, then the session's (``--history``);
- ``online``: the same plus the attraction offsets of every slate so far (of all arms; ``--evidence buffer``:
  of the last ``--buffer`` slates only, as the learner did until 2026-11-30), refreshed every ``--refresh``
  slates, combined as ``--policy`` says:
  ``add`` (offset times ``--weight``), ``fit`` (scales fitted by `attraction.calibrate`),
  ``oracle`` (the world's hidden appeal times ``--weight``: the ceiling of learning appeal), ``ucb:K``
  (offset plus K over the square root of the item's examinations: optimism for items seen rarely), or
  ``truth``: every item outside the session by its true attraction to the user now (the hidden click model
  itself, taste and appeal: what no learner can beat), or ``joint``: item and rank effects fitted together
  with the sequence score (`fit_joint`: the rank's examination is not taken from the click rate per rank,
  which also holds the ranker's own ordering and comes out too steep).

How close to the live bench: ``--pool live`` proposes what the scorer proposes (the best 100 by sequence
score and the 50 most popular, not the best 200), ``--score raw`` gives the online arm's fit the sequence
model's raw dot product (the scorer's ``seq_score`` feature) instead of the score standardised over each
slate's candidates, and ``--refresh`` sets how often the offsets are recomputed (live: every gate, about
600 slates).

The world is the bench's (`SimConfig` defaults) unless ``--attraction-bias``, ``--appeal`` or ``--drift``
say otherwise, as the flags of the same names of `streamrec bench online` do.

What it leaves out: the ranker's dense features and their fine-tuning, the sequence model's fine-tuning,
latency, new items' content. Prints one JSON line: CTR and the hidden model's expected reward per slate
(lower variance) per arm after the first quarter, and per arm the mean hidden appeal and taste match
(3 x item . user taste) of the top three items shown; for ``fit`` and ``joint`` also the final
examination estimate and the correlation of the items' offsets with their hidden appeal.

    .venv/bin/python docs/analysis/offline_loop.py --policy fit --seed 0
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict, deque
from types import SimpleNamespace

import numpy as np
import torch

from streamrec.harness.simulator import SimConfig, World
from streamrec.online.attraction import ItemEvidence, attraction_offsets, calibrate
from streamrec.harness.bench.online import PRETRAIN_STEPS, pretrained_sasrec
from streamrec.online.models import OnlineModels

ARMS = ("popularity", "frozen", "online")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slates", type=int, default=24_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", default="add", help="add | fit | joint | oracle | ucb:K | truth")
    p.add_argument("--pool", choices=["model", "live"], default="model",
                   help="candidates: the best 200 by sequence score (model), or the best 100 and the 50 most "
                        "popular, as the scorer (live)")
    p.add_argument("--score", choices=["z", "raw"], default="z",
                   help="the sequence score the online arm's fit reads: standardised over the candidates (z) "
                        "or the raw dot product, as the scorer's seq_score feature (raw)")
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--refresh", type=int, default=150)
    p.add_argument("--buffer", type=int, default=8000)
    p.add_argument("--evidence", choices=["all", "buffer"], default="all",
                   help="the offsets count the clicks of every slate so far, as the learner (all), or of the "
                        "last --buffer slates only, as it did until 2026-11-30 (buffer); the fit of their scale "
                        "reads the buffer either way")
    p.add_argument("--new-item-every", type=int, default=300, help="slates between new catalog items")
    p.add_argument("--pretrain-steps", type=int, default=PRETRAIN_STEPS,
                   help="training batches of the initial sequence model (as `streamrec bench online`)")
    p.add_argument("--history", type=int, default=20,
                   help="the user's items of earlier sessions put before the session's in the sequence model's "
                        "input, at most this many (as the scorer's STREAMREC_SCORER_HISTORY_ITEMS; 0: the session)")
    for flag in ("attraction_bias", "appeal", "drift"):
        p.add_argument("--" + flag.replace("_", "-"), type=float, default=getattr(SimConfig, flag),
                       help=f"the hidden world's {flag} (`SimConfig`; default {getattr(SimConfig, flag)})")
    a = p.parse_args()
    torch.set_num_threads(1)
    world = World(SimConfig(users=300, items=300, seed=a.seed, appeal=a.appeal, attraction_bias=a.attraction_bias,
                            drift=a.drift))
    seq = pretrained_sasrec(world, a.seed, a.pretrain_steps)
    seq.eval()
    rng = np.random.default_rng(a.seed + 11)
    arm_of = {u.user_id: ARMS[k % 3] for k, u in enumerate(world.users)}
    cats: dict[str, str] = {}
    ids: list[str] = []
    vectors = np.zeros((0, 0))

    def refresh_catalog() -> None:
        nonlocal ids, vectors
        ids = list(world.item_ids[world.retired:])
        cats.update({i: f"cat{c}" for i, c in zip(world.item_ids, world.item_cat)})
        with torch.no_grad():
            vectors = seq.item_vectors(torch.from_numpy(seq.item_hasher(ids)),
                                       torch.from_numpy(seq.cat_hasher.first([cats[i] for i in ids]))).numpy()

    refresh_catalog()
    # The learner's own position-bias estimate (a bare OnlineModels: only that method is used).
    models = OnlineModels.__new__(OnlineModels)
    models.examination, models.cfg = np.ones(1), SimpleNamespace(weight_cap=10.0)
    buf: deque = deque(maxlen=a.buffer)
    evidence = ItemEvidence(half_life_s=0.0)  # every slate's clicks (the replay has no event time)
    popularity: dict[str, float] = defaultdict(float)
    sessions: dict[str, list[str]] = {}
    history: dict[str, list[str]] = defaultdict(list)  # the user's items of earlier sessions, oldest first
    offsets: dict[str, float] = {}
    last_exam: list[np.ndarray] = [np.ones(1)]  # the examination of the last refresh (reported)
    scales = [1.0, a.weight]  # (sequence score, offset)
    shown = {arm: [0, 0] for arm in ARMS}  # slates, clicked slates (after the first quarter)
    top3 = {arm: [0.0, 0.0] for arm in ARMS}  # summed appeal, summed taste match
    expected = {arm: 0.0 for arm in ARMS}  # summed expected reward of the slates shown

    def refresh_offsets() -> None:
        nonlocal offsets
        exam = models.estimate_examination(list(buf))
        offsets = evidence.offsets(exam) if a.evidence == "all" else attraction_offsets(buf, exam)
        if a.policy.startswith("ucb:") and offsets:
            bonus = float(a.policy[4:])
            seen: dict[str, float] = defaultdict(float)
            for s in buf:
                for pos, item in enumerate(s.items):
                    seen[item] += exam[min(pos, len(exam) - 1)]
            offsets = {i: o + bonus / np.sqrt(seen[i] + 5.0) for i, o in offsets.items()}
        if a.policy == "joint" and offsets:  # (once the count estimate has its minimum of clicks)
            rows = [(s.z[pos], i, r > 0, pos) for s in buf for pos, (i, r) in enumerate(zip(s.items, s.rewards))]
            offsets, scales[0], exam = fit_joint(*(np.array(c) for c in zip(*rows)))
            scales[1] = 1.0  # the item effects are in logit units already
        last_exam[0] = exam
        if a.policy == "fit" and offsets:
            rows = [(s.seq[pos], offsets.get(i, 0.0), r > 0, exam[min(pos, len(exam) - 1)])
                    for s in buf for pos, (i, r) in enumerate(zip(s.items, s.rewards))]
            z, b, y, e = (np.array(c, dtype=np.float64) for c in zip(*rows))
            _, scales[0], scales[1] = calibrate(z, b, y, e)

    for n in range(a.slates):
        user = world.users[int(rng.integers(len(world.users)))]
        if user.steps_left <= 0 or user.user_id not in sessions:
            past = history[user.user_id]
            for item in sessions.get(user.user_id, ()):
                if item in past:
                    past.remove(item)
                past.append(item)
            world.start_session(user)
            sessions[user.user_id] = []
        user.steps_left -= 1
        view = world.browse(user)
        session = sessions[user.user_id]
        session.append(view)
        popularity[view] += 1
        past = [i for i in history[user.user_id] if i not in session][-a.history:] if a.history else []
        items, item_cats = seq.encode_sequences([past + session], cats)
        with torch.no_grad():
            score = vectors @ seq(torch.from_numpy(items), torch.from_numpy(item_cats)).numpy()[0]
        score[[k for k, i in enumerate(ids) if i in set(session)]] = -np.inf
        cand = np.argsort(-score)[:200]
        if a.pool == "live":
            popular = np.array([popularity[i] if np.isfinite(x) else -1.0 for i, x in zip(ids, score)])
            cand = np.array(list(dict.fromkeys([*cand[:100], *np.argsort(-popular)[:50]])))
            cand = cand[np.isfinite(score[cand])]
        mean, std = score[cand].mean(), score[cand].std() + 1e-9
        z = (score[cand] - mean) / std if a.score == "z" else score[cand]
        arm = arm_of[user.user_id]
        if arm == "popularity":  # every item, not the model's candidates
            pop = np.array([popularity[i] for i in ids], dtype=float)
            pop[[k for k, i in enumerate(ids) if i in set(session)]] = -1.0
            cand = np.argsort(-pop)[:200]
            rank = pop[cand]
        elif arm == "frozen":
            rank = z
        elif a.policy == "truth":  # every item not in the session, by what the hidden model will do with it
            cand = np.flatnonzero(np.isfinite(score))
            rank = world.attraction(user, [ids[c] for c in cand])
        elif a.policy == "oracle":
            rank = z + a.weight * world.item_appeal[[world.row[ids[c]] for c in cand]]
        else:
            rank = scales[0] * z + scales[1] * np.array([offsets.get(ids[c], 0.0) for c in cand])
        top = np.argsort(-rank)[:10]
        slate = [ids[cand[k]] for k in top]
        rewards = [0.0] * len(slate)
        expected_now = world.expected_reward(user, slate)
        for kind, item, pos in world.react(user, slate):
            if kind == "click":
                rewards[pos] = 1.0
                session.append(item)
                popularity[item] += 2
        # A popularity (or truth) slate has no sequence score (its candidates are not the model's): 0 in the fits.
        own_candidates = arm == "frozen" or (arm == "online" and a.policy != "truth")
        # ``z`` (joint only): the sequence score of every shown item, whichever arm chose it
        row = {i: k for k, i in enumerate(ids)} if a.policy == "joint" else {}
        buf.append(SimpleNamespace(items=slate, rewards=rewards,
                                   seq=[float(z[k]) if own_candidates else 0.0 for k in top],
                                   z=[float((score[row[i]] - mean) / std if a.score == "z" else score[row[i]])
                                      for i in slate] if row else []))
        evidence.add((buf[-1],))
        if n >= a.slates // 4:
            shown[arm][0] += 1
            shown[arm][1] += any(rewards)
            expected[arm] += expected_now
            rows = [world.row[i] for i in slate[:3]]
            top3[arm][0] += float(world.item_appeal[rows].mean())
            top3[arm][1] += float((3.0 * world.item_vecs[rows] @ user.taste).mean())
        if (n + 1) % a.refresh == 0:
            refresh_offsets()
        if a.new_item_every and (n + 1) % a.new_item_every == 0:
            world.add_item()
            refresh_catalog()
    ctr = {arm: c / max(k, 1) for arm, (k, c) in shown.items()}
    exp = {arm: expected[arm] / max(shown[arm][0], 1) for arm in ARMS}
    fitted = {}
    if a.policy in ("fit", "joint") and offsets:
        items = list(offsets)
        fitted = {"examination": [round(float(x), 3) for x in last_exam[0]],
                  "offset_appeal_corr": float(np.corrcoef([offsets[i] for i in items],
                                                          world.item_appeal[[world.row[i] for i in items]])[0, 1])}
    print(json.dumps({"policy": a.policy, "pool": a.pool, "score": a.score, **fitted, "weight": a.weight,
                      "evidence": a.evidence, "seed": a.seed, "ctr": ctr,
                      "online_vs_frozen": ctr["online"] / ctr["frozen"] - 1.0, "expected_reward": exp,
                      "online_vs_frozen_expected": exp["online"] / exp["frozen"] - 1.0,
                      "top3_appeal": {arm: v[0] / max(shown[arm][0], 1) for arm, v in top3.items()},
                      "top3_taste": {arm: v[1] / max(shown[arm][0], 1) for arm, v in top3.items()},
                      "scales": scales if a.policy in ("fit", "joint") else None}))


def fit_joint(z: np.ndarray, item: np.ndarray, clicked: np.ndarray, rank: np.ndarray, prior: float = 1.0,
              rounds: int = 4) -> tuple[dict[str, float], float, np.ndarray]:
    """Clicks as ``sigmoid(c + a * z + item effect + rank effect)``, fitted by alternating Newton steps: the
    item effects (shrunk towards 0 with precision ``prior``, about the hidden appeal's spread), the rank
    effects (rank 0 at 0, non-increasing, floored at log 0.05) and ``(c, a)`` by `calibrate`. The same item
    shown at different ranks by different arms is what tells the rank's effect from the item's.
    Returns the item effects, ``a`` and the examination per rank (exp of the rank effects)."""
    names, inv = np.unique(item, return_inverse=True)
    y = clicked.astype(np.float64)
    b, r = np.zeros(len(names)), np.zeros(int(rank.max()) + 1)
    zero = np.zeros_like(z, dtype=np.float64)

    def fit_score() -> tuple[float, float]:  # (c, a) with the item and rank effects as a fixed offset
        c, a_, _ = calibrate(z, zero, y, np.exp(b[inv] + r[rank]))
        return c, a_

    def prob(c: float, a_: float) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.clip(c + a_ * z + b[inv] + r[rank], -30, 30)))

    for _ in range(rounds):
        c, a_ = fit_score()
        for _ in range(2):
            p = prob(c, a_)
            b += (np.bincount(inv, y - p, len(names)) - prior * b) / (np.bincount(inv, p * (1 - p), len(names)) + prior)
            p = prob(c, a_)
            r += np.bincount(rank, y - p, len(r)) / (np.bincount(rank, p * (1 - p), len(r)) + 1e-6)
            r = np.maximum(np.minimum.accumulate(r - r[0]), np.log(0.05))
    return dict(zip(names.tolist(), b.tolist())), fit_score()[1], np.exp(r)


if __name__ == "__main__":
    main()
