"""Reading interaction histories: event JSONL, MovieLens, RecBole, generic CSV/Parquet, the events topic.

Every reader returns `Interactions` and reports bad input as `DataError`
naming the file, the line and the column. `load` picks the reader from the
file name (or ``fmt``); a folder is searched for a known layout.

Ratings become implicit interactions: rows rated below ``rating_threshold``
are dropped (``None`` keeps every rating).

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp(), "u.data")
>>> _ = p.write_text("1\\t10\\t5\\t881250949\\n2\\t10\\t2\\t881250950\\n")
>>> load(p, rating_threshold=4).summary().interactions
1
>>> _ = p.write_text("1\\t10\\tfive\\t881250949\\n")
>>> load(p)
Traceback (most recent call last):
...
streamrec.trainer.data.DataError: ...u.data:1: column 'rating': 'five' is not a number
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from streamrec.trainer.data import DataError, Interactions

FORMATS = ("auto", "events", "movielens", "recbole", "sequences", "csv", "parquet", "kafka")
# MovieLens 100K's u.item ends with 19 genre flags in this order.
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")


@dataclass(frozen=True)
class Columns:
    """Column mapping for generic CSV/Parquet (``None`` = absent)."""

    user: str = "user_id"
    item: str = "item_id"
    ts: str = "timestamp"
    rating: str | None = None
    type: str | None = None
    session: str | None = None
    ts_unit: str = "auto"
    """``s``, ``ms``, ``iso`` or ``auto`` (numbers below 1e11 are seconds)."""


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise DataError(f"{text!r} is not a number", str(path), line, column) from None


def _ts_ms(value, unit: str, path: Path, line: int, column: str) -> int:
    """Epoch milliseconds from seconds, milliseconds, an ISO-8601 string or a datetime (Parquet)."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    text = str(value).strip()
    numeric = text.replace(".", "", 1).lstrip("-").isdigit()
    if unit == "iso" or (unit == "auto" and not numeric):
        try:
            return _iso(text)
        except ValueError:
            raise DataError(f"{text!r} is neither epoch seconds/milliseconds nor an ISO-8601 date-time",
                            str(path), line, column) from None
    x = _number(text, path, line, column)
    return int(x * 1000) if unit == "s" or (unit == "auto" and x < 1e11) else int(x)


