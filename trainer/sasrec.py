"""SASRec-style sequence model: causal self-attention over a user's recent items.

Exported graph ``encoder.onnx``: ``seq_items`` (int64 ``[batch, length, 2]``,
the two `IdHasher` buckets of each item, left-padded with 0) and
``seq_cats`` (int64 ``[batch, length]``, hashed category, 0 = none) ->
``user_vec`` (float32 ``[batch, dim]``). The score of an item is the dot
product of ``user_vec`` with the item's vector; item vectors come from a
second graph ``item_encoder.onnx`` (``item_ids`` ``[n, 2]``, ``item_cats``
``[n]`` -> ``item_vec`` ``[n, dim]``) so items added after training get
vectors without torch, and the catalog's vectors ship as ``item_vectors.npy``.

An item's vector is the sum of its two hashed rows in one item table plus its
category row, so a cold item still carries its category's signal.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from streamrec.hashing import IdHasher, encode_sequences
from streamrec.registry import Signature, TensorSpec
from streamrec.trainer.base import RecModel

_NEG = -1e9  # finite "minus infinity": an all-padding row stays finite (uniform attention, no NaN)


class _Block(nn.Module):
    """Pre-norm transformer block with an explicit causal + padding mask (exports to plain ONNX ops)."""

    def __init__(self, dim: int, heads: int, dropout: float, ff_mult: int = 2):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(ff_mult * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, l, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, l, h, d // h).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // h)
        att = att.masked_fill(~allowed, _NEG).softmax(-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, l, d)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.ff(self.ln2(x)))


class SASRec(RecModel):
    """Next-item model: item sequence -> user vector, trained with full softmax over the catalog."""

    kind = "sasrec"

    def __init__(self, item_buckets: int = 50_000, cat_buckets: int = 1_000, dim: int = 64, layers: int = 2,
                 heads: int = 2, max_len: int = 50, dropout: float = 0.2, ff_mult: int = 2):
        super().__init__()
        self.config = dict(item_buckets=item_buckets, cat_buckets=cat_buckets, dim=dim, layers=layers,
                           heads=heads, max_len=max_len, dropout=dropout, ff_mult=ff_mult)
        self.max_len = max_len
        self.item_hasher = IdHasher(item_buckets, "item")
        self.cat_hasher = IdHasher(cat_buckets, "cat")
        # Sparse gradients: a step touches only the rows of the batch and the catalog, so the table
        # can be sized for few collisions without paying for its untouched rows (`SparseAwareAdam`).
        self.items = nn.Embedding(item_buckets, dim, padding_idx=0, sparse=True)
        self.cats = nn.Embedding(cat_buckets, dim, padding_idx=0, sparse=True)
        self.pos = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout, ff_mult) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        for emb in (self.items, self.cats):
            nn.init.normal_(emb.weight, std=0.05)
            with torch.no_grad():
                emb.weight[0].zero_()
        # The training catalog (hashed), set by `set_catalog`; the softmax runs over it.
        self.register_buffer("catalog_items", torch.zeros(0, 2, dtype=torch.long), persistent=True)
        self.register_buffer("catalog_cats", torch.zeros(0, dtype=torch.long), persistent=True)

    # -- item side ------------------------------------------------------------ #
    def item_vectors(self, item_ids: torch.Tensor, item_cats: torch.Tensor) -> torch.Tensor:
        """Vectors of items given their hashed ids ``[..., 2]`` and hashed categories ``[...]``."""
        return self.items(item_ids).sum(-2) + self.cats(item_cats)

    def set_catalog(self, item_ids: list[str], categories: list[str]) -> None:
        """Fix the items the softmax (and the exported item matrix) ranges over."""
        self.catalog_items = torch.from_numpy(self.item_hasher(item_ids))
        self.catalog_cats = torch.from_numpy(self.cat_hasher.first(categories))

    def catalog_vectors(self) -> torch.Tensor:
        """``[n_catalog, dim]`` vectors of the training catalog."""
        return self.item_vectors(self.catalog_items, self.catalog_cats)

    # -- sequence side ---------------------------------------------------------- #
    def encode_all(self, seq_items: torch.Tensor, seq_cats: torch.Tensor) -> torch.Tensor:
        """Hidden state at every position ``[batch, length, dim]`` (left-padded input)."""
        length = seq_items.shape[1]
        present = (seq_items[..., 0] > 0).unsqueeze(-1)
        # Positions count back from the newest item, so the last slot always
        # means "most recent" whatever the padded length.
        pos = self.pos.weight[self.max_len - length:]
        x = self.item_vectors(seq_items, seq_cats) * math.sqrt(self.items.embedding_dim) + pos
        x = self.drop(x) * present
        idx = torch.arange(length, device=seq_items.device)
        causal = idx.unsqueeze(1) >= idx.unsqueeze(0)                       # [L, L]
        allowed = causal.unsqueeze(0).unsqueeze(0) & present.squeeze(-1)[:, None, None, :]
        for block in self.blocks:
            x = block(x, allowed) * present
        return self.ln(x)

    def forward(self, seq_items: torch.Tensor, seq_cats: torch.Tensor) -> torch.Tensor:
        """User vector ``[batch, dim]``: the state after the most recent item."""
        return self.encode_all(seq_items, seq_cats)[:, -1]

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the next item at every non-padding position, over the whole catalog."""
        items, cats, target = _trim_padding(batch["seq_items"], batch["seq_cats"], batch["target"])
        h = self.encode_all(items, cats)
        # Logits only where there is a target: most positions of short histories are padding, and the
        # catalog-wide product is most of the cost.
        scored = target >= 0
        logits = h[scored] @ self.catalog_vectors().T
        return nn.functional.cross_entropy(logits, target[scored])

    # -- data preparation --------------------------------------------------------- #
    def encode_sequences(self, seqs: list[list[str]], categories: dict[str, str],
                         length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Hash and left-pad item sequences (keeping the newest ``max_len``) for the encoder."""
        return encode_sequences(seqs, categories, self.item_hasher, self.cat_hasher, length or self.max_len)

    def training_data(self, seqs: list[list[str]], categories: dict[str, str],
                      catalog_index: dict[str, int], all_windows: bool = False) -> dict[str, np.ndarray]:
        """Inputs and next-item targets (catalog indices, -100 = ignore) for each sequence.

        With ``all_windows``, a sequence longer than ``max_len + 1`` is cut into
        consecutive windows so every transition is trained on, not only the newest ``max_len``.
        """
        if all_windows:
            step = self.max_len
            seqs = [s[max(0, end - step - 1):end] for s in seqs for end in range(len(s), 1, -step)]
        inputs = [s[:-1] for s in seqs]
        items, cats = self.encode_sequences(inputs, categories)
        target = np.full((len(seqs), self.max_len), -100, dtype=np.int64)
        for r, seq in enumerate(seqs):
            nxt = seq[1:][-self.max_len:]
            if nxt:
                target[r, self.max_len - len(nxt):] = [catalog_index[i] for i in nxt]
        return {"seq_items": items, "seq_cats": cats, "target": target}

    # -- export description --------------------------------------------------------- #
    def signature(self) -> Signature:
        """``encoder.onnx``: sequences -> user vectors."""
        d = self.items.embedding_dim
        return Signature(inputs=[TensorSpec("seq_items", "int64", [-1, -1, 2]),
                                 TensorSpec("seq_cats", "int64", [-1, -1])],
                         outputs=[TensorSpec("user_vec", "float32", [-1, d])])

    def item_signature(self) -> Signature:
        """``item_encoder.onnx``: hashed items -> item vectors."""
        d = self.items.embedding_dim
        return Signature(inputs=[TensorSpec("item_ids", "int64", [-1, 2]), TensorSpec("item_cats", "int64", [-1])],
                         outputs=[TensorSpec("item_vec", "float32", [-1, d])])

    def example_inputs(self, batch: int = 2, length: int = 5) -> tuple[torch.Tensor, ...]:
        """Random hashed sequences, the first row left-padded."""
        g = torch.Generator().manual_seed(batch * 1000 + length)
        items = torch.randint(1, self.items.num_embeddings, (batch, length, 2), generator=g)
        cats = torch.randint(1, self.cats.num_embeddings, (batch, length), generator=g)
        items[0, : length // 2] = 0
        cats[0, : length // 2] = 0
        return items, cats


def _trim_padding(items: torch.Tensor, cats: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the leading columns that are padding in every row of the batch.

    Exact: positions count back from the newest item and padded keys are masked, so the
    states of real positions do not depend on how much padding precedes them.
    """
    present = (items[..., 0] > 0).any(0)
    first = int(present.float().argmax()) if bool(present.any()) else items.shape[1] - 1
    return items[:, first:], cats[:, first:], target[:, first:]


class ItemEncoder(nn.Module):
    """The item side of `SASRec` as its own graph (for items unknown at export time)."""

    def __init__(self, model: SASRec):
        super().__init__()
        self.model = model

    def forward(self, item_ids: torch.Tensor, item_cats: torch.Tensor) -> torch.Tensor:
        return self.model.item_vectors(item_ids, item_cats)
