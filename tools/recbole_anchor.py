"""Same-session RecBole anchors: RecBole 1.2.1's SASRec or GRU4Rec on streamrec's own leave-one-out split.

The atomic ``.inter`` file is written from streamrec's loader (``load(path).sequences()``),
with each user's position 1, 2, 3, ... as the timestamp, so RecBole's time-ordered
leave-one-out (``LS: valid_and_test``, ``order: TO``) holds out exactly the items that
`streamrec evaluate` holds out: the last one for test, the one before for validation.
Full ranking over all items, the user's history masked (the target excepted, as in
``trainer/evaluate.py``), HR, NDCG and MRR at 10 and 20 on the test item.

Setup, once, from the repository root (a separate virtualenv that borrows the project's
torch, numpy, scipy and streamrec itself through a .pth file instead of downloading a second
torch; ``addsitedir`` rather than a bare path so the project's own .pth files, streamrec's
editable install among them, are read too)::

    UV=.local/uv-0.13.8/bin/uv
    $UV venv --python /root/.pyenv/versions/3.11.7/bin/python3.11 .local/recbole-venv
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \\
        > .local/recbole-venv/lib/python3.11/site-packages/_streamrec_venv.pth
    $UV pip install --python .local/recbole-venv/bin/python --no-deps recbole==1.2.1 pandas==2.3.3 \\
        colorlog==4.7.2 colorama==0.4.4 tensorboard==2.21.0 tensorboard-data-server==0.7.2 \\
        absl-py grpcio markdown werkzeug thop tabulate texttable

(``--no-deps`` because RecBole pins ``ray<=2.6.3``, which only its hyper-parameter search
uses, and because uv would otherwise install a second torch beside the borrowed one.)

Run, one at a time (each writes ``docs/results/anchors/recbole-<set>-<model>.json``)::

    mkdir -p .local/anchors
    nohup nice -n 10 .local/recbole-venv/bin/python tools/recbole_anchor.py ml-100k SASRec \\
        > .local/anchors/ml-100k-SASRec.log 2>&1 &

Sets: ``ml-100k``, ``amazon-toys``, ``amazon-sports`` (fetched by `streamrec data fetch`).
Models: ``SASRec``, ``GRU4Rec``. ``--max-epochs`` caps training (RecBole's default: 300);
``--max-minutes`` stops it after the first epoch that ends past a wall-clock budget. Either
cap is recorded in the JSON with the best epoch and the epochs run.
"""

from __future__ import annotations

import os

# One thread: the machine has two cores shared with other work (set before torch loads).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from streamrec.trainer.datasets import DEFAULT_ROOT, SOURCES  # noqa: E402
from streamrec.trainer.importers import load  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".local" / "anchors"
RESULTS = REPO / "docs" / "results" / "anchors"
SETS = ("ml-100k", "amazon-toys", "amazon-sports")
MODELS = ("SASRec", "GRU4Rec")
TOPK = [10, 20]
WORKAROUNDS: list[str] = []


# --------------------------------------------------------------------------- #
# Compatibility of RecBole 1.2.1 (2023) with numpy 2 and torch >= 2.6, patched at import time
# --------------------------------------------------------------------------- #
def _patch_numpy_aliases() -> None:
    """Config.compatibility_settings re-creates np.float etc. from np.float_, np.complex_ and
    np.unicode_, which numpy 2 removed: restore those three first."""
    for old, new in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, old):
            setattr(np, old, new)
            WORKAROUNDS.append(f"numpy {np.__version__}: np.{old} restored as {new.__name__} (removed in numpy 2; "
                               "RecBole's Config.compatibility_settings reads it)")


def _patch_torch_load() -> None:
    """torch >= 2.6 loads only tensors by default; RecBole's best-model checkpoint also pickles its
    Config, so reading it back needs ``weights_only=False`` (the file is our own, written this run)."""
    original = torch.load

    @functools.wraps(original)
    def load_own_checkpoint(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return original(*args, **kwargs)

    torch.load = load_own_checkpoint
    WORKAROUNDS.append(f"torch {torch.__version__}: torch.load defaults to weights_only=False (RecBole's "
                       "checkpoint pickles its Config; weights_only=True became the default in torch 2.6)")


def _patch_history_mask() -> None:
    """RecBole's full-sort loader masks no history for sequential models; streamrec masks every item
    the user saw before the target, except the target itself. Loaders given ``seen_items`` do the same."""
    from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader

    original = FullSortEvalDataLoader.collate_fn

    def collate_fn(self, index):
        interaction, history, positive_u, positive_i = original(self, index)
        seen = getattr(self, "seen_items", None)
        if not self.is_sequential or seen is None:
            return interaction, history, positive_u, positive_i
        rows, cols = [], []
        for row, (user, target) in enumerate(zip(interaction[self.uid_field].tolist(), positive_i.tolist())):
            masked = seen[user] - {target}
            rows.extend([row] * len(masked))
            cols.extend(masked)
        return interaction, (torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)), \
            positive_u, positive_i

    FullSortEvalDataLoader.collate_fn = collate_fn
    WORKAROUNDS.append("protocol: FullSortEvalDataLoader.collate_fn returns the user's history (all items before "
                       "the target, the target excepted) as history_index, so validation and test mask it as "
                       "streamrec does; RecBole 1.2.1 masks nothing for sequential models")


