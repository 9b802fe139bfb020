"""`streamrec train | evaluate | data | models`.

Registered by `streamrec.cli` through `register(subparsers)`; each handler
gets the Settings object as ``args.settings`` and returns an exit code.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import msgspec

from rich.table import Table

from streamrec.console import make_console
from streamrec.registry import Registry, RegistryError

# Without torch (the serving image) these commands cannot run: raising
# ImportError here makes `streamrec.cli` skip them quietly, without importing
# torch on every CLI start.
if importlib.util.find_spec("torch") is None:
    raise ImportError("the trainer commands need torch: pip install 'streamrec[trainer]'", name="torch")

console = make_console(stderr=True)
out = make_console()


# --------------------------------------------------------------------------- #
# data loading shared by train and evaluate
# --------------------------------------------------------------------------- #
def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, metavar="PATH|kafka",
                   help="interaction history: a file or folder (events.jsonl, MovieLens u.data/ratings.dat/"
                        "ratings.csv, RecBole .inter, one user per line .txt, CSV, Parquet), or 'kafka' to replay the events topic")
    g.add_argument("--format", default="auto",
                   choices=["auto", "events", "movielens", "recbole", "sequences", "csv", "parquet"],
                   help="input format (default: from the file name; sequences: 'user item item ...' per line)")
    g.add_argument("--items", metavar="PATH", help="item file with categories (CSV item_id,category); MovieLens "
                                                   "and RecBole item files next to the data are found by themselves")
    g.add_argument("--rating-threshold", type=float, default=None, metavar="R",
                   help="keep only ratings >= R as implicit interactions (default: keep all)")
    g.add_argument("--user-col", default="user_id", help="CSV/Parquet: user column (default user_id)")
    g.add_argument("--item-col", default="item_id", help="CSV/Parquet: item column (default item_id)")
    g.add_argument("--ts-col", default="timestamp", help="CSV/Parquet: time column (default timestamp)")
    g.add_argument("--ts-unit", default="auto", choices=["auto", "s", "ms", "iso"],
                   help="CSV/Parquet: unit of the time column (default: guess)")
    g.add_argument("--rating-col", default=None, help="CSV/Parquet: rating column, if any")
    g.add_argument("--type-col", default=None, help="CSV/Parquet: event type column, if any")
    g.add_argument("--session-col", default=None, help="CSV/Parquet: session column, if any")
    g.add_argument("--since", help="kafka: first event time (ISO-8601 or epoch ms; default: the beginning)")
    g.add_argument("--until", help="kafka: last event time (ISO-8601 or epoch ms; default: now)")


def positive_int(unit: str, example: str):
    """An argparse ``type`` accepting a positive whole number; the error names the unit and an example."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = 0
        if n < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of {unit} (e.g. {example})")
        return n
    return parse


