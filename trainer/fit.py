"""The offline training loop shared by every model: batches, early stopping, checkpoints, progress.

Works on any `RecModel` and a dataset given as a dict of numpy arrays with a
common first dimension. Validation loss decides early stopping; the best
weights are restored at the end. With ``checkpoint`` set, the state after
every epoch is saved, and ``resume=True`` continues from it.

``device`` (cpu, cuda, auto) is where the epochs run; the model always comes
back on the CPU, because export, evaluation and the online trainer expect CPU
tensors. Checkpoints and the best weights are kept as CPU tensors, so a run
resumes on any device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from streamrec.trainer.base import RecModel, resolve_device, seed_everything


@dataclass
class FitConfig:
    """Optimisation settings; the defaults suit both models on small data."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 3
    """Epochs without validation improvement before stopping."""
    seed: int = 0
    checkpoint: str | None = None
    resume: bool = False
    progress: bool = True
    device: str = "cpu"
    """Where to train: cpu, cuda or auto (cuda when torch sees a GPU, else cpu)."""


@dataclass
class FitResult:
    """What happened: per-epoch losses, the best epoch, throughput."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_score: list[float] = field(default_factory=list)
    """Per epoch, the validation score that chose the best epoch, when `fit` was given one."""
    best_epoch: int = -1
    best_val: float = float("inf")
    """The best epoch's criterion: its validation loss, or minus its validation score."""
    samples: int = 0
    seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)
    """Training time of each epoch: the first one on a GPU also pays for kernel and cuBLAS warm-up."""
    stopped_early: bool = False

    @property
    def samples_per_s(self) -> float:
        """Training rows per second of pure training time (validation excluded)."""
        return self.samples / self.seconds if self.seconds else 0.0


class SparseAwareAdam:
    """AdamW for the dense parameters, SparseAdam for embedding tables built with ``sparse=True``.

    A dense optimizer walks every row of a table at every step; a hashed item table is mostly rows
    the batch never touched, so SparseAdam (which updates only the rows in the gradient) keeps a large
    table as cheap as a small one. SparseAdam has no weight decay: the tables are not decayed.
    """

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float = 0.0):
        sparse = sparse_embedding_weights(model)
        ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in ids]
        self.parts = [torch.optim.AdamW(dense, lr=lr, weight_decay=weight_decay)]
        if sparse:
            self.parts.append(torch.optim.SparseAdam(sparse, lr=lr))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.parts:
            opt.step()

    def state_dict(self) -> dict:
        return {"parts": [opt.state_dict() for opt in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        for opt, part in zip(self.parts, state["parts"], strict=True):
            opt.load_state_dict(part)


def sparse_embedding_weights(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights of the model's embedding tables that produce sparse gradients."""
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]


def _rows(data: dict[str, np.ndarray]) -> int:
    return len(next(iter(data.values())))


def fit(model: RecModel, train: dict[str, np.ndarray], val: dict[str, np.ndarray] | None,
        cfg: FitConfig, label: str = "", val_score: Callable[[RecModel], float] | None = None) -> FitResult:
    """Train ``model`` in place; returns the history. Deterministic for a given ``cfg.seed``.

    ``val_score`` (higher is better, e.g. validation NDCG@10) picks the best epoch and stops early in
    place of the validation loss, which can rise while the ranking still improves.
    """
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    model.to(device)  # before the optimizer, so its state is created where the weights are
    opt = SparseAwareAdam(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    result, start_epoch, best_state = FitResult(), 0, None
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else None
    if ckpt and cfg.resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        result, start_epoch, best_state = state["result"], state["epoch"] + 1, state["best_state"]
        if not hasattr(result, "epoch_seconds"):  # a checkpoint written before epochs were timed one by one
            result.epoch_seconds = []
        if not hasattr(result, "val_score"):  # a checkpoint written before epochs could be chosen by a score
            result.val_score = []
        torch.set_rng_state(state["torch_rng"])
    n = _rows(train)
    cols = TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:,.0f} samples/s")
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), *cols, TimeRemainingColumn(),
                  disable=not cfg.progress, transient=True) as bar:
        for epoch in range(start_epoch, cfg.epochs):
            task = bar.add_task(f"{label} epoch {epoch + 1}/{cfg.epochs}", total=n, loss=float("nan"), rate=0.0)
            # Per-epoch order from (seed, epoch): a resumed run sees the same batches.
            order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
            total, t0 = 0.0, time.perf_counter()
            for start in range(0, n, cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                batch = {k: torch.from_numpy(v[idx]).to(device, non_blocking=True) for k, v in train.items()}
                total += model.fit_batch(batch, opt) * len(idx)
                done = min(start + cfg.batch_size, n)
                bar.update(task, completed=done, loss=total / done,
                           rate=done / max(time.perf_counter() - t0, 1e-9))
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # queued GPU work belongs to this epoch's time
            result.epoch_seconds.append(time.perf_counter() - t0)
            result.seconds += result.epoch_seconds[-1]
            result.samples += n
            result.train_loss.append(total / max(n, 1))
            bar.remove_task(task)
            val_loss = model.eval_loss(val) if val is not None and _rows(val) else result.train_loss[-1]
            result.val_loss.append(val_loss)
            criterion = val_loss
            if val_score is not None:
                result.val_score.append(val_score(model))
                criterion = -result.val_score[-1]
            if criterion < result.best_val - 1e-6:
                result.best_val, result.best_epoch = criterion, epoch
                best_state = _cpu_copy(model.state_dict())
            if ckpt:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"model": _cpu_copy(model.state_dict()), "optimizer": opt.state_dict(),
                            "result": result, "epoch": epoch, "best_state": best_state, "config": model.config,
                            "torch_rng": torch.get_rng_state()}, ckpt)
            if epoch - result.best_epoch >= cfg.patience:
                result.stopped_early = True
                break
    model.to("cpu")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a state dict (a clone on CPU, a device-to-host copy on a GPU)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