# --------------------------------------------------------------------------- #
# Data: streamrec's sequences as a RecBole atomic file
# --------------------------------------------------------------------------- #
def source_file(name: str) -> Path:
    """The interactions file `streamrec data fetch` wrote for ``name``."""
    rel = next(f for f in SOURCES[name].files if f.endswith((".inter", ".txt")))
    return REPO / DEFAULT_ROOT / name / rel


def write_atomic(name: str, sequences: dict[str, list[str]]) -> Path:
    """``<dataset>.inter`` with each user's position as the timestamp (the order streamrec reads)."""
    folder = WORK / "data" / f"streamrec-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"streamrec-{name}.inter"
    with path.open("w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, items in sequences.items():
            f.writelines(f"{user}\t{item}\t{pos}\n" for pos, item in enumerate(items, 1))
    return path


def recbole_config(max_epochs: int, seed: int) -> dict:
    """Settings that differ from RecBole 1.2.1's defaults, or that the protocol pins down."""
    return {
        "data_path": str(WORK / "data"), "checkpoint_dir": str(WORK / "saved"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",  # no filtering
        "MAX_ITEM_LIST_LENGTH": 50,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Hit", "NDCG", "MRR"], "topk": TOPK, "valid_metric": "NDCG@10",
        "train_neg_sample_args": None, "loss_type": "CE",
        "epochs": max_epochs, "stopping_step": 10, "train_batch_size": 2048, "learning_rate": 0.001,
        "seed": seed, "reproducibility": True, "use_gpu": False, "show_progress": False, "worker": 0,
    }


def seen_before(dataset, sequences: dict[str, list[str]], drop_last: int) -> dict[int, set[int]]:
    """RecBole user id -> RecBole item ids the user saw before the held-out item (``drop_last`` from the end)."""
    out = {}
    for user, items in sequences.items():
        history = items[:-drop_last]
        uid = int(dataset.token2id(dataset.uid_field, user))
        out[uid] = set(int(i) for i in dataset.token2id(dataset.iid_field, history)) if history else set()
    return out


def check_split(dataset, valid_data, test_data, sequences: dict[str, list[str]]) -> int:
    """Raise unless RecBole holds out streamrec's items: each user's last for test, the one before for
    validation; returns the number of users checked."""
    for loader, back in ((test_data, 1), (valid_data, 2)):
        feat = loader._dataset.inter_feat
        users = dataset.id2token(dataset.uid_field, feat[dataset.uid_field].numpy())
        targets = dataset.id2token(dataset.iid_field, feat[dataset.iid_field].numpy())
        wrong = [u for u, t in zip(users, targets) if sequences[u][-back] != t]
        if wrong or len(users) != len(sequences):
            raise RuntimeError(f"RecBole's split differs from streamrec's: {len(wrong)} of {len(users)} users "
                               f"(expected {len(sequences)}) hold out another item {back} from the end")
    return len(sequences)


# --------------------------------------------------------------------------- #
# One run
# --------------------------------------------------------------------------- #
class EpochLog:
    """Counts epochs and remembers the one whose checkpoint (the best so far) was saved last."""

    def __init__(self, trainer):
        self.epochs_run, self.best_epoch = 0, None
        train, save = trainer._train_epoch, trainer._save_checkpoint

        def counted_train(train_data, epoch_idx, *args, **kwargs):
            self.epochs_run = epoch_idx + 1
            return train(train_data, epoch_idx, *args, **kwargs)

        def remembered_save(epoch, *args, **kwargs):
            self.best_epoch = epoch + 1  # 1-based, like epochs_run
            return save(epoch, *args, **kwargs)

        trainer._train_epoch, trainer._save_checkpoint = counted_train, remembered_save


class TimeCap(Exception):
    """Training went past its wall-clock budget; the best checkpoint so far is on disk."""


def time_cap(minutes: float | None, start: float):
    """A `Trainer.fit` callback (run after each validation) that ends training once ``minutes`` have passed."""
    def check(epoch_idx: int, valid_score: float) -> None:
        if minutes is not None and time.time() - start > minutes * 60:
            raise TimeCap(f"{minutes} minutes passed after epoch {epoch_idx + 1}")
    return check


def run(name: str, model_name: str, max_epochs: int, seed: int, max_minutes: float | None = None) -> dict:
    """Train one model on one set with early stopping; test metrics with and without the history mask."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    start, load_start = time.time(), os.getloadavg()[0]
    sequences = load(source_file(name)).sequences()
    write_atomic(name, sequences)
    settings = recbole_config(max_epochs, seed)
    config = Config(model=model_name, dataset=f"streamrec-{name}", config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    split_checked = check_split(dataset, valid_data, test_data, sequences)
    valid_data.seen_items = seen_before(dataset, sequences, drop_last=2)
    test_data.seen_items = seen_before(dataset, sequences, drop_last=1)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    log = EpochLog(trainer)
    stopped_by = "early stopping"
    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=time_cap(max_minutes, start))
    except TimeCap:
        stopped_by = "time cap"
    if stopped_by != "time cap" and log.epochs_run >= max_epochs:
        stopped_by = "epoch cap"
    masked = trainer.evaluate(test_data, load_best_model=True)
    test_data.seen_items = None  # RecBole's own protocol for sequential models: nothing masked
    unmasked = trainer.evaluate(test_data, load_best_model=False)
    return {
        "set": name, "model": model_name,
        "users": len(sequences), "items": len(dataset.field2id_token[dataset.iid_field]) - 1,  # less [PAD]
        "interactions": sum(len(s) for s in sequences.values()), "split_checked_users": split_checked,
        "test": _metrics(masked), "test_unmasked_recbole_default": _metrics(unmasked),
        "valid_best": _metrics(trainer.best_valid_result),
        "best_epoch": log.best_epoch, "epochs_run": log.epochs_run, "stopped_by": stopped_by,
        "caps": {"max_epochs": max_epochs, "max_minutes": max_minutes},
        # A best epoch at the last one run means validation was still rising: an under-trained lower bound.
        "still_improving": stopped_by != "early stopping" and log.best_epoch == log.epochs_run,
        "wall_seconds": round(time.time() - start, 1), "threads": torch.get_num_threads(),
        # The two cores are shared: the 1-minute load average says how much of one this run had.
        "load_average": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        "config": _config_used(config, settings),
        "versions": _versions(), "workarounds": WORKAROUNDS,
    }


def _metrics(result) -> dict[str, float]:
    """RecBole's ``hit@10`` etc. as streamrec names them (HR@10, NDCG@10, MRR@10)."""
    names = {"hit": "HR", "ndcg": "NDCG", "mrr": "MRR"}
    result = result or {}
    return {f"{names[m]}@{k}": round(float(result[f"{m}@{k}"]), 4) for k in TOPK for m in names
            if f"{m}@{k}" in result}


def _config_used(config, settings: dict) -> dict:
    """The settings passed in plus the model's own defaults as RecBole resolved them."""
    keys = ["hidden_size", "inner_size", "n_layers", "n_heads", "hidden_dropout_prob", "attn_dropout_prob",
            "hidden_act", "layer_norm_eps", "initializer_range", "embedding_size", "num_layers", "dropout_prob",
            "learner", "weight_decay", "eval_batch_size", "eval_step", "device"]
    resolved = {k: config[k] for k in keys if config[k] is not None}
    paths = ("data_path", "checkpoint_dir")  # machine paths say nothing about the method
    return {**{k: v for k, v in settings.items() if k not in paths}, **{k: str(v) if k == "device" else v
                                                                       for k, v in resolved.items()}}


def _versions() -> dict[str, str]:
    import pandas
    import recbole

    return {"recbole": recbole.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "pandas": pandas.__version__, "python": platform.python_version()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("set", choices=SETS)
    p.add_argument("model", choices=MODELS)
    p.add_argument("--max-epochs", type=int, default=300, help="cap on training epochs (RecBole's default: 300)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop training after the first epoch that ends past this wall-clock budget")
    p.add_argument("--seed", type=int, default=2020, help="RecBole's default seed")
    args = p.parse_args()
    torch.set_num_threads(1)
    _patch_numpy_aliases()
    _patch_torch_load()
    _patch_history_mask()
    WORK.mkdir(parents=True, exist_ok=True)
    os.chdir(WORK)  # RecBole writes log/ and log_tensorboard/ under the working folder
    result = run(args.set, args.model, args.max_epochs, args.seed, args.max_minutes)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"recbole-{args.set}-{args.model}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}: test {result['test']}")


if __name__ == "__main__":
    main()
