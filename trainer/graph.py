"""LightGCN-style graph model on the user-item interaction graph (plain torch, sparse matmul).

Model (He et al., 2020, "LightGCN"): user and item embeddings ``e^(0)``
propagated ``L`` times over the symmetrically normalised bipartite graph,
``e^(k+1) = D^-1/2 A D^-1/2 e^(k)``, without weights or non-linearities; a
node's representation is the mean of its ``L+1`` layer embeddings. Trained
with the BPR loss on (user, clicked item, random item) triples plus L2 on the
batch's layer-0 embeddings, with early stopping on the validation items
(`streamrec.trainer.fit.fit`, the loop the other models use).

Serving: the live system sees anonymous sessions, not graph users, so a
session's vector is LightGCN's representation of a *new* user node linked to
the session's items, folded in from per-item vectors (derivation and the
numpy code the scorer runs: `streamrec.serving.graph`). The evaluation scores
users the same way, so its row measures what is served. Export: arrays only
(``item_vectors.npy``, ``fold_vectors.npy``, ``item_ids.npy``), checked
against the torch model within 1e-4 (`export_graph`).

>>> from streamrec.trainer.evaluate import LeaveOneOut
>>> split = LeaveOneOut.split({"u1": ["a", "b", "c", "d"], "u2": ["b", "c", "a", "d"]})
>>> model, _ = train_graph(split, ["a", "b", "c", "d"], GraphConfig(dim=8, epochs=2, progress=False))
>>> model.item_vectors().shape, graph_scorer(model, ["a", "b", "c", "d"])([["a"], []]).shape
(torch.Size([4, 8]), (2, 4))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streamrec.registry import Signature, TensorSpec
from streamrec.serving.graph import KIND, fold_in
from streamrec.trainer.base import RecModel, seed_everything
from streamrec.trainer.evaluate import LeaveOneOut
from streamrec.trainer.fit import FitConfig, FitResult, fit

ATOL = 1e-4


@dataclass
class GraphConfig:
    """Sizes and optimisation of the graph model (defaults: LightGCN's paper settings, scaled down)."""

    dim: int = 64
    layers: int = 3
    l2: float = 1e-4
    """L2 penalty on the batch's layer-0 embeddings (LightGCN's regulariser)."""
    history: int = 20
    """Most recent items of a session folded into its vector at serve time."""
    decay: float = 0.8
    """Recency weight per step back when folding in (1.0 = LightGCN's exact fold-in; 0.8 measured
    better on the synthetic sessions, where recent items predict the next best)."""
    epochs: int = 200
    batch_size: int = 2048
    lr: float = 1e-2
    patience: int = 5
    seed: int = 0
    progress: bool = True
    checkpoint: str | None = None

    def fit_config(self) -> FitConfig:
        # L2 lives in the loss, on the batch's rows only (as in LightGCN): no decoupled weight decay.
        return FitConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=0.0,
                         patience=self.patience, seed=self.seed, progress=self.progress, checkpoint=self.checkpoint)