def _iso(value: str) -> int:
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:  # a date-time without a zone is taken as UTC, not the machine's zone
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def _lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Non-blank lines with 1-based numbers; an empty file is an error."""
    if not path.exists():
        raise DataError("file not found", str(path))
    text = path.read_bytes().decode(encoding, errors="replace")
    if not text.strip():
        raise DataError("file is empty; expected interaction rows", str(path))
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield n, line


def _rated(rows: Iterable[dict], threshold: float | None) -> Iterator[dict]:
    for r in rows:
        if threshold is None or r.get("value") is None or r["value"] >= threshold:
            yield r


def _finish(rows: Iterable[dict], categories: dict[str, str], path: Path, threshold: float | None) -> Interactions:
    inter = Interactions.from_rows(_rated(rows, threshold), categories, source=str(path))
    if not len(inter):
        raise DataError("no interactions left" + (f" after the rating threshold {threshold}" if threshold else ""),
                        str(path))
    return inter


# --------------------------------------------------------------------------- #
# streamrec events (JSON lines, schema v1)
# --------------------------------------------------------------------------- #
def read_events(path: Path, items: Path | None = None, rating_threshold: float | None = None) -> Interactions:
    """JSON lines in the event schema (what `streamrec data synth` writes), validated event by event."""
    from streamrec.stream.schemas import EventError, decode_event

    rows = []
    for n, line in _lines(path):
        try:
            ev = decode_event(line.encode())
        except EventError as exc:
            raise DataError(f"{exc}", str(path), n, exc.field) from None
        rows.append({"user_id": ev.user_id, "ts": ev.ts_ms, "type": ev.type, "value": ev.value,
                     "session_id": ev.session_id, "rec_id": ev.rec_id, "position": ev.position,
                     **({"items": list(ev.items)} if ev.type == "impression" else {"item_id": ev.item_id})})
    return _finish(rows, read_item_csv(items) if items else {}, path, rating_threshold)


def read_item_csv(path: Path, item_col: str = "item_id", category_col: str = "category") -> dict[str, str]:
    """Item -> category from a CSV with a header (``item_id,category`` by default)."""
    reader = csv.DictReader(io.StringIO("\n".join(line for _, line in _lines(path))))
    for col in (item_col, category_col):
        if col not in (reader.fieldnames or []):
            raise DataError(f"missing column; the header has {reader.fieldnames}", str(path), 1, col)
    return {r[item_col]: r[category_col] or "" for r in reader}


# --------------------------------------------------------------------------- #
# MovieLens
# --------------------------------------------------------------------------- #
def _split_rows(path: Path, sep: str, names: tuple[str, ...], encoding: str = "utf-8",
                header: bool = False) -> Iterator[tuple[int, dict]]:
    for n, line in _lines(path, encoding):
        if header and n == 1:
            continue
        parts = next(csv.reader([line])) if sep == "," else line.split(sep)
        if len(parts) < len(names):
            raise DataError(f"expected {len(names)} fields separated by {sep!r}, found {len(parts)}",
                            str(path), n, names[len(parts)])
        yield n, dict(zip(names, parts))


def _rating_rows(path: Path, sep: str, header: bool = False) -> Iterator[dict]:
    names = ("user", "item", "rating", "timestamp")
    for n, r in _split_rows(path, sep, names, header=header):
        yield {"user_id": r["user"].strip(), "item_id": r["item"].strip(), "type": "rating",
               "value": _number(r["rating"], path, n, "rating"),
               "ts": _ts_ms(r["timestamp"].strip(), "s", path, n, "timestamp")}


def read_movielens(path: Path, items: Path | None = None, rating_threshold: float | None = None) -> Interactions:
    """``u.data`` (100K, tab), ``ratings.dat`` (1M/10M, ``::``) or ``ratings.csv`` (20M/latest, header).

    The item file next to it (``u.item``, ``movies.dat``, ``movies.csv``) gives
    each movie's first genre as its category.
    """
    name = path.name
    if name.endswith(".data"):
        rows, item_file, cats = _rating_rows(path, "\t"), items or path.with_name("u.item"), _ml100k_items
    elif name.endswith(".dat"):
        rows, item_file, cats = _rating_rows(path, "::"), items or path.with_name("movies.dat"), _ml_dat_items
    else:
        header = next(_lines(path))[1].lower().replace(" ", "")
        if not header.startswith("userid,movieid,rating"):
            raise DataError(f"expected the header userId,movieId,rating,timestamp, found {header!r}", str(path), 1)
        rows, cats = _rating_rows(path, ",", header=True), _ml_csv_items
        item_file = items or path.with_name("movies.csv")
    categories = cats(item_file) if item_file.exists() else {}
    return _finish(rows, categories, path, rating_threshold)


def _ml100k_items(path: Path) -> dict[str, str]:
    out = {}
    for n, line in _lines(path, "latin-1"):
        parts = line.split("|")
        if len(parts) < 5 + len(ML100K_GENRES):
            raise DataError(f"expected {5 + len(ML100K_GENRES)} '|'-separated fields, found {len(parts)}",
                            str(path), n, "genres")
        flags = parts[-len(ML100K_GENRES):]
        out[parts[0]] = next((g for g, f in zip(ML100K_GENRES, flags) if f.strip() == "1"), "unknown")
    return out


def _ml_dat_items(path: Path) -> dict[str, str]:
    return {r["item"]: r["genres"].split("|")[0] for _, r in _split_rows(path, "::", ("item", "title", "genres"),
                                                                        "latin-1")}


def _ml_csv_items(path: Path) -> dict[str, str]:
    return {r["item"]: r["genres"].split("|")[0]
            for _, r in _split_rows(path, ",", ("item", "title", "genres"), header=True)}


# --------------------------------------------------------------------------- #
# RecBole atomic files
# --------------------------------------------------------------------------- #
def _recbole_table(path: Path) -> Iterator[tuple[int, dict]]:
    lines = _lines(path)
    _, header = next(lines)
    fields = [h.split(":")[0] for h in header.split("\t")]
    for n, line in lines:
        parts = line.split("\t")
        if len(parts) != len(fields):
            raise DataError(f"expected {len(fields)} tab-separated fields ({', '.join(fields)}), found {len(parts)}",
                            str(path), n)
        yield n, dict(zip(fields, parts))


def read_recbole(path: Path, items: Path | None = None, rating_threshold: float | None = None) -> Interactions:
    """RecBole ``.inter`` (``user_id:token``, ``item_id:token``, optional ``rating``, ``timestamp``) and ``.item``."""
    def rows() -> Iterator[dict]:
        for n, r in _recbole_table(path):
            for col in ("user_id", "item_id", "timestamp"):
                if col not in r:
                    raise DataError(f"missing column; the header has {list(r)}", str(path), 1, f"{col}:token")
            rating = r.get("rating")
            yield {"user_id": r["user_id"], "item_id": r["item_id"], "type": "rating" if rating else "view",
                   "value": _number(rating, path, n, "rating") if rating else None,
                   "ts": _ts_ms(r["timestamp"], "s", path, n, "timestamp")}

    item_file = items or path.with_suffix(".item")
    categories = {}
    if item_file.exists():
        for _, r in _recbole_table(item_file):
            field = next((f for f in ("class", "genre", "category", "categories") if f in r), None)
            categories[r["item_id"]] = r[field].split()[0] if field and r[field].split() else ""
    return _finish(rows(), categories, path, rating_threshold)


# --------------------------------------------------------------------------- #
# One user per line, items in time order (the S3-Rec release of the Amazon sets)
# --------------------------------------------------------------------------- #
def read_sequences(path: Path, items: Path | None = None, rating_threshold: float | None = None) -> Interactions:
    """``user item item ...`` per line, oldest first, as in the S3-Rec release of the Amazon 5-core sets.

    The file has no times: an item's time is its position in the line (second 1, 2, ...), which
    keeps the order, so leave-one-out splits are the published ones.
    """
    def rows() -> Iterator[dict]:
        for n, line in _lines(path):
            user, *seq = line.split()
            if not seq:
                raise DataError("a user with no items; expected 'user item item ...'", str(path), n)
            for pos, item in enumerate(seq, 1):
                yield {"user_id": user, "item_id": item, "type": "view", "ts": pos * 1000}

    return _finish(rows(), read_item_csv(items) if items else {}, path, rating_threshold)


# --------------------------------------------------------------------------- #
# Generic CSV / Parquet
# --------------------------------------------------------------------------- #
def _mapped_rows(records: Iterable[tuple[int, dict]], cols: Columns, path: Path) -> Iterator[dict]:
    wanted = [c for c in (cols.user, cols.item, cols.ts, cols.rating, cols.type, cols.session) if c]
    for n, r in records:
        missing = [c for c in wanted if c not in r]
        if missing:
            raise DataError(f"missing column; found {sorted(r)}; map yours with --user-col, --item-col, --ts-col, "
                            "--rating-col", str(path), n if n > 2 else 1, missing[0])
        for c in (cols.user, cols.item):
            if r[c] is None or str(r[c]).strip() == "":
                raise DataError("empty id", str(path), n, c)
        value = _number(r[cols.rating], path, n, cols.rating) if cols.rating else None
        yield {"user_id": str(r[cols.user]).strip(), "item_id": str(r[cols.item]).strip(),
               "ts": _ts_ms(r[cols.ts], cols.ts_unit, path, n, cols.ts), "value": value,
               "type": (r[cols.type] if cols.type else "rating" if cols.rating else "view"),
               "session_id": r[cols.session] if cols.session else None}


def read_csv(path: Path, cols: Columns = Columns(), items: Path | None = None,
             rating_threshold: float | None = None) -> Interactions:
    """A CSV with a header; ``cols`` names the columns to use."""
    lines = list(_lines(path))
    reader = csv.DictReader(io.StringIO("\n".join(line for _, line in lines)))
    # Line numbers of the file, not of the parsed rows (blank lines are skipped).
    records = ((lines[i + 1][0], row) for i, row in enumerate(reader))
    return _finish(_mapped_rows(records, cols, path), read_item_csv(items) if items else {}, path, rating_threshold)


def read_parquet(path: Path, cols: Columns = Columns(), items: Path | None = None,
                 rating_threshold: float | None = None) -> Interactions:
    """A Parquet file (needs pyarrow); rows are numbered from 1 in error messages."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet needs pyarrow: pip install 'streamrec[trainer]'", str(path)) from None
    if not path.exists():
        raise DataError("file not found", str(path))
    table = pq.read_table(path)
    if table.num_rows == 0:
        raise DataError("file is empty; expected interaction rows", str(path))
    data = table.to_pydict()
    records = ((n + 1, {k: v[n] for k, v in data.items()}) for n in range(table.num_rows))
    return _finish(_mapped_rows(records, cols, path), read_item_csv(items) if items else {}, path, rating_threshold)


