"""Torch weights that travel with a registry version (``weights.pt``), so the online
trainer can fine-tune exactly the model the scorer serves.

The ONNX graph alone cannot be turned back into the torch module reliably
(the exporter renames and folds parameters), hence this file beside it.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

WEIGHTS = "weights.pt"


def save_weights(model, out_dir: str | Path) -> Path:
    """Write ``weights.pt`` (the model's class kind, config and state dict) into ``out_dir``."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / WEIGHTS
    torch.save({"kind": model.kind, "config": model.config, "state": model.state_dict()}, path)
    return path


def load_weights(data: bytes):
    """Rebuild the model from the bytes of a ``weights.pt``."""
    from streamrec.trainer.dcn import DCNRanker
    from streamrec.trainer.sasrec import SASRec

    # weights_only: a registry file must never be able to run code when it is read.
    blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    cls = {"dcn": DCNRanker, "sasrec": SASRec}[blob["kind"]]
    model = cls(**blob["config"])
    if blob["kind"] == "sasrec":  # the catalog buffers change size with the catalog
        model.catalog_items = blob["state"]["catalog_items"].clone()
        model.catalog_cats = blob["state"]["catalog_cats"].clone()
    model.load_state_dict(blob["state"])
    return model
