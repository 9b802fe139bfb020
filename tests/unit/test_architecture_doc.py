"""docs/architecture.md is the contract: it lists what the code defines, and nothing the code does not.

Each test reads one part of the contract from the code (the topics of `stream/topics.py`, the key
patterns of `stream/keys.py`, the message structs of `stream/schemas.py` and `streamrec/registry.py`,
the fields of `Settings`) and compares it with the matching table of the document. A test failing
here means the code changed: bring the document up to date in the same change.
"""

from __future__ import annotations

import inspect
import re
from importlib import resources
from pathlib import Path

import pytest

from streamrec import registry
from streamrec.settings import Settings, env_name
from streamrec.stream import ledger, schemas, topics
from streamrec.stream.keys import Keys

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"

# How the document writes the parts of a key: P is the prefix, the rest name the ids.
PREFIX = "P"
PLACEHOLDERS = {"user_id": "USER", "item_id": "ITEM", "session_id": "SESSION", "event_id": "EVENT_ID",
                "hour": "HOUR", "window": "WINDOW"}


# --------------------------------------------------------------------------- #
# reading the document
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text("utf-8")


def section(text: str, title: str) -> str:
    """The text under the heading ``title`` (any level), up to the next heading of the same or a higher
    level; lines inside code fences are never headings."""
    lines = text.splitlines()
    fenced = False
    start = level = None
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"^(#+) (.*?)\s*$", line)
        if not m:
            continue
        if start is None:
            if m.group(2) == title:
                start, level = i + 1, len(m.group(1))
        elif len(m.group(1)) <= level:
            return "\n".join(lines[start:i])
    assert start is not None, f"docs/architecture.md has no heading {title!r}"
    return "\n".join(lines[start:])


