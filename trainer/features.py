"""Ranker training samples with point-in-time dense features.

One pass over the history in time order keeps the same running state the
stream worker keeps in Redis (item counts, CTR, last-seen time, the user's
category counts, the session length), and each candidate gets its features
from the state *before* its own event, so nothing leaks from the future.

Candidates come from ``impression`` rows when the history has them (label:
a click with the same ``rec_id`` on that item), otherwise each positive
interaction is a positive sample with ``negatives`` items drawn by
popularity as negatives (MovieLens and other logs without impressions).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from streamrec.trainer.data import POSITIVE_TYPES, Interactions
from streamrec.trainer.dcn import DENSE_FEATURES

SESSION_GAP_MS = 30 * 60 * 1000  # docs/architecture.md: a session ends after 30 min of inactivity
NEVER_HOURS = 24 * 365.0
SEQ_SCORE = DENSE_FEATURES.index("seq_score")
CONTENT_SIM = DENSE_FEATURES.index("content_sim")


@dataclass
class RankerSamples:
    """Candidates in time order with labels, features and the user's history prefix for the sequence score."""

    users: list[str]
    items: list[str]
    cats: list[str]
    ts: np.ndarray
    label: np.ndarray
    dense: np.ndarray
    prefix: np.ndarray
    """Index into ``prefixes`` of the user's recent items at candidate time."""
    prefixes: list[list[str]]

    def __len__(self) -> int:
        return len(self.label)

    def take(self, idx: np.ndarray) -> "RankerSamples":
        """A subset (prefix list shared)."""
        return RankerSamples([self.users[i] for i in idx], [self.items[i] for i in idx], [self.cats[i] for i in idx],
                             self.ts[idx], self.label[idx], self.dense[idx], self.prefix[idx], self.prefixes)

    def time_split(self, test: float = 0.2, val: float = 0.1) -> tuple["RankerSamples", ...]:
        """Train / validation / test by time: the newest ``test`` share is test, the ``val`` share before it val."""
        n = len(self)
        a, b = int(n * (1 - test - val)), int(n * (1 - test))
        return self.take(np.arange(0, a)), self.take(np.arange(a, b)), self.take(np.arange(b, n))


def build_samples(inter: Interactions, negatives: int = 4, max_prefix: int = 50, seed: int = 0) -> RankerSamples:
    """Walk the history once and emit labelled candidates with their features."""
    rng = np.random.default_rng(seed)
    has_impressions = bool(np.any(inter.kind == "impression"))
    clicked = {(r, i) for r, i, k in zip(inter.rec_id, inter.item, inter.kind) if k == "click" and r}
    views, clicks, imps, last_seen = Counter(), Counter(), Counter(), {}
    user_cats: dict[str, Counter] = {}
    user_len, user_last, user_session, session_len = Counter(), {}, {}, Counter()
    recent: dict[str, deque] = {}
    prefix_of: dict[str, int] = {}  # user -> index of the snapshot of their current history
    prefixes: list[list[str]] = []
    seen_items: list[str] = []  # every positive so far: sampling from it is sampling by popularity
    out_u, out_i, out_c, out_ts, out_y, out_x, out_p = [], [], [], [], [], [], []

    def emit(user: str, item: str, ts: int, label: float) -> None:
        cat = inter.category(item)
        hours = (ts - last_seen[item]) / 3_600_000 if item in last_seen else NEVER_HOURS
        counts = user_cats.get(user)
        affinity = ((counts[cat] if counts else 0) + 0.1) / (user_len[user] + 1.0)
        out_x.append((np.log1p(views[item]), (clicks[item] + 1.0) / (imps[item] + 10.0), np.log1p(max(hours, 0.0)),
                      np.log1p(session_len[user_session.get(user, "")]), affinity, 0.0, 0.0, 0.0))
        if user not in prefix_of:
            prefix_of[user] = len(prefixes)
            prefixes.append(list(recent.get(user, ())))
        out_u.append(user), out_i.append(item), out_c.append(cat), out_ts.append(ts), out_y.append(label)
        out_p.append(prefix_of[user])

    for user, item, ts, kind, session, rec in zip(inter.user, inter.item, inter.ts, inter.kind, inter.session,
                                                  inter.rec_id):
        ts = int(ts)
        if not session:  # derive sessions by the inactivity gap
            n = user_session.get(user, f"{user}#0")
            if user in user_last and ts - user_last[user] > SESSION_GAP_MS:
                n = f"{user}#{ts}"
            session = n
        user_session[user], user_last[user] = session, ts
        if kind == "impression":
            emit(user, item, ts, float((rec, item) in clicked))
            imps[item] += 1
            continue
        if kind not in POSITIVE_TYPES:
            continue
        if not has_impressions:
            emit(user, item, ts, 1.0)
            for _ in range(negatives if seen_items else 0):
                neg = seen_items[rng.integers(len(seen_items))]
                if neg != item:
                    emit(user, neg, ts, 0.0)
        views[item] += 1
        clicks[item] += kind == "click"
        last_seen[item] = ts
        user_cats.setdefault(user, Counter())[inter.category(item)] += 1
        user_len[user] += 1
        session_len[session] += 1
        recent.setdefault(user, deque(maxlen=max_prefix)).append(item)
        prefix_of.pop(user, None)  # history changed: next candidate takes a new snapshot
        seen_items.append(item)
    dense = np.array(out_x, dtype=np.float32).reshape(-1, len(DENSE_FEATURES))
    return RankerSamples(out_u, out_i, out_c, np.array(out_ts, dtype=np.int64), np.array(out_y, dtype=np.float32),
                         dense, np.array(out_p, dtype=np.int64), prefixes)


