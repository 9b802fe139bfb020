"""Every import format, and every input error named with file, line and column."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamrec.trainer.data import DataError
from streamrec.trainer.importers import Columns, load

U_ITEM_GENRES = "|".join(["0"] * 19)


def write(path, text: str, encoding: str = "utf-8"):
    path.write_text(text, encoding=encoding)
    return path


def genres(flag: int) -> str:
    flags = ["0"] * 19
    flags[flag] = "1"
    return "|".join(flags)


def test_movielens_100k_with_u_item_categories(tmp_path):
    write(tmp_path / "u.data", "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250951\n")
    write(tmp_path / "u.item", f"10|Toy Story (1995)|01-Jan-1995||http://x|{genres(3)}\n"
                               f"20|GoldenEye (1995)|01-Jan-1995||http://y|{genres(1)}\n", "latin-1")
    inter = load(tmp_path / "u.data")
    assert (inter.summary().users, inter.summary().items, len(inter)) == (2, 2, 3)
    assert inter.categories == {"10": "Animation", "20": "Action"}
    assert inter.ts[0] == 881250949000  # seconds -> ms
    assert len(load(tmp_path, rating_threshold=4)) == 2  # a folder is searched; ratings < 4 dropped


def test_movielens_1m_dat_and_movies_dat(tmp_path):
    write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    write(tmp_path / "movies.dat", "1193::One Flew Over (1975)::Drama\n661::James (1996)::Animation|Children's\n",
          "latin-1")
    inter = load(tmp_path / "ratings.dat")
    assert inter.categories == {"1193": "Drama", "661": "Animation"}
    assert inter.sequences() == {"1": ["1193", "661"]}


def test_movielens_ratings_csv_with_quoted_titles(tmp_path):
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n2,3,4.5,964981247\n")
    write(tmp_path / "movies.csv", 'movieId,title,genres\n1,"Toy Story, The (1995)",Adventure|Animation\n'
                                   "3,Grumpier (1995),Comedy|Romance\n")
    inter = load(tmp_path / "ratings.csv", rating_threshold=4.5)
    assert list(inter.item) == ["3"] and inter.categories["1"] == "Adventure"


def test_recbole_inter_and_item(tmp_path):
    write(tmp_path / "ml.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                 "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    write(tmp_path / "ml.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                "242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir\n")
    inter = load(tmp_path)
    assert inter.categories == {"242": "Comedy", "302": "Crime"}
    assert set(inter.kind) == {"rating"} and len(inter) == 2


def test_recbole_without_rating_column_is_implicit(tmp_path):
    write(tmp_path / "x.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1700000000\n")
    assert list(load(tmp_path / "x.inter").kind) == ["view"]


def test_generic_csv_with_column_mapping_and_iso_times(tmp_path):
    write(tmp_path / "log.csv", "who,what,when,stars\nann,a,2026-01-01T10:00:00Z,5\nbob,b,2026-01-01T11:00:00,1\n")
    cols = Columns(user="who", item="what", ts="when", rating="stars")
    inter = load(tmp_path / "log.csv", columns=cols, rating_threshold=3)
    assert list(inter.user) == ["ann"] and inter.ts[0] == 1767261600000


def test_parquet_with_column_mapping(tmp_path):
    table = pa.table({"u": ["a", "a", "b"], "i": ["x", "y", "x"], "t": [1767261600000, 1767261601000, 1767261602000]})
    pq.write_table(table, tmp_path / "log.parquet")
    inter = load(tmp_path / "log.parquet", columns=Columns(user="u", item="i", ts="t"))
    assert inter.sequences() == {"a": ["x", "y"], "b": ["x"]}


def test_event_jsonl_keeps_impressions_and_rec_ids(tmp_path):
    events = [{"event_id": "1", "type": "impression", "user_id": "u", "ts": 1767261600000, "items": ["a", "b"],
               "rec_id": "r"},
              {"event_id": "2", "type": "click", "user_id": "u", "ts": 1767261601000, "item_id": "b", "rec_id": "r",
               "position": 1}]
    write(tmp_path / "events.jsonl", "\n".join(json.dumps(e) for e in events) + "\n")
    inter = load(tmp_path / "events.jsonl")
    assert list(inter.kind) == ["impression", "impression", "click"]
    assert list(inter.position) == [0, 1, 1] and inter.sequences() == {"u": ["b"]}


# --------------------------------------------------------------------------- #
# Errors: each names the file, the line and the column
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name, text, fmt, line, column, words", [
    ("u.data", "1\t10\t5\t881250949\n1\t10\tfive\t881250949\n", "auto", 2, "rating", "not a number"),
    ("u.data", "1\t10\t5\n", "auto", 1, "timestamp", "expected 4 fields"),
    ("ratings.dat", "1::2::3::notatime\n", "auto", 1, "timestamp", "not a number"),
    ("ratings.csv", "user,movie,rating,timestamp\n1,2,3,4\n", "auto", 1, None, "expected the header"),
    ("x.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ti\n", "auto", 2, None, "expected 3 tab-separated"),
    ("log.csv", "user_id,item_id,timestamp\nu,i,1700000000\nu,i,yesterday\n", "auto", 3, "timestamp",
     "neither epoch"),
    ("log.csv", "user,item_id,timestamp\nu,i,1700000000\n", "auto", 1, "user_id", "missing column"),
    ("log.csv", "user_id,item_id,timestamp\n,i,1700000000\n", "auto", 2, "user_id", "empty id"),
    ("events.jsonl", '{"event_id":"e","type":"view","user_id":"u","ts":1767261600000}\n', "auto", 1, "item_id",
     "missing required field"),
    ("events.jsonl", '{"event_id":"e","type":"view","user_id":"u","item_id":"i","ts":1767261600000}\nnot json\n',
     "auto", 2, None, "not valid JSON"),
])
def test_bad_rows_are_reported_with_file_line_and_column(tmp_path, name, text, fmt, line, column, words):
    path = write(tmp_path / name, text)
    with pytest.raises(DataError) as err:
        load(path, fmt)
    assert err.value.path == str(path) and err.value.line == line and err.value.column == column
    assert words in str(err.value) and f"{name}:{line}" in str(err.value)


@pytest.mark.parametrize("name", ["u.data", "events.jsonl", "log.csv", "x.inter"])
def test_empty_files_are_refused(tmp_path, name):
    with pytest.raises(DataError, match="file is empty"):
        load(write(tmp_path / name, "\n  \n"))


def test_empty_parquet_is_refused(tmp_path):
    pq.write_table(pa.table({"user_id": pa.array([], pa.string())}), tmp_path / "e.parquet")
    with pytest.raises(DataError, match="file is empty"):
        load(tmp_path / "e.parquet")


def test_missing_file_unknown_format_and_threshold_removing_everything(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load(tmp_path / "u.data")
    with pytest.raises(DataError, match="unknown format"):
        load(write(tmp_path / "x.xlsx", "a"))
    with pytest.raises(DataError, match="no interactions left after the rating threshold 5"):
        load(write(tmp_path / "u.data", "1\t1\t3\t881250949\n"), rating_threshold=5)
    with pytest.raises(DataError, match="no known data layout"):
        load(tmp_path / "nothing-here-dir" if (tmp_path / "nothing-here-dir").mkdir() is None else tmp_path)


def test_item_csv_missing_category_column(tmp_path):
    write(tmp_path / "events.jsonl", '{"event_id":"e","type":"view","user_id":"u","item_id":"i","ts":1767261600000}\n')
    write(tmp_path / "items.csv", "item_id,genre\ni,x\n")
    with pytest.raises(DataError) as err:
        load(tmp_path / "events.jsonl")
    assert err.value.column == "category" and "items.csv:1" in str(err.value)