def _buckets(text: str) -> int | str:
    """``--item-buckets``: a row count, or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number of rows nor 'auto'") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=None,
                   help="maximum epochs for each model (early stopping may end sooner)")
    g.add_argument("--dim", type=int, default=64, help="sequence model embedding size (default 64)")
    g.add_argument("--max-len", type=int, default=50, help="longest history the sequence model reads (default 50)")
    g.add_argument("--item-buckets", type=_buckets, default=50_000,
                   help="hashed item table rows (default 50000), or 'auto': the sequence model's sized from the "
                        "training catalog so at most 0.5%% of its items lack a row of their own (the ranker's "
                        "stays 50000)")
    # 0.5, RecBole's SASRec default: Amazon Toys NDCG@10 0.0600 against 0.0573 at 0.2 (seed 0); ML-100K within
    # its seeds' spread (BENCHMARKS.md, "Recommendation quality on public data").
    g.add_argument("--dropout", type=float, default=0.5, help="sequence model dropout (default 0.5)")
    g.add_argument("--ff-mult", type=int, default=2, metavar="N",
                   help="sequence model feed-forward width, in multiples of --dim (default 2)")
    g.add_argument("--refit-epochs", type=int, default=2, metavar="N",
                   help="after the best epoch, N more epochs that also learn each user's validation item, the newest "
                        "behaviour before the test item (default 2; 0 = off)")
    g.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same models")
    g.add_argument("--checkpoint-dir", metavar="DIR", help="save a checkpoint after every epoch here")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoints in --checkpoint-dir")
    g.add_argument("--top10", metavar="CSV", help="write each test user's top-10 items (sequence model) to this CSV")
    g.add_argument("--k", type=positive_int("items", "--k 5 10 20"), nargs="+", default=[10], metavar="K",
                   help="cutoffs of the leave-one-out metrics, e.g. --k 5 10 20 (default 10)")
    g.add_argument("--graph-dim", type=int, default=64, help="graph model (LightGCN) embedding size (default 64)")
    g.add_argument("--graph-layers", type=int, default=3, help="graph model propagation layers (default 3)")
    g.add_argument("--content", action="store_true",
                   help="content tower: embed the catalog text (--items CSV/JSONL with title, description, tags, "
                        "or items.csv beside --data), train the ranker's content_sim feature on it, and (train) "
                        "publish it as 'content' for the scorer's content candidates")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                   help="where the sequence model and the ranker train (auto = cuda when torch sees a GPU); "
                        "the models come back on the CPU for export (default cpu)")


def load_data(args) -> "Interactions":  # noqa: F821 - imported lazily (torch-free CLI start)
    """Read ``--data`` as the flags say and print the summary."""
    from streamrec.trainer.importers import Columns, load

    if args.data == "kafka":
        from streamrec.trainer.importers import read_item_csv
        from streamrec.trainer.replay import replay_events
        categories = read_item_csv(Path(args.items)) if args.items else None
        inter = replay_events(args.settings, since=args.since, until=args.until, categories=categories)
    else:
        cols = Columns(user=args.user_col, item=args.item_col, ts=args.ts_col, rating=args.rating_col,
                       type=args.type_col, session=args.session_col, ts_unit=args.ts_unit)
        inter = load(args.data, args.format, items=args.items, rating_threshold=args.rating_threshold, columns=cols)
    s = inter.summary()
    console.print(f"[bold]{inter.source}[/]: {s.users:,} users, {s.items:,} items, {s.interactions:,} interactions, "
                  f"{s.span()} UTC, {len(set(inter.categories.values())):,} categories")
    return inter


def _config(args):
    from streamrec.trainer.train import TrainConfig

    ranker = {} if args.item_buckets == "auto" else dict(item_buckets=args.item_buckets)
    cfg = TrainConfig(seq=dict(dim=args.dim, max_len=args.max_len, dropout=args.dropout, ff_mult=args.ff_mult,
                               item_buckets=args.item_buckets), ranker=ranker,
                      seq_refit_epochs=args.refit_epochs).with_seed(args.seed)
    ckpt = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    seq_fit, ranker_fit = cfg.seq_fit, cfg.ranker_fit
    if args.epochs:
        seq_fit, ranker_fit = replace(seq_fit, epochs=args.epochs), replace(ranker_fit, epochs=args.epochs)
    common = dict(progress=not args.no_progress, resume=args.resume, device=args.device)
    return replace(cfg, seq_fit=replace(seq_fit, checkpoint=str(ckpt / "sasrec.pt") if ckpt else None, **common),
                   ranker_fit=replace(ranker_fit, checkpoint=str(ckpt / "ranker.pt") if ckpt else None, **common))


LOO_METRICS = ("HR", "NDCG", "MRR", "P", "R", "MAP", "coverage", "pop")


def loo_table(rows: dict[str, dict[str, float]], ks: list[int], title: str) -> Table:
    """The leave-one-out table: one row per model and cutoff K, every metric of
    `streamrec.trainer.evaluate` (P = precision, R = recall, pop = mean training
    interactions of the recommended items)."""
    table = Table(title=title)
    for col in ("model", "K", *LOO_METRICS):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for k in sorted(set(ks)):
        for name, m in rows.items():
            cells = [f"{m[f'{metric}@{k}']:.1f}" if metric == "pop" else f"{m[f'{metric}@{k}']:.4f}"
                     for metric in LOO_METRICS]
            table.add_row(name, str(k), *cells)
    return table


def print_wide(table: Table) -> None:
    """Print a table at its natural width (never cut to an 80-column pipe: the numbers are the point)."""
    natural = make_console(width=1000).measure(table).maximum
    make_console(width=max(out.width, natural)).print(table)


def metrics_table(trained) -> Table:
    """The ranker and its baseline (AUC, log loss on the time split)."""
    table = Table(title="ranker (time split)")
    for col in ("model", "AUC", "logloss"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, m in trained.ranker_metrics.items():
        table.add_row(name, f"{m['AUC']:.4f}", f"{m['logloss']:.4f}")
    return table


def _loo_title(split, catalog: list[str]) -> str:
    from streamrec.trainer.evaluate import Popularity

    mean_pop = float(Popularity(split.train, catalog).counts.mean()) if catalog else 0.0
    return (f"leave-one-out, full ranking over {len(catalog):,} items, {len(split.users):,} users "
            f"(catalog mean pop {mean_pop:.1f})")


def _graph_config(args):
    from streamrec.trainer.graph import GraphConfig

    cfg = GraphConfig(dim=args.graph_dim, layers=args.graph_layers, seed=args.seed, progress=not args.no_progress)
    return replace(cfg, epochs=args.epochs) if args.epochs else cfg


def _write_top10(path: str, users: list[str], tops, catalog: list[str]) -> None:
    """user_id, rank, item_id, for every test user (the sequence model's list)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "rank", "item_id"])
        for user, top in zip(users, tops):
            for rank, j in enumerate(top, 1):
                w.writerow([user, rank, catalog[j]])


def _train_and_report(args):
    from streamrec.trainer.data import DataError
    from streamrec.trainer.train import train_all

    try:
        inter = load_data(args)
        content = None
        if getattr(args, "content", False):  # the content tower (streamrec.trainer.content)
            from streamrec.trainer.content import catalog_vectors
            items = args.items or (Path(args.data) / "items.csv" if Path(args.data).is_dir()
                                   else Path(args.data).with_name("items.csv"))
            content = catalog_vectors(items, progress=not args.no_progress, seed=args.seed)
        trained = train_all(inter, _config(args), content[2] if content else None, settings=args.settings,
                            ranker=getattr(args, "ranker", True))
        trained.content = content
    except (DataError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return None
    console.print(_fit_summary(trained))
    from streamrec.trainer.evaluate import CoVisitation, Popularity, leave_one_out_table
    from streamrec.trainer.train import sasrec_scorer

    split, catalog = trained.split, trained.catalog
    scorers = {"sasrec": sasrec_scorer(trained.sasrec, trained.categories)}
    trained.graph = None
    if args.graph:
        from streamrec.trainer.graph import graph_scorer, train_graph

        try:
            trained.graph, fit_result = train_graph(split, catalog, _graph_config(args))
        except ValueError as exc:
            console.print(f"[red]error:[/] {exc}")
            return None
        console.print(f"graph: {fit_result.samples_per_s:,.0f} edges/s, best epoch {fit_result.best_epoch + 1}")
        scorers["graph"] = graph_scorer(trained.graph, catalog)
    scorers.update({"popularity": Popularity(split.train, catalog), "co-visitation": CoVisitation(split.train, catalog)})
    try:
        trained.loo_metrics, _ = leave_one_out_table(scorers, split, catalog, args.k)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        return None
    served = None
    if getattr(args, "served", False):  # evaluate --served: the scorer's engine on the replayed history
        from streamrec.trainer.served_eval import ROW, evaluate_served

        try:
            trained.loo_metrics[ROW], served = evaluate_served(trained, inter, args.settings, args.k)
        except (ValueError, RuntimeError, RegistryError) as exc:
            console.print(f"[red]error:[/] served slates: {exc}")
            return None
    print_wide(loo_table(trained.loo_metrics, args.k, _loo_title(split, catalog)))
    if served is not None:
        out.print(served.describe())
    if trained.dcn is not None:
        out.print(metrics_table(trained))
    if args.top10:
        _write_top10(args.top10, trained.split.users, trained.top10, trained.catalog)
        console.print(f"top-10 lists: {args.top10}")
    return trained


def _fit_summary(trained) -> str:
    """Throughput, best epoch and, per epoch, validation loss and seconds of the models just trained."""
    seq, rank = trained.seq_fit, trained.ranker_fit
    scores = seq.val_score or [None] * len(seq.val_loss)
    epochs = ", ".join(f"{loss:.4f}" + (f" / {score:.4f}" if score is not None else "") + f" ({s:.0f} s)"
                       for loss, score, s in zip(seq.val_loss, scores, seq.epoch_seconds))
    line = (f"sasrec: {seq.samples_per_s:,.0f} sequences/s, best epoch {seq.best_epoch + 1}, "
            f"{seq.seconds:.0f} s training; by epoch, validation loss{' / NDCG@10' if seq.val_score else ''} "
            f"(training seconds): {epochs}")
    if trained.dcn is not None:
        line += f"; dcn-v2: {rank.samples_per_s:,.0f} samples/s, best epoch {rank.best_epoch + 1}"
    return line


def cmd_train(args) -> int:
    """Train both models, evaluate, export with parity checks, publish and announce."""
    trained = _train_and_report(args)
    if trained is None:
        return 1
    if args.no_publish:
        return 0
    from streamrec.trainer.export import ExportError
    from streamrec.trainer.publish import publish_trained

    try:
        results = publish_trained(args.settings, trained, args.seq_name, args.ranker_name, send=not args.no_announce)
    except (ExportError, RegistryError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    except Exception as exc:  # noqa: BLE001 - Kafka errors: the version is written, say how to re-announce
        console.print(f"[red]error:[/] {exc}")
        return 1
    if trained.graph is not None:
        from streamrec.trainer.graph import GraphExportError
        from streamrec.trainer.publish import publish_graph

        try:
            results.append(publish_graph(args.settings, trained.graph, trained.catalog,
                                         metrics=trained.loo_metrics["graph"], data_window=trained.window,
                                         real_histories=trained.split.test_history,
                                         kafka_offsets=trained.kafka_offsets, name=args.graph_name,
                                         send=not args.no_announce))
        except (GraphExportError, RegistryError) as exc:
            console.print(f"[red]error:[/] {exc}")
            return 1
        except Exception as exc:  # noqa: BLE001 - Kafka errors: the version is written, say how to re-announce
            console.print(f"[red]error:[/] {exc}")
            return 1
    if trained.content is not None:
        from streamrec.trainer.content import publish_content

        tower, items, _ = trained.content
        try:
            results.append(publish_content(args.settings, items, tower=tower, send=not args.no_announce))
        except Exception as exc:  # noqa: BLE001 - export, registry or Kafka: the message says which
            console.print(f"[red]error:[/] {exc}")
            return 1
    for meta, ann, exported in results:
        console.print(f"published [bold]{meta.name}/{meta.version}[/] ({meta.kind}) at {ann.uri}; export "
                      f"{exported.seconds:.2f} s, parity max |diff| {max(exported.max_abs_diff.values()):.1e}"
                      + ("" if args.no_announce else ", announced"))
    return 0


def cmd_evaluate(args) -> int:
    """Train on the leave-one-out split and print the table, or score a published sequence model (``--model``)."""
    if args.served and (args.model or args.cold or args.content or not args.ranker):
        console.print("[red]error:[/] --served scores the models it trains (the ranker too), without the "
                      "content tower; drop --model, --cold, --content and --no-ranker")
        return 2
    if getattr(args, "cold", False):  # content tower on items held out of training (streamrec.trainer.cold_eval)
        from streamrec.trainer.cold_eval import cmd_evaluate_cold
        return cmd_evaluate_cold(args, load_data, console, print_wide)
    if not args.model:
        return 0 if _train_and_report(args) is not None else 1
    from streamrec.trainer.data import DataError
    from streamrec.trainer.evaluate import (CoVisitation, LeaveOneOut, OnnxSequenceScorer, Popularity,
                                            PublishedGraphScorer, leave_one_out_table)

    name, _, version = args.model.partition("@")
    reg = Registry(args.settings.registry_uri)
    try:
        version = reg.resolve(name, version or None)
        meta = reg.verify(name, version)
        inter = load_data(args)
    except (RegistryError, DataError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    split, catalog = LeaveOneOut.split(inter.sequences()), inter.catalog()
    folder = reg.location(name, version)
    label = f"{name}@{version}"
    model = (PublishedGraphScorer(folder, meta, catalog) if meta.kind == "lightgcn"
             else OnnxSequenceScorer(folder, meta, catalog, inter.categories))
    scorers = {label: model, "popularity": Popularity(split.train, catalog),
               "co-visitation": CoVisitation(split.train, catalog)}
    try:
        rows, tops = leave_one_out_table(scorers, split, catalog, args.k)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    if args.top10:
        _write_top10(args.top10, split.users, tops[label][:, :10], catalog)
    print_wide(loo_table(rows, args.k, _loo_title(split, catalog)))
    return 0


# --------------------------------------------------------------------------- #
def cmd_data_synth(args) -> int:
    """Write a seeded synthetic history."""
    from streamrec.trainer.synth import SynthConfig, synthesize, write_synth

    cfg = SynthConfig(users=args.users, items=args.items, categories=args.categories,
                      sessions_per_user=args.sessions, session_length=args.session_length, seed=args.seed,
                      segments=args.segments)
    data = synthesize(cfg)
    paths = write_synth(data, args.out)
    console.print(f"{len(data.events):,} events by {cfg.users:,} users on {cfg.items:,} items -> "
                  f"{paths['events']} (+ {paths['items'].name})")
    return 0


def cmd_data_show(args) -> int:
    """Read a history and print its summary (checks the input without training)."""
    from streamrec.trainer.data import DataError

    try:
        load_data(args)
    except DataError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    return 0


def cmd_data_fetch(args) -> int:
    """Download public data sets by name (checked by SHA-256)."""
    from streamrec.trainer.datasets import FetchError, fetch

    try:
        for name in args.names:
            console.print(f"[bold]{name}[/]")
            fetch(name, Path(args.out), Path(args.local_copy) if args.local_copy else None, echo=console.print)
    except FetchError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    return 0


# --------------------------------------------------------------------------- #
def cmd_models(args) -> int:
    """list | show | promote | rollback."""
    reg = Registry(args.settings.registry_uri)
    try:
        if args.action == "list":
            return _models_list(reg, args.name)
        if not args.name:
            console.print(f"[red]error:[/] `models {args.action}` needs a model name")
            return 2
        if args.action == "show":
            version = reg.resolve(args.name, args.version)
            meta = reg.verify(args.name, version)
            doc = msgspec.to_builtins(meta)
            doc["current"] = reg.current(args.name) == version
            doc["sha256"] = reg.digest(args.name, version)
            print(json.dumps(doc, indent=2))
            return 0
        if args.action == "promote":
            if not args.version:
                console.print("[red]error:[/] `models promote NAME VERSION` needs a version")
                return 2
            old = reg.promote(args.name, args.version)
            version = args.version
            console.print(f"{args.name}: current {old} -> {version}")
        else:
            version = reg.rollback(args.name)
            console.print(f"{args.name}: rolled back to {version}")
    except RegistryError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    if not args.no_announce:
        from streamrec.trainer.publish import announce, announcement
        try:
            announce(args.settings, announcement(reg, args.name, version))
        except Exception as exc:  # noqa: BLE001 - Kafka down: the pointer moved, say how to re-announce
            console.print(f"[red]error:[/] {exc}")
            return 1
        console.print("announced on model-versions")
    return 0


def _models_list(reg: Registry, only: str | None) -> int:
    table = Table(title=f"models in {reg.uri}")
    for col in ("model", "version", "kind", "created", "parent", "metrics", "state"):
        table.add_column(col)
    for name in [only] if only else reg.models():
        current = reg.current(name)
        for v in reg.versions(name):
            try:
                meta = reg.meta(name, v)
            except RegistryError as exc:
                table.add_row(name, v, "", "", "", "", f"[red]{exc}[/]")
                continue
            metrics = ", ".join(f"{k} {x:.4f}" for k, x in list(meta.metrics.items())[:3])
            table.add_row(name, v, meta.kind, meta.created[:19], meta.parent or "", metrics,
                          "[green]current[/]" if v == current else "")
    out.print(table)
    return 0


# --------------------------------------------------------------------------- #
def register(sub) -> None:
    """Add train, evaluate, data and models to the `streamrec` command line."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("train", help="train the sequence model and the ranker, evaluate, export to ONNX, publish",
                       description="Read an interaction history, train SASRec and DCN-V2 with early stopping, "
                                   "print the evaluation against baselines, export both to ONNX (checked "
                                   "against torch), publish them in the registry and announce them on "
                                   "model-versions.")
    _add_data_args(p)
    _add_model_args(p)
    g = p.add_argument_group("publishing")
    g.add_argument("--seq-name", default="sasrec", help="registry name of the sequence model")
    g.add_argument("--ranker-name", default="ranker", help="registry name of the ranker")
    g.add_argument("--graph", action="store_true",
                   help="also train the LightGCN graph model (a row in the table), export and publish it")
    g.add_argument("--graph-name", default="graph", help="registry name of the graph model")
    g.add_argument("--no-publish", action="store_true", help="train and evaluate only")
    g.add_argument("--no-announce", action="store_true", help="publish without announcing on model-versions")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate both models against baselines on a history (no publishing)",
                       description="Leave-one-out by time (full ranking, seen items excluded; HR, NDCG, MRR, "
                                   "precision, recall, MAP, catalog coverage and mean popularity at each --k) "
                                   "for the sequence model and the graph model vs popularity and co-visitation; "
                                   "AUC and log loss "
                                   "on a time split for the ranker vs logistic regression.")
    _add_data_args(p)
    _add_model_args(p)
    p.add_argument("--no-graph", dest="graph", action="store_false",
                   help="leave the graph model (LightGCN) out of the table")
    p.add_argument("--model", metavar="NAME[@VERSION]",
                   help="instead of training, score this published sequence or graph model (as served; "
                        "default version: current) on the leave-one-out test split of --data")
    p.add_argument("--cold", action="store_true",
                   help="instead: cold items (held out of training entirely) ranked by the content tower (text "
                        "+ category + tags) vs popularity and random; needs the catalog text (--items CSV/JSONL)")
    p.add_argument("--cold-share", type=float, default=0.2, metavar="S",
                   help="--cold: share of the items held out as cold (default 0.2)")
    p.add_argument("--no-ranker", dest="ranker", action="store_false",
                   help="stop after the sequence model and the baselines: no ranker samples, no ranker table "
                        "(the sequence model's figures are the same; it is trained first)")
    p.add_argument("--served", action="store_true",
                   help="also score the slate the scorer would serve (a row 'served'): its engine with the "
                        "models just trained (all candidate sources, the ranker, the greedy policy, slates of "
                        "the largest --k) on features replayed from the history as the worker writes them")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("data", help="synthetic data and input checks")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("synth", formatter_class=fmt,
                        help="write a seeded synthetic history (events.jsonl + items.csv)",
                        description="Users with drifting tastes, Zipf item popularity, categories, sequential "
                                    "patterns within sessions and position-biased clicks on slates.")
    s.add_argument("--out", default="data/synth", help="output folder")
    s.add_argument("--users", type=int, default=500, help="number of users")
    s.add_argument("--items", type=int, default=300, help="number of items")
    s.add_argument("--categories", type=int, default=12, help="number of item categories")
    s.add_argument("--sessions", type=int, default=6, help="sessions per user")
    s.add_argument("--session-length", type=float, default=8.0, help="mean views per session")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--segments", type=int, default=0,
                   help="plant this many customer segments (users share favourite categories; written to "
                        "segments.csv for `streamrec segments --truth`); 0 = none")
    s.set_defaults(func=cmd_data_synth)
    s = dsub.add_parser("show", help="read a history and print its summary (users, items, time span)")
    _add_data_args(s)
    s.set_defaults(func=cmd_data_show)
    s = dsub.add_parser("fetch", help="download public data sets (ml-100k, amazon-toys, amazon-sports, obd)",
                        description="Each file is checked against its published SHA-256; what is already there "
                                    "and intact is kept.")
    s.add_argument("names", nargs="+", choices=["ml-100k", "amazon-toys", "amazon-sports", "obd"], metavar="NAME",
                   help="ml-100k, amazon-toys, amazon-sports, obd")
    s.add_argument("--out", default=".local/data", help="root folder; each set goes in a folder of its name "
                                                        "(default .local/data)")
    s.add_argument("--from", dest="local_copy", metavar="PATH",
                   help="read from a local copy instead of the network: a checkout or bare git folder of the "
                        "source repository, or (ml-100k) the RecBole wheel")
    s.set_defaults(func=cmd_data_fetch)

    p = sub.add_parser("models", help="list, show, promote or roll back model versions in the registry",
                       description="Works on STREAMREC_REGISTRY_URI. promote and rollback verify the version "
                                   "and announce it on model-versions.")
    p.add_argument("action", choices=["list", "show", "promote", "rollback"])
    p.add_argument("name", nargs="?", help="model name (e.g. sasrec, ranker)")
    p.add_argument("version", nargs="?", help="version (show: default current; promote: required)")
    p.add_argument("--no-announce", action="store_true", help="promote/rollback without announcing")
    p.set_defaults(func=cmd_models)
