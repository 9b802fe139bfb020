"""Malformed input for the fuzz tests: events, Kafka keys and HTTP requests.

One generator feeds the decoder test, the worker test and the HTTP test. Every
malformed event starts as a valid event (all types, optional fields, epoch and
ISO times) with exactly one thing broken, so the generator knows which field
the decoder must name: ``Malformed.field`` (None when the record as a whole is
at fault: broken JSON, invalid UTF-8, too large, empty, not an object).

Plain ``random.Random`` drives it, so the worker test can make 100,000 cases in
a second or two; `malformed_events()` wraps the same code as a hypothesis
strategy (hypothesis picks the seed) for the property tests.

>>> import random
>>> case = malformed_event(random.Random(7))
>>> isinstance(case.value, bytes) and case.kind in KINDS
True
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Callable

from hypothesis import strategies as st

from streamrec.stream import schemas
from streamrec.stream.synthetic import Record

T0 = 1_767_225_600_000
ID_FIELDS = ("event_id", "user_id", "item_id", "session_id", "rec_id")
OPTIONAL = ("session_id", "rec_id", "position", "dwell_ms", "value", "context")
ALLOWED = {cls.type: set(cls.__struct_fields__) | {"type"} for cls in schemas.EVENT_CLASSES.values()}


@dataclass(frozen=True)
class Malformed:
    """One bad record: its bytes, the field the error must name (None: the whole record), how it was made."""

    value: bytes
    field: str | None
    kind: str
    key: bytes | str | None = None

    def record(self) -> Record:
        return Record(key=self.key, value=self.value, kind="malformed")


# --------------------------------------------------------------------------- valid events
_ID_TAILS = ("", "", "", "-x", "_1", ":a", ".b", "@c", "é", "中", "Ω-Ж")


def _id(rnd: random.Random, prefix: str) -> str:
    return f"{prefix}{rnd.getrandbits(rnd.choice((4, 16, 40))):x}{rnd.choice(_ID_TAILS)}"


def valid_event(rnd: random.Random) -> dict:
    """A valid event of any type with a random choice of optional fields, in random key order."""
    kind = rnd.choice(schemas.EVENT_TYPES)
    ts = rnd.randrange(T0, T0 + 86_400_000)
    ev: dict = {"event_id": _id(rnd, "e"), "type": kind, "user_id": _id(rnd, "u"),
                "ts": ts if rnd.random() < 0.8 else "2026-01-01T10:00:00.250+01:00"}
    if kind == "impression":
        ev["items"] = [_id(rnd, "i") for _ in range(rnd.randint(1, 10))]
    else:
        ev["item_id"] = _id(rnd, "i")
    values = {"session_id": lambda: _id(rnd, "s"), "rec_id": lambda: _id(rnd, "r"),
              "position": lambda: rnd.randint(0, 10_000), "dwell_ms": lambda: rnd.randint(0, 86_400_000),
              "value": lambda: round(rnd.uniform(-1e6, 1e6), 2),
              "context": lambda: {"device": rnd.choice(["mobile", "web"]), "page": rnd.randint(1, 9)}}
    for name in rnd.sample(OPTIONAL, rnd.randint(0, len(OPTIONAL))):
        ev[name] = values[name]()
    items = list(ev.items())
    rnd.shuffle(items)
    return dict(items)


def _item_field(ev: dict) -> str:
    return "items" if ev["type"] == "impression" else "item_id"


def _dumps(ev: dict) -> bytes:
    """JSON with raw UTF-8 for non-ASCII (json.dumps elsewhere escapes it as \\uXXXX: both are tried)."""
    return json.dumps(ev, ensure_ascii=False).encode("utf-8")


def _splice(ev: dict, field: str, raw: str) -> bytes:
    """The event's JSON with `field`'s value replaced by raw JSON text (NaN, deep nesting...)."""
    marker = "\u0000MARK\u0000"
    text = json.dumps({**ev, field: marker})
    return text.replace(json.dumps(marker), raw, 1).encode("utf-8")


# --------------------------------------------------------------------------- mutations
# Each takes (rnd, valid event) and returns (bytes, field at fault or None).
def broken_json(rnd, ev):
    text = _dumps(ev)
    how = rnd.randrange(8)
    if how == 0:
        # Truncated before the values end would also be a field's error: cut in the last key or the brace.
        cut = text.rfind(b', "') + rnd.randint(2, 4) if rnd.random() < 0.5 else len(text) - 1
        return text[:cut], None
    if how == 1:
        return text + rnd.choice([b" x", b"}", b",", b"{}", b" []", b"\x00"]), None  # trailing junk
    if how == 2:
        return text.replace(b", ", b" ", 1), None  # missing comma
    if how == 3:
        return text[:-1] + b",}", None  # trailing comma
    if how == 4:
        return text.replace(b'"', b"'"), None  # single quotes
    if how == 5:
        return b"\xef\xbb\xbf" + text, None  # byte order mark
    if how == 6:
        return _splice(ev, rnd.choice(["value", "position", "ts"]),
                       rnd.choice(["NaN", "Infinity", "-Infinity", "nan", "+1", ".5", "-", "tru", "nul", "'x'", "u1"])), None
    return text.replace(b'"', b"", 2), None  # unquoted key


INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80", b"\xf8\x88\x80\x80\x80",
                b"\xf4\x90\x80\x80"]


def invalid_utf8(rnd, ev):
    field = rnd.choice([f for f in ID_FIELDS if isinstance(ev.get(f), str)])
    marker = "\u0001BAD\u0001"
    text = json.dumps({**ev, field: ev[field] + marker}).encode()
    return text.replace(json.dumps(marker)[1:-1].encode(), rnd.choice(INVALID_UTF8), 1), None


def too_large(rnd, ev):
    over = schemas.MAX_EVENT_BYTES + rnd.randint(1, 20_000)
    how = rnd.randrange(4)
    if how == 0:
        return json.dumps({**ev, "user_id": "u" * over}).encode(), None
    if how == 1:
        return json.dumps({**ev, "type": "impression", "items": [f"i{k}" for k in range(over // 6)]}).encode(), None
    if how == 2:
        depth = over // 2
        return _splice(ev, "context", "[" * depth + "]" * depth), None
    return b" " * over + _dumps(ev), None


def empty(rnd, ev):
    return rnd.choice([b"", b" ", b"\n", b"\t\r\n ", b" " * 1000]), None


def not_an_object(rnd, ev):
    depth = rnd.randint(1, 5000)
    return rnd.choice([b"null", b"[]", b"true", b"0", b'"view"', b"-1e999", b"[" + _dumps(ev) + b"]",
                       b"[" * depth + b"]" * depth]), None


def deep_nesting(rnd, ev):
    """A field holding thousands of nested arrays or objects (still within 16 KiB)."""
    field = rnd.choice(["event_id", "user_id", "ts", "context", _item_field(ev), "position", "value"])
    depth = rnd.randint(50, 5000)
    raw = "[" * depth + "]" * depth if rnd.random() < 0.5 else '{"a":' * (depth // 6) + "1" + "}" * (depth // 6)
    if field == "context" and raw.startswith("{"):
        raw = '{"k":' + raw + "}"  # an object is a valid context; nest inside its value
    return _splice(ev, field, raw), field


def _wrong_values(field: str) -> list:
    if field in ("event_id", "user_id", "item_id"):
        return [None, 7, 1.5, True, [], ["a"], {}, {"a": 1}, "", "a b", "a\tb", "x\u0000", "\u001b[31m", "x" * 257,
                "a\u2028b", "\u007f"]
    if field in ("session_id", "rec_id"):
        return [7, 1.5, False, [], {"a": 1}, "", "a b", "x" * 300, "\u0001"]
    if field == "ts":
        return [None, True, 1_767_225_600, 1_767_225_600_000_000, -1, 0, 10 ** 30, -(10 ** 30), 1.7672256e12,
                "yesterday", "2026-01-01", "2026-01-01T10:00:00", "2026-02-30T10:00:00Z", "1999-12-31T23:59:59Z",
                "2100-01-01T00:00:00Z", "2026-13-01T00:00:00Z", "", [], {"ms": 1}, schemas.MAX_TS_MS,
                schemas.MIN_TS_MS - 1, "1767225600000"]
    if field == "type":
        return [None, 5, [], {}, "", "View", "VIEW", " view", "view ", "teleport", "click\u0000", "impressions",
                True]
    if field == "items":
        return [None, [], "i1", ["i"] * 201, [1], [""], [["x"]], [None], {"0": "i1"}, ["a b"]]
    if field == "position":
        return [-1, 10_001, 1.5, "3", True, [], 10 ** 20]
    if field == "dwell_ms":
        return [-1, 86_400_001, 2.5, "10", {}, False]
    if field == "value":
        return ["12", [], {}, True, 1e13, -1e13, 1e300]
    if field == "context":
        return [[], "mobile", 3, True, {f"k{i}": i for i in range(17)}, {"a": {"b": 1}}, {"a": [1]},
                {"k" * 65: 1}]
    raise AssertionError(field)


def wrong_type(rnd, ev):
    field = rnd.choice(["event_id", "user_id", "ts", "type", _item_field(ev), "session_id", "rec_id", "position",
                        "dwell_ms", "value", "context"])
    value = rnd.choice(_wrong_values(field))
    return json.dumps({**ev, field: value}).encode(), field


def out_of_range_number(rnd, ev):
    """Numbers JSON allows but a float or int cannot hold."""
    field = rnd.choice(["value", "position", "dwell_ms", "ts"])
    raw = rnd.choice(["1e400", "-1e400", "1" + "0" * 400, "-" + "9" * 30, "1e-400"])
    if field == "value" and raw == "1e-400":
        raw = "1e400"  # 1e-400 is a valid (zero) value
    return _splice(ev, field, raw), field


UNKNOWN_NAMES = ["Type", "userId", "item", "timestamp", "__proto__", "$where", "", " ", "a.b", "x\u0000y",
                 "\u001b[2J", "é", "中文", "k" * 2000, "a`b`", "`type`", "event_id ", "items" , "item_id", "ts_ms", "\ud7ff"]


def unknown_field(rnd, ev):
    name = rnd.choice(UNKNOWN_NAMES + [_id(rnd, "f")])
    if name in ALLOWED[ev["type"]]:
        name += "_x"
    value = rnd.choice([1, "x", None, [], {}, {"nested": [1, 2]}])
    return json.dumps({**ev, name: value}).encode(), name


def missing_field(rnd, ev):
    field = rnd.choice(["event_id", "user_id", "ts", "type", _item_field(ev)])
    return json.dumps({k: v for k, v in ev.items() if k != field}).encode(), field


def duplicate_key(rnd, ev):
    """A key twice in one object; JSON parsers disagree on which one wins, so it is refused."""
    if rnd.random() < 0.2:
        ctx = '{"device": "web", "device": "mobile"}'
        return _splice(ev, "context", ctx), "context"
    field = rnd.choice(list(ev))
    text = json.dumps(ev)
    again = rnd.choice([ev[field], "other", 1767225600001, None])
    extra = f"{json.dumps(field)}: {json.dumps(again)}"
    if rnd.random() < 0.5:
        return (text[:-1] + ", " + extra + "}").encode(), field
    return ("{" + extra + ", " + text[1:]).encode(), field


def wrong_tag(rnd, ev):
    """A real type with another type's fields: a view with a slate, an impression with one item."""
    if ev["type"] == "impression":
        changed = {**ev, "type": rnd.choice(["view", "click", "purchase"])}
        return json.dumps(changed).encode(), "items"
    changed = {**ev, "type": "impression"}
    return json.dumps(changed).encode(), "item_id"


