"""The one small interface every model shares (STYLE.md point 7).

A model is a ``torch.nn.Module`` that can

- ``loss(batch)`` / ``fit_batch(batch, optimizer)``: learn from one batch
  (a dict of tensors with a common first dimension);
- ``signature()``: describe its exported inputs and outputs;
- ``example_inputs(...)``: produce inputs for export and parity checks;
- ``config``: a plain dict that rebuilds it (``type(model)(**config)``).

so the offline loop, the online trainer, the exporter and the evaluation
treat the sequence model and the ranker alike.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from streamrec.registry import Signature


DEVICES = ("cpu", "cuda", "auto")
"""Accepted values of ``FitConfig.device`` (``--device``): auto = cuda when torch sees a GPU, else cpu."""


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``FitConfig.device`` / ``--device`` value (cpu, cuda or auto)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICES:
        raise ValueError(f"FitConfig.device / --device is {name!r}: use one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("FitConfig.device / --device is 'cuda' but torch sees no CUDA GPU "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda}): use --device cpu or auto")
    return torch.device(name)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's weights live (CPU for a model without parameters)."""
    return next(model.parameters(), torch.empty(0)).device


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so a run with the same seed gives the same weights."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class RecModel(torch.nn.Module):
    """Base class: subclasses implement ``loss``, ``signature``, ``example_inputs`` and ``export_module``."""

    kind: str = "model"
    config: dict

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        """Mean training loss of one batch."""
        raise NotImplementedError

    def fit_batch(self, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                  clip: float = 5.0) -> float:
        """One optimisation step on ``batch``; returns the batch loss."""
        self.train()
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        loss.backward()
        # Clipping keeps an occasional huge-gradient batch (e.g. a very popular
        # item in softmax) from undoing an epoch of training.
        torch.nn.utils.clip_grad_norm_(self.parameters(), clip)
        optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def eval_loss(self, data: dict[str, np.ndarray], batch_size: int = 512) -> float:
        """Mean loss over a whole dataset (validation), weighted by batch size; runs where the model is."""
        self.eval()
        device = model_device(self)
        n = len(next(iter(data.values())))
        total = 0.0
        for start in range(0, n, batch_size):
            batch = {k: torch.from_numpy(v[start:start + batch_size]).to(device, non_blocking=True)
                     for k, v in data.items()}
            total += float(self.loss(batch)) * len(next(iter(batch.values())))
        return total / max(n, 1)

    def signature(self) -> Signature:  # pragma: no cover - abstract
        """Names, dtypes and shapes (``-1`` = dynamic) of the exported inputs and outputs."""
        raise NotImplementedError

    def example_inputs(self, batch: int = 2, length: int = 5) -> tuple[torch.Tensor, ...]:  # pragma: no cover
        """Random valid inputs for export and parity tests."""
        raise NotImplementedError

    def export_module(self) -> torch.nn.Module:
        """The module whose ``forward`` is exported to ONNX (``self`` by default)."""
        return self

    def size_bytes(self) -> int:
        """Bytes of all parameters and buffers."""
        return sum(t.numel() * t.element_size() for t in list(self.parameters()) + list(self.buffers()))