# --------------------------------------------------------------------------- #
def detect(path: Path) -> tuple[str, Path]:
    """The format and the interactions file of ``path`` (a file or a folder with a known layout)."""
    if path.is_dir():
        for name in ("events.jsonl", "u.data", "ratings.dat", "ratings.csv"):
            if (path / name).exists():
                return detect(path / name)
        inter = sorted(path.glob("*.inter"))
        if inter:
            return "recbole", inter[0]
        seq = sorted(path.glob("*.txt"))
        if seq:
            return "sequences", seq[0]
        raise DataError("no known data layout here (events.jsonl, u.data, ratings.dat, ratings.csv, *.inter, *.txt)",
                        str(path))
    name = path.name.lower()
    if name.endswith((".jsonl", ".ndjson")):
        return "events", path
    if name.endswith(".inter"):
        return "recbole", path
    if name in ("u.data", "ratings.dat") or name.endswith(".data"):
        return "movielens", path
    if name.endswith(".parquet"):
        return "parquet", path
    if name.endswith(".txt"):
        return "sequences", path
    if name == "ratings.csv":
        return "movielens", path
    if name.endswith(".csv"):
        return "csv", path
    raise DataError("unknown format; pass --format (events, movielens, recbole, sequences, csv, parquet)", str(path))


def load(path: str | Path, fmt: str = "auto", items: str | Path | None = None,
         rating_threshold: float | None = None, columns: Columns = Columns()) -> Interactions:
    """Read an interaction history in any supported format."""
    path = Path(path)
    if fmt not in FORMATS or fmt == "kafka":
        raise DataError(f"format {fmt!r} is not a file format; use one of {', '.join(FORMATS[:-1])}", str(path))
    if fmt == "auto":
        fmt, path = detect(path)
    items = Path(items) if items else None
    if fmt == "events" and items is None and path.with_name("items.csv").exists():
        items = path.with_name("items.csv")
    readers: dict[str, Callable[..., Interactions]] = {
        "events": read_events, "movielens": read_movielens, "recbole": read_recbole, "sequences": read_sequences}
    if fmt in readers:
        return readers[fmt](path, items=items, rating_threshold=rating_threshold)
    reader = read_csv if fmt == "csv" else read_parquet
    return reader(path, columns, items=items, rating_threshold=rating_threshold)