MUTATIONS: dict[str, Callable] = {
    "broken_json": broken_json, "invalid_utf8": invalid_utf8, "too_large": too_large, "empty": empty,
    "not_an_object": not_an_object, "deep_nesting": deep_nesting, "wrong_type": wrong_type,
    "out_of_range_number": out_of_range_number, "unknown_field": unknown_field, "missing_field": missing_field,
    "duplicate_key": duplicate_key, "wrong_tag": wrong_tag,
}
KINDS = tuple(MUTATIONS)
WEIGHTS = [4, 2, 1, 1, 1, 2, 6, 1, 3, 3, 3, 2]
# Through Kafka, oversized and deeply nested records are the costly ones (10-40 KB each): rarer.
STREAM_WEIGHTS = [4, 2, 0.1, 1, 1, 0.5, 6, 1, 3, 3, 3, 2]
ODD_KEYS = [None, b"", b"\xff\xfe", b"k" * 10_000, "u\u0000", "é" * 100, b"\x00" * 64]


# Valid events to break, made once: building one costs more than breaking it.
BASE_EVENTS = [valid_event(random.Random(k)) for k in range(4000)]


def malformed_event(rnd: random.Random, odd_keys: bool = True, weights=WEIGHTS) -> Malformed:
    """One malformed event made from a random valid one; its Kafka key is sometimes odd too."""
    kind = rnd.choices(KINDS, weights)[0]
    ev = dict(rnd.choice(BASE_EVENTS))
    value, field = MUTATIONS[kind](rnd, ev)
    key = rnd.choice(ODD_KEYS) if odd_keys and rnd.random() < 0.1 else ev["user_id"]
    return Malformed(value=value, field=field, kind=kind, key=key)