def add_seq_scores(samples: RankerSamples, sasrec, categories: dict[str, str], batch: int = 512) -> None:
    """Fill the ``seq_score`` feature with the sequence model's score (in place)."""
    import torch

    sasrec.eval()
    used = np.unique(samples.prefix)
    user_vecs = np.zeros((len(samples.prefixes), sasrec.items.embedding_dim), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(used), batch):
            rows = used[start:start + batch]
            items, cats = sasrec.encode_sequences([samples.prefixes[r] for r in rows], categories)
            user_vecs[rows] = sasrec(torch.from_numpy(items), torch.from_numpy(cats)).numpy()
        item_ids = torch.from_numpy(sasrec.item_hasher(samples.items))
        item_cats = torch.from_numpy(sasrec.cat_hasher.first(samples.cats))
        item_vecs = sasrec.item_vectors(item_ids, item_cats).numpy()
    samples.dense[:, SEQ_SCORE] = (user_vecs[samples.prefix] * item_vecs).sum(1)


def add_content_sims(samples: RankerSamples, vectors: dict[str, np.ndarray], profile_items: int = 10,
                     decay: float = 0.8) -> None:
    """Fill the ``content_sim`` feature (in place): cosine of each candidate's content vector with the
    content profile of the user's newest ``profile_items`` items (`streamrec.trainer.content.profile_vectors`,
    as the scorer's `session_profiles`); 0 where either is unknown."""
    from streamrec.trainer.content import profile_vectors

    if not vectors or not len(samples):
        return
    ids = list(vectors)
    row = {i: r for r, i in enumerate(ids)}
    mat = np.stack([vectors[i] for i in ids]).astype(np.float32)
    used = np.unique(samples.prefix)
    hist = [[row[i] for i in samples.prefixes[p][-profile_items:] if i in row] for p in used]
    profiles = np.zeros((len(samples.prefixes), mat.shape[1]), dtype=np.float32)
    profiles[used] = profile_vectors(mat, hist, decay)
    cand = np.array([row.get(i, -1) for i in samples.items], dtype=np.int64)
    item_vecs = np.where((cand >= 0)[:, None], mat[np.maximum(cand, 0)], 0.0)
    samples.dense[:, CONTENT_SIM] = (profiles[samples.prefix] * item_vecs).sum(1)
