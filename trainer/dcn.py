"""DCN-V2 ranker: cross network v2 and a deep MLP in parallel -> click probability.

Exported graph ``model.onnx``: ``sparse`` (int64 ``[batch, 5]``: the user's two
hashed buckets, the item's two, the item's hashed category) and ``dense``
(float32 ``[batch, len(DENSE_FEATURES)]``, raw values: the graph standardises
them with statistics learnt at training time) -> ``prob`` (float32 ``[batch]``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from streamrec.hashing import IdHasher
from streamrec.registry import Signature, TensorSpec
from streamrec.trainer.base import RecModel

DENSE_FEATURES = (
    "item_log_views",     # log1p of the item's positive interactions so far
    "item_ctr",           # smoothed clicks / impressions of the item so far
    "item_recency",       # log1p hours since anyone last interacted with the item
    "session_length",     # log1p positive interactions in the session so far
    "category_affinity",  # share of the user's history in the item's category (smoothed)
    "seq_score",          # the sequence model's score of the item for the user
    "content_sim",        # content: cosine of the item's content vector and the session's content profile
    "covis_score",        # log1p of the item's co-visitation weight from the session's recent items (0: none)
)
"""Appended only at the end: a ranker trained on the first N (``config["n_dense"]``) keeps working."""
SPARSE_FIELDS = ("user_h1", "user_h2", "item_h1", "item_h2", "category")
UNVARIED_STD = 1e6
"""The scale given to a dense feature that did not vary where its statistics were learnt: the network never
saw it as anything but 0, so whatever is served later stays near 0 (about 1e-6 of its value). Dividing by
its measured spread of ~0 instead turned the first real values into inputs of 1e4 to 1e6: measured in
`streamrec bench online` (world seed 3), the online ranker's first micro-batch had one ``item_ctr`` and one
``session_length`` for all rows, and every later logit was noise of that size."""
MIN_STD = 1e-4
"""Below this spread a feature counts as not varied (a feature that is one value plus float noise)."""
DENSE_CLIP = 10.0
"""Standardised dense inputs are clipped to +-this many standard deviations: a later distribution far wider
than the one the statistics saw stays a bounded input."""


class CrossV2(nn.Module):
    """One DCN-V2 cross layer: ``x0 * (W x + b) + x`` (full-rank W)."""

    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.lin.weight, gain=0.1)  # start near identity: x_{l+1} ~ x_l
        nn.init.zeros_(self.lin.bias)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.lin(x) + x


class DCNRanker(RecModel):
    """Click-probability ranker over hashed ids and dense features."""

    kind = "dcn"

    def __init__(self, user_buckets: int = 100_000, item_buckets: int = 50_000, cat_buckets: int = 1_000,
                 dim: int = 16, cross_layers: int = 2, hidden: tuple[int, ...] = (64, 32), dropout: float = 0.1,
                 n_dense: int = len(DENSE_FEATURES), item_bias: bool = False):
        super().__init__()
        self.config = dict(user_buckets=user_buckets, item_buckets=item_buckets, cat_buckets=cat_buckets, dim=dim,
                           cross_layers=cross_layers, hidden=tuple(hidden), dropout=dropout, n_dense=n_dense)
        if item_bias:
            self.config["item_bias"] = True
        self.user_hasher = IdHasher(user_buckets, "user")
        self.item_hasher = IdHasher(item_buckets, "item")
        self.cat_hasher = IdHasher(cat_buckets, "cat")
        self.users = nn.Embedding(user_buckets, dim, padding_idx=0)
        self.items = nn.Embedding(item_buckets, dim, padding_idx=0)
        self.cats = nn.Embedding(cat_buckets, dim, padding_idx=0)
        for emb in (self.users, self.items, self.cats):
            nn.init.normal_(emb.weight, std=0.01)
        # Optional first-order term: one logit offset per item (both hash rows summed), starting at 0. The
        # online trainer sets it from rewards (`streamrec.online.attraction`): how each item sells when shown.
        self.item_bias = nn.Embedding(item_buckets, 1) if item_bias else None
        if self.item_bias is not None:
            nn.init.zeros_(self.item_bias.weight)
        width = 3 * dim + n_dense
        self.cross = nn.ModuleList(CrossV2(width) for _ in range(cross_layers))
        layers: list[nn.Module] = []
        prev = width
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU(), nn.Dropout(dropout)]
            prev = h
        self.deep = nn.Sequential(*layers)
        self.head = nn.Linear(width + prev, 1)
        # Standardisation of the raw dense features, learnt from training data
        # (buffers, so they travel in the checkpoint and the ONNX graph).
        self.register_buffer("dense_mean", torch.zeros(n_dense))
        self.register_buffer("dense_std", torch.ones(n_dense))

    def set_dense_stats(self, dense: np.ndarray, only: np.ndarray | None = None) -> None:
        """Learn the standardisation of dense features from the training set (or of the features where the
        boolean mask ``only`` is set); a feature that does not vary there gets `UNVARIED_STD`."""
        dense = np.asarray(dense, dtype=np.float64)
        std = dense.std(0)
        mean = torch.from_numpy(dense.mean(0).astype(np.float32))
        std = torch.from_numpy(np.where(std >= MIN_STD, std, UNVARIED_STD).astype(np.float32))
        keep = torch.ones(len(std), dtype=torch.bool) if only is None else torch.from_numpy(np.asarray(only, bool))
        self.dense_mean = torch.where(keep, mean, self.dense_mean)
        self.dense_std = torch.where(keep, std, self.dense_std)

    def has_dense_stats(self) -> bool:
        """Whether the standardisation was learnt (a ranker that never saw data standardises nothing)."""
        return bool(self.dense_mean.any()) or not bool((self.dense_std == 1).all())

    def varied_dense(self) -> np.ndarray:
        """Per dense feature: did it vary where the statistics were learnt (older checkpoints marked one that
        did not with a spread of 1e-6)."""
        std = self.dense_std.numpy()
        return (std >= MIN_STD / 10) & (std < UNVARIED_STD)

    def logit(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Unnormalised click score ``[batch]``."""
        u = self.users(sparse[:, 0]) + self.users(sparse[:, 1])
        i = self.items(sparse[:, 2]) + self.items(sparse[:, 3])
        c = self.cats(sparse[:, 4])
        z = torch.clamp((dense - self.dense_mean) / self.dense_std, -DENSE_CLIP, DENSE_CLIP)
        x0 = torch.cat([u, i, c, z], dim=-1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        out = self.head(torch.cat([x, self.deep(x0)], dim=-1)).squeeze(-1)
        if self.item_bias is not None:
            out = out + (self.item_bias(sparse[:, 2]) + self.item_bias(sparse[:, 3])).squeeze(-1)
        return out

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Click probability ``[batch]``."""
        return torch.sigmoid(self.logit(sparse, dense))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Binary cross-entropy on click labels (optionally weighted, e.g. by inverse propensity; optionally with
        a fixed per-row ``offset`` added to the logit, e.g. the log examination probability of the row's rank)."""
        logit = self.logit(batch["sparse"], batch["dense"])
        if "offset" in batch:
            logit = logit + batch["offset"]
        weight = batch.get("weight")
        return nn.functional.binary_cross_entropy_with_logits(logit, batch["label"], weight=weight)

    def sparse_ids(self, users: list[str], items: list[str], categories: list[str]) -> np.ndarray:
        """Hash users, items and categories into the ``sparse`` input ``[n, 5]``."""
        return np.concatenate([self.user_hasher(users), self.item_hasher(items),
                               self.cat_hasher.first(categories)[:, None]], axis=1)

    def signature(self) -> Signature:
        """``model.onnx``: sparse ids and raw dense features -> click probability."""
        return Signature(inputs=[TensorSpec("sparse", "int64", [-1, len(SPARSE_FIELDS)]),
                                 TensorSpec("dense", "float32", [-1, self.config["n_dense"]])],
                         outputs=[TensorSpec("prob", "float32", [-1])])

    def example_inputs(self, batch: int = 2, length: int = 0) -> tuple[torch.Tensor, ...]:
        """Random sparse ids and dense features on the scale of real ones."""
        g = torch.Generator().manual_seed(batch)
        hi = min(self.users.num_embeddings, self.items.num_embeddings, self.cats.num_embeddings)
        sparse = torch.randint(0, hi, (batch, len(SPARSE_FIELDS)), generator=g)
        spread = torch.where(torch.from_numpy(self.varied_dense()), self.dense_std, torch.ones_like(self.dense_std))
        dense = torch.randn(batch, self.config["n_dense"], generator=g) * spread + self.dense_mean
        return sparse, dense