def malformed_events() -> st.SearchStrategy[Malformed]:
    """The same generator as a hypothesis strategy (hypothesis chooses and replays the seed)."""
    return st.randoms(use_true_random=False).map(malformed_event)


def fuzz_stream(n_malformed: int, valid_per_malformed: float = 0.1, seed: int = 0,
                users: int = 500, items: int = 2000) -> tuple[list[Record], list[Malformed]]:
    """Malformed events mixed with a realistic valid stream (`synthetic_stream`), in publishing order."""
    from streamrec.stream.synthetic import synthetic_stream

    rnd = random.Random(seed)
    n_valid = int(n_malformed * valid_per_malformed)
    valid = iter(synthetic_stream(n_valid, users=users, items=items, seed=seed, malformed_rate=0.0))
    cases = [malformed_event(rnd, weights=STREAM_WEIGHTS) for _ in range(n_malformed)]
    records: list[Record] = []
    share = n_valid / max(1, n_malformed + n_valid)
    pending = iter(cases)
    left_valid, left_bad = n_valid, n_malformed
    while left_valid or left_bad:
        if left_valid and (not left_bad or rnd.random() < share):
            records.append(next(valid))
            left_valid -= 1
        else:
            records.append(next(pending).record())
            left_bad -= 1
    return records, cases