class LightGCN(RecModel):
    """Embeddings of users and items propagated over the normalised interaction graph."""

    kind = KIND

    def __init__(self, n_users: int, n_items: int, dim: int = 64, layers: int = 3, l2: float = 1e-4,
                 history: int = 20, decay: float = 0.8):
        super().__init__()
        self.config = dict(n_users=n_users, n_items=n_items, dim=dim, layers=layers, l2=l2, history=history,
                           decay=decay)
        self.n_users, self.n_items, self.layers, self.l2 = n_users, n_items, layers, l2
        self.history, self.decay = history, decay
        self.embedding = nn.Embedding(n_users + n_items, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.register_buffer("edges", torch.zeros(2, 0, dtype=torch.long))
        self.register_buffer("degree", torch.zeros(n_users + n_items))
        self._adj: torch.Tensor | None = None

    def set_graph(self, users: np.ndarray, items: np.ndarray) -> None:
        """The training edges (user row, item row); duplicates count once."""
        pairs = np.unique(np.stack([np.asarray(users, np.int64), np.asarray(items, np.int64)]), axis=1)
        self.edges = torch.from_numpy(pairs)
        self.degree = torch.bincount(torch.cat([self.edges[0], self.edges[1] + self.n_users]),
                                     minlength=self.n_users + self.n_items).float()
        self._adj = None

    def adjacency(self) -> torch.Tensor:
        """``D^-1/2 A D^-1/2`` of the bipartite graph, sparse, built once per graph."""
        if self._adj is None:
            u, i = self.edges[0], self.edges[1] + self.n_users
            rows, cols = torch.cat([u, i]), torch.cat([i, u])
            inv = self.degree.clamp(min=1).rsqrt()
            n = self.n_users + self.n_items
            self._adj = torch.sparse_coo_tensor(torch.stack([rows, cols]), inv[rows] * inv[cols], (n, n),
                                                check_invariants=False).coalesce()
        return self._adj

    def layer_embeddings(self) -> list[torch.Tensor]:
        """``[e^(0), ..., e^(L)]``, each ``[users + items, dim]``."""
        adj, out = self.adjacency(), [self.embedding.weight]
        for _ in range(self.layers):
            out.append(torch.sparse.mm(adj, out[-1]))
        return out

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final (mean over layers) user and item representations."""
        final = torch.stack(self.layer_embeddings()).mean(0)
        return final[:self.n_users], final[self.n_users:]

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """BPR on (user, pos, neg) + L2 on their layer-0 rows; ``neg`` drawn uniformly when absent."""
        user, pos = batch["user"], batch["pos"]
        neg = batch.get("neg")
        if neg is None:
            neg = torch.randint(0, self.n_items, pos.shape)
        users, items = self.propagate()
        u = users[user]
        margin = (u * items[pos]).sum(-1) - (u * items[neg]).sum(-1)
        e0 = self.embedding.weight
        reg = (e0[user].pow(2).sum() + e0[self.n_users + pos].pow(2).sum() + e0[self.n_users + neg].pow(2).sum())
        return -nn.functional.logsigmoid(margin).mean() + self.l2 * reg / (2 * len(user))

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        """``[items, dim]`` propagated item representations (what users are scored against)."""
        return self.propagate()[1]

    @torch.no_grad()
    def fold_vectors(self) -> torch.Tensor:
        """``[items, dim]`` each item's share of a folded-in user vector (`streamrec.serving.graph`)."""
        layers = self.layer_embeddings()[:self.layers]
        deg = self.degree[self.n_users:].clamp(min=1).sqrt().unsqueeze(1)
        return torch.stack(layers).sum(0)[self.n_users:] / ((self.layers + 1) * deg)

    def forward(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Folded-in user vectors from item rows ``[b, l]`` and their weights ``[b, l]`` (0 = padding)."""
        fold = self.fold_vectors()
        norm = weights.sum(1, keepdim=True).clamp(min=1e-12).sqrt()
        return torch.einsum("bl,bld->bd", weights, fold[rows]) / norm

    def history_inputs(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded rows and recency weights of histories (oldest first), as `forward` takes them."""
        rows = [r[-self.history:] for r in rows]
        length = max(1, max((len(r) for r in rows), default=1))
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        w = torch.zeros(len(rows), length, dtype=torch.float32)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = torch.tensor(r, dtype=torch.long)
            w[b, :len(r)] = torch.tensor([self.decay ** (len(r) - 1 - j) for j in range(len(r))])
        return ids, w

    def signature(self) -> Signature:
        return Signature(inputs=[TensorSpec("rows", "int64", [-1, -1]), TensorSpec("weights", "float32", [-1, -1])],
                         outputs=[TensorSpec("user_vec", "float32", [-1, self.embedding.embedding_dim])])

    def example_inputs(self, batch: int = 2, length: int = 5) -> tuple[torch.Tensor, ...]:
        return self.history_inputs([list(np.random.randint(0, self.n_items, length)) for _ in range(batch)])


@dataclass
class GraphData:
    """The training graph and the BPR triples derived from a leave-one-out split."""

    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    users: np.ndarray
    items: np.ndarray
    n_users: int
    stats: dict = field(default_factory=dict)


def graph_data(split: LeaveOneOut, catalog: list[str], seed: int = 0) -> GraphData:
    """One user node per training sequence; one BPR row per (user, item) edge; validation: each evaluated
    user's second-last item against one random item."""
    index = {item: j for j, item in enumerate(catalog)}
    users, items = [], []
    for u, seq in enumerate(split.train):
        for item in dict.fromkeys(seq):
            users.append(u)
            items.append(index[item])
    users, items = np.array(users, np.int64), np.array(items, np.int64)
    rng = np.random.default_rng(seed)
    # The first len(split.users) training sequences are the evaluated users' (LeaveOneOut.split).
    val_user = np.arange(len(split.users), dtype=np.int64)
    val_pos = np.array([index[t] for t in split.val_target], np.int64)
    val = {"user": val_user, "pos": val_pos, "neg": rng.integers(0, len(catalog), len(val_user))}
    return GraphData(train={"user": users, "pos": items}, val=val, users=users, items=items,
                     n_users=len(split.train), stats={"edges": len(users), "users": len(split.train)})


def train_graph(split: LeaveOneOut, catalog: list[str], cfg: GraphConfig | None = None) -> tuple[LightGCN, FitResult]:
    """Fit LightGCN on the split's training sequences; validation BPR loss decides early stopping."""
    cfg = cfg or GraphConfig()
    seed_everything(cfg.seed)
    data = graph_data(split, catalog, cfg.seed)
    if not len(data.users):
        raise ValueError("the graph model has no training interactions (every sequence is shorter than 3)")
    model = LightGCN(data.n_users, len(catalog), dim=cfg.dim, layers=cfg.layers, l2=cfg.l2, history=cfg.history,
                     decay=cfg.decay)
    model.set_graph(data.users, data.items)
    result = fit(model, data.train, data.val, cfg.fit_config(), label="graph")
    return model, result


def graph_scorer(model: LightGCN, catalog: list[str]):
    """A `ScoreFn` over ``catalog`` (the training catalog) as the scorer scores: folded-in session vectors."""
    items, fold = model.item_vectors().numpy(), model.fold_vectors().numpy()
    index = {item: j for j, item in enumerate(catalog)}

    def score(histories: list[list[str]]) -> np.ndarray:
        rows = [[index[i] for i in h[-model.history:] if i in index] for h in histories]
        return fold_in(fold, rows, model.decay) @ items.T
    return score


# --------------------------------------------------------------------------- #
# export
# --------------------------------------------------------------------------- #
class GraphExportError(RuntimeError):
    """The exported arrays do not reproduce the torch model."""


def export_graph(model: LightGCN, out_dir: str | Path, catalog: list[str],
                 real_histories: list[list[str]] | None = None, atol: float = ATOL):
    """Write the arrays the scorer loads and check them against torch; returns an `Exported`.

    Parity: the numpy fold-in the scorer runs (`streamrec.serving.graph.fold_in`) on the
    written arrays equals the torch `LightGCN.forward`, and so do the scores, on random
    histories, length-1 and empty ones, and ``real_histories`` when given.
    """
    from streamrec.trainer.export import Exported

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model.eval()
    with torch.no_grad():
        items, fold = model.item_vectors().numpy().astype(np.float32), model.fold_vectors().numpy().astype(np.float32)
    files = {"item_vectors.npy": out / "item_vectors.npy", "fold_vectors.npy": out / "fold_vectors.npy",
             "item_ids.npy": out / "item_ids.npy"}
    np.save(files["item_vectors.npy"], items, allow_pickle=False)
    np.save(files["fold_vectors.npy"], fold, allow_pickle=False)
    np.save(files["item_ids.npy"], np.array(catalog, dtype=str), allow_pickle=False)
    diff = graph_parity(model, out, catalog, real_histories, atol)
    extra = {"history": model.history, "decay": model.decay, "layers": model.layers,
             "dim": model.embedding.embedding_dim, "config": model.config,
             "user_vector": "fold-in: sum_i w_i fold_i / sqrt(sum_i w_i) over the session's recent items",
             "score": "dot(user_vec, item_vec)"}
    return Exported(files=files, signatures={}, extra=extra, opset=None, seconds=time.perf_counter() - t0,
                    max_abs_diff={"arrays": diff})


@torch.no_grad()
def graph_parity(model: LightGCN, folder: str | Path, catalog: list[str],
                 real_histories: list[list[str]] | None = None, atol: float = ATOL) -> float:
    """Largest |numpy on the written arrays - torch| over user vectors and scores; raises above ``atol``."""
    folder = Path(folder)
    items = np.load(folder / "item_vectors.npy", allow_pickle=False)
    fold = np.load(folder / "fold_vectors.npy", allow_pickle=False)
    rng = np.random.default_rng(0)
    n = len(catalog)
    batches = [[list(rng.integers(0, n, rng.integers(1, 2 * model.history))) for _ in range(8)], [[0]], [[], [n - 1]]]
    if real_histories:
        index = {item: j for j, item in enumerate(catalog)}
        batches.append([[index[i] for i in h if i in index] for h in real_histories[:64]])
    worst = 0.0
    torch_items = model.item_vectors()
    for rows in batches:
        expected = model(*model.history_inputs(rows)).numpy()
        got = fold_in(fold, [r[-model.history:] for r in rows], model.decay)
        for a, b in ((got, expected), (got @ items.T, expected @ torch_items.numpy().T)):
            d = float(np.max(np.abs(a - b))) if a.size else 0.0
            if a.shape != b.shape or not np.isfinite(a).all() or d > atol:
                raise GraphExportError(f"graph arrays differ from torch by {d:.2e} (> {atol:g}) on "
                                       f"{len(rows)} histories (shapes {a.shape} vs {b.shape})")
            worst = max(worst, d)
    return worst