def cells(line: str) -> list[str]:
    """The cells of one Markdown table row (``\\|`` is a pipe inside a cell)."""
    inner = line.strip()[1:]
    if inner.endswith("|") and not inner.endswith("\\|"):
        inner = inner[:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table in ``text``: rows of cells, the header first, the rule line left out."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in text.splitlines() + [""]:
        if line.strip().startswith("|"):
            row = cells(line)
            if not all(re.fullmatch(r":?-+:?", c) for c in row):
                current.append(row)
        elif current:
            found.append(current)
            current = []
    return found


def table(text: str, first_header: str) -> list[list[str]]:
    """The one table whose first header cell is ``first_header``, without its header."""
    matching = [t for t in tables(text) if t[0][0] == first_header]
    assert len(matching) == 1, f"expected one table headed {first_header!r}, found {len(matching)}"
    return matching[0][1:]


def code_name(cell: str) -> str | None:
    """``name`` for a cell that is exactly `name` in backticks, else None."""
    m = re.fullmatch(r"`([^`]+)`", cell)
    return m.group(1) if m else None


def first_column(rows: list[list[str]]) -> list[str]:
    return [n for n in (code_name(r[0]) for r in rows) if n is not None]


def compare(what: str, in_code: set[str], in_doc: set[str]) -> None:
    missing, stale = sorted(in_code - in_doc), sorted(in_doc - in_code)
    assert not missing and not stale, (
        f"docs/architecture.md is out of step with the code ({what}): "
        + (f"missing from the document: {missing}. " if missing else "")
        + (f"in the document but not in the code: {stale}." if stale else ""))


# --------------------------------------------------------------------------- #
# Redis keys
# --------------------------------------------------------------------------- #
def key_patterns() -> dict[str, str]:
    """Every concrete key `Keys` builds, with placeholders for the ids: {method or property: pattern}."""
    keys = Keys(PREFIX)
    out = {}
    for name, member in inspect.getmembers(Keys):
        if name.startswith("_") or name.endswith("_base"):  # bases are hash tags, not keys
            continue
        if isinstance(member, property):
            out[name] = getattr(keys, name)
        elif inspect.isfunction(member):
            params = list(inspect.signature(member).parameters)[1:]
            unknown = [p for p in params if p not in PLACEHOLDERS]
            assert not unknown, f"Keys.{name} takes {unknown}: name a placeholder for it in PLACEHOLDERS"
            out[name] = member(keys, *(PLACEHOLDERS[p] for p in params))
    return out


def test_redis_key_layout_lists_every_key_of_stream_keys(doc):
    documented = first_column(table(section(doc, "Redis key layout"), "key"))
    assert len(documented) == len(set(documented)), "a key is listed twice"
    compare("Redis keys of stream/keys.py", set(key_patterns().values()), set(documented))


def test_every_key_the_lua_scripts_build_is_documented(doc):
    documented = first_column(table(section(doc, "Redis key layout"), "key"))
    lua = resources.files("streamrec.stream").joinpath("lua")
    suffixes = set()
    for script in lua.iterdir():
        if script.name.endswith(".lua"):
            suffixes |= set(re.findall(r"\.\.\s*'(:[^']*)'", script.read_text("utf-8")))
    assert suffixes, "no key suffixes found in the Lua scripts: has the way they build keys changed?"
    undocumented = sorted(s for s in suffixes if not any(s in key for key in documented))
    assert not undocumented, f"the Lua scripts build keys ending {undocumented}, which the document does not list"


# --------------------------------------------------------------------------- #
# Kafka topics
# --------------------------------------------------------------------------- #
def test_topics_match_stream_topics(doc):
    rows = table(section(doc, "Kafka topics"), "topic")
    by_name = {code_name(r[0]): r for r in rows}
    compare("topics of stream/topics.py", {s.name for s in topics.TOPICS}, set(by_name))
    for spec in topics.TOPICS:
        _, key, partitions, configs, *_ = by_name[spec.name]
        assert spec.key in key, f"{spec.name}: the key column should say {spec.key!r}, it says {key!r}"
        fixed = spec.configs.get("partitions")
        want = fixed if fixed is not None else "STREAMREC_TOPIC_PARTITIONS"
        assert want in partitions, f"{spec.name}: partitions should say {want!r}, it says {partitions!r}"
        for name, value in spec.kafka_configs().items():
            if name != "partitions":
                assert f"{name}={value}" in configs, f"{spec.name}: created with {name}={value}; the document says {configs!r}"
        if not spec.compacted:
            assert "compact" not in configs, f"{spec.name} is not compacted; the document says {configs!r}"


def test_dead_letter_and_output_headers_are_documented(doc):
    dlq = section(doc, "Dead letters")
    in_code = {v for k, v in vars(topics).items() if k.startswith("DLQ_") and isinstance(v, str)}
    compare("dead-letter headers of stream/topics.py", in_code, set(first_column(table(dlq, "header"))))
    for header in (ledger.SOURCE_PARTITION, ledger.SOURCE_OFFSET):
        assert f"`{header}`" in section(doc, "Data flow"), f"the output header {header} is not documented"


def dead_letter_reasons_in_code() -> set[str]:
    """The reason codes the decoder raises, and those the worker's own refusals use."""
    found = set(re.findall(r'reason="([a-z0-9_]+)"', inspect.getsource(schemas)))
    package = resources.files("streamrec.stream")
    for module in package.iterdir():
        if module.name.endswith(".py"):
            found |= set(re.findall(r'_dead\([^,()]+,\s*[^,()]+,\s*"([a-z0-9_]+)"', module.read_text("utf-8")))
    return found


def test_dead_letter_reasons_are_documented(doc):
    rows = table(section(doc, "Dead letters"), "reason")
    compare("dead-letter reasons", dead_letter_reasons_in_code(), set(first_column(rows)))


# --------------------------------------------------------------------------- #
# messages
# --------------------------------------------------------------------------- #
def struct_fields(*structs) -> set[str]:
    out = set()
    for s in structs:
        out |= set(s.__struct_fields__)
        tag_field = s.__struct_config__.tag_field
        if tag_field:
            out.add(tag_field)
    return out


MESSAGES = [
    ("Event", struct_fields(*schemas.EVENT_CLASSES.values())),
    ("Score request", struct_fields(schemas.ScoreRequest)),
    ("Recommendation", struct_fields(schemas.Recommendation)),
    ("Recommendation", struct_fields(schemas.RecommendedItem)),
    ("Recommendation", struct_fields(schemas.Contribution)),
    ("Recommendation", struct_fields(schemas.ServedFeatures)),
    ("Catalog record", struct_fields(schemas.CatalogItem)),
    ("Model registry", struct_fields(registry.ModelMeta)),
    ("model-versions announcement", struct_fields(registry.Announcement)),
]


@pytest.mark.parametrize("title, fields", MESSAGES, ids=[f"{t}-{i}" for i, (t, _) in enumerate(MESSAGES)])
def test_message_fields_are_documented(doc, title, fields):
    """Each struct has a table (first column `field`) in its section listing exactly its fields."""
    candidates = [set(first_column(t[1:])) for t in tables(section(doc, title)) if t[0][0] == "field"]
    assert candidates, f"section {title!r} has no table of fields"
    best = max(candidates, key=lambda names: len(names & fields))
    compare(f"fields under {title!r}", fields, best)


# --------------------------------------------------------------------------- #
# settings
# --------------------------------------------------------------------------- #
def doc_default(value) -> str:
    """How the document writes a default."""
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return "empty"
    return str(value)


def same_default(written: str, value) -> bool:
    written = written.strip("`")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(written) == float(value)
        except ValueError:
            return False
    return written == doc_default(value)


def test_settings_by_service_lists_every_setting(doc):
    text = section(doc, "Settings by service")
    in_code = {env_name(f) for f in Settings.__struct_fields__}
    mentioned = set(re.findall(r"STREAMREC_[A-Z0-9_]*[A-Z0-9]", text))
    rows = [r for t in tables(text) for r in t[1:]]
    with_row = {code_name(r[0]) for r in rows}
    compare("settings named in 'Settings by service'", in_code, mentioned)
    assert not in_code - with_row, f"settings without a row of their own: {sorted(in_code - with_row)}"


def test_settings_defaults_are_the_code_defaults(doc):
    defaults = {env_name(f): d for f, d in zip(Settings.__struct_fields__, Settings.__struct_defaults__)}
    wrong = []
    for t in tables(section(doc, "Settings by service")):
        if len(t[0]) < 2 or t[0][1] != "default":
            continue
        for row in t[1:]:
            name = code_name(row[0])
            if name in defaults and not same_default(row[1], defaults[name]):
                wrong.append(f"{name}: document {row[1]}, code {defaults[name]!r}")
    assert not wrong, "defaults differ: " + "; ".join(wrong)