# --------------------------------------------------------------------------- HTTP
@dataclass(frozen=True)
class RawRequest:
    """Raw bytes to send to an HTTP endpoint, and what it probes."""

    data: bytes
    kind: str


PULL = "/v1/recommendations/"
GENERIC_PATHS = ["/healthz", "/readyz", "/metrics"]
BAD_IDS = ["", "%20", "a%20b", "%00", "%ff", "%C3", "%zz", "%", "%%", "a%2Fb", "..%2F..%2Fetc", "%1b%5b31m",
           "x" * 257, "x" * 3000, "%E2%80%A8", "%ED%A0%80", "\xff", "a\x01b"]


def _target(rnd: random.Random) -> str:
    how = rnd.randrange(9)
    if how == 0:
        return PULL + rnd.choice(BAD_IDS)
    if how == 1:
        return rnd.choice(GENERIC_PATHS + [PULL + "u1"]) + "?" + rnd.choice(
            ["n=5", "x=1", "a", "&&&", "=", "%ff=1", "a=%zz", "&".join(f"p{i}=1" for i in range(50)),
             "q=" + "x" * 5000, "a=1;b=2"])
    if how == 2:
        return "/" + "a" * rnd.choice([100, 2047, 2049, 10_000, 70_000])
    if how == 3:
        return rnd.choice(["*", "//healthz", "/healthz/", "/HEALTHZ", "healthz", "http://x/healthz", "/./readyz",
                           "/v1/recommendations", "/v1/recommendations//", "/v1/recommendations/u1/extra",
                           "/%2e%2e/metrics", "/metrics#frag", "/\x7f", "/\x00"])
    if how == 4:
        return "/" + "".join(chr(rnd.randrange(0x21, 0xff)) for _ in range(rnd.randint(1, 200)))
    return rnd.choice(GENERIC_PATHS + [PULL + "u1", PULL + "%C3%A9l%C3%A8ve", PULL + "nobody"])


def malformed_request(rnd: random.Random) -> RawRequest:
    """A request with a bad method, target, version, headers or framing (some parts valid)."""
    method = rnd.choice(["GET"] * 6 + ["HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
                                       "get", "FOO", "G\x00T", "GET" * 100])
    version = rnd.choice(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/2.0", "HTTP/9.9", "HTTP/1.1 extra", "HTTP/1",
                                              "HTTPS/1.1", "http/1.1", "HTTP/1.1'\""])
    target = _target(rnd)
    headers = ["Host: 127.0.0.1", "Connection: close"]
    how = rnd.randrange(10)
    body = b""
    if how == 0:
        headers += [f"X-H{i}: {i}" for i in range(rnd.choice([50, 101, 200]))]
    elif how == 1:
        headers.append("X-Big: " + "v" * rnd.choice([1000, 70_000]))
    elif how == 2:
        headers.append(rnd.choice(["no colon here", ": empty name", "X-\xff: \xfe", "Content-Length: -1",
                                   "Content-Length: abc", "Transfer-Encoding: chunked", "Expect: 100-continue",
                                   "Authorization: Bearer \x00", "Host: " + "h" * 3000]))
    elif how == 3:
        headers.append("Content-Length: 10")
        body = b"0123456789"
    kind = f"{method[:10]} {target[:40]!r}"
    if rnd.random() < 0.05:  # no version at all: HTTP/0.9 style, or a garbage line
        line = rnd.choice([f"{method} {target}", "", "\x00\x01\x02", "GET", " ".join(["GET"] * 5)])
        return RawRequest(line.encode("latin-1", "replace") + b"\r\n\r\n", kind="line " + kind)
    line = f"{method} {target} {version}"
    data = (line + "\r\n" + "\r\n".join(headers) + "\r\n\r\n").encode("latin-1", "replace") + body
    return RawRequest(data, kind=kind)


def malformed_requests() -> st.SearchStrategy[RawRequest]:
    return st.randoms(use_true_random=False).map(malformed_request)
