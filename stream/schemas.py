"""The event contract: what apps publish, what the scorer answers.

Events are JSON objects of at most 16 KiB. The Python decoder here and the JSON
Schema file shipped beside it (``event.schema.json``, generated from these
classes by ``streamrec schema``) accept exactly the same documents; a test
proves it with generated valid and invalid events.

>>> ev = decode_event(b'{"event_id":"e1","type":"view","user_id":"u1","item_id":"i9","ts":1767225600000}')
>>> ev.type, ev.item_id, ev.ts_ms
('view', 'i9', 1767225600000)
>>> decode_event(b'{"event_id":"e1","type":"view","user_id":"u1","ts":1767225600000}')
Traceback (most recent call last):
...
streamrec.stream.schemas.EventError: item_id: missing required field; every `view` event needs it
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from importlib import resources
from typing import Annotated, ClassVar, Literal, Union

import msgspec
from msgspec import Meta

MAX_EVENT_BYTES = 16 * 1024
# Event time must be plausible: 2000-01-01 .. 2100-01-01 (epoch ms). Anything
# outside is a unit mistake (seconds, microseconds) or garbage.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000
# ISO-8601 with an explicit zone, years 2000-2099; the same pattern is in the
# JSON Schema, so non-Python producers get the same answer.
ISO_TS_PATTERN = (
    r"^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)

# No whitespace and no control characters: ids go into Redis keys, logs and terminals
# (an ESC or NUL in an id is garbage, and \x1f separates fields in session sequences).
Id = Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[^\s\x00-\x1f\x7f]+$",
                         description="non-empty identifier without whitespace or control characters")]
EpochMs = Annotated[int, Meta(ge=MIN_TS_MS, lt=MAX_TS_MS, description="epoch milliseconds")]
IsoTs = Annotated[str, Meta(pattern=ISO_TS_PATTERN, description="ISO-8601 date-time with zone")]
ContextValue = Union[str, float, bool, None]
Context = Annotated[dict[Annotated[str, Meta(max_length=64)], ContextValue],
                    Meta(max_length=16, description="small object: device, page, locale...")]

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "impression", "skip", "rating")


class EventError(ValueError):
    """An event that cannot be accepted; ``field`` names the culprit, ``reason`` is a short code."""

    def __init__(self, message: str, field: str | None = None, reason: str = "invalid"):
        super().__init__(message)
        self.field = field
        self.reason = reason


class _EventBase(msgspec.Struct, tag_field="type", forbid_unknown_fields=True,
                 omit_defaults=True, kw_only=True):
    event_id: Id
    user_id: Id
    ts: Union[EpochMs, IsoTs]
    session_id: Union[Id, None] = None
    rec_id: Union[Id, None] = None
    position: Union[Annotated[int, Meta(ge=0, le=10_000)], None] = None
    dwell_ms: Union[Annotated[int, Meta(ge=0, le=86_400_000)], None] = None
    value: Union[Annotated[float, Meta(ge=-1e12, le=1e12)], None] = None
    context: Union[Context, None] = None

    # Filled once at decode; never serialised.
    type: ClassVar[str]

    @property
    def ts_ms(self) -> int:
        """Event time in epoch milliseconds, whichever form the producer used."""
        ts = self.ts
        if isinstance(ts, int):
            return ts
        return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)

    def __post_init__(self) -> None:
        if isinstance(self.ts, str):
            try:
                datetime.fromisoformat(self.ts.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"{self.ts!r} is not a real calendar date-time") from None


class ItemEvent(_EventBase, kw_only=True):
    """An interaction with one item."""

    item_id: Id

    @property
    def item_ids(self) -> tuple[str, ...]:
        return (self.item_id,)


class View(ItemEvent, tag="view"):
    type: ClassVar[str] = "view"


class Click(ItemEvent, tag="click"):
    type: ClassVar[str] = "click"


class AddToCart(ItemEvent, tag="add_to_cart"):
    type: ClassVar[str] = "add_to_cart"


class Purchase(ItemEvent, tag="purchase"):
    type: ClassVar[str] = "purchase"


class Skip(ItemEvent, tag="skip"):
    type: ClassVar[str] = "skip"


class Rating(ItemEvent, tag="rating"):
    type: ClassVar[str] = "rating"


class Impression(_EventBase, tag="impression", kw_only=True):
    """A slate of items shown to the user."""

    type: ClassVar[str] = "impression"
    items: Annotated[list[Id], Meta(min_length=1, max_length=200)]

    @property
    def item_ids(self) -> tuple[str, ...]:
        return tuple(self.items)

    @property
    def item_id(self) -> str:
        return self.items[0]


Event = Union[View, Click, AddToCart, Purchase, Impression, Skip, Rating]
EVENT_CLASSES: dict[str, type] = {
    "view": View, "click": Click, "add_to_cart": AddToCart, "purchase": Purchase,
    "impression": Impression, "skip": Skip, "rating": Rating,
}

_event_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()
# msgspec ends a validation error with " - at `$.path`", or " - at `key` in `$.path`" when a
# dict key (a context key) is at fault.
_PATH = re.compile(r" - at (`key` in )?`\$\.?([^`]*)`$")


def decode_event(data: bytes) -> Event:
    """Decode and validate one event, or raise `EventError` naming the field and the fix."""
    if len(data) > MAX_EVENT_BYTES:
        raise EventError(f"event is {len(data)} bytes; the limit is {MAX_EVENT_BYTES} bytes (16 KiB)",
                         field=None, reason="too_large")
    if not data.strip():
        raise EventError("event is empty; send one JSON object per record (a null value is not an event)",
                         reason="empty")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(f"event is not valid UTF-8 (byte {exc.start}); encode JSON as UTF-8",
                         reason="not_utf8") from None
    _refuse_deep_nesting(data, "event")
    try:
        event = _event_decoder.decode(data)
    except msgspec.ValidationError as exc:
        _refuse_duplicate_keys(data)  # a repeated key explains a validation error better
        raise _explain(str(exc), data) from None
    except msgspec.DecodeError as exc:
        raise EventError(f"event is not valid JSON: {exc}", reason="bad_json") from None
    except RecursionError:  # not expected after the depth check; never let it escape
        raise _too_deep(_deep_field(data)[1], "event") from None
    _refuse_duplicate_keys(data)
    return event


# --- duplicate keys (fuzz): msgspec, like most JSON parsers, keeps the last of a
# repeated key silently, while other consumers keep the first; the event is ambiguous.
class _Duplicate:
    def __init__(self, key: str, parent: str | None = None):
        self.key, self.parent = key, parent


def _pairs_or_duplicate(pairs: list) -> object:
    seen = set()
    for key, value in pairs:
        if isinstance(value, _Duplicate):  # found deeper: name the top-level field holding it
            return _Duplicate(value.key, value.parent or key)
        if key in seen:
            return _Duplicate(key)
        seen.add(key)
    return None


_duplicate_finder = json.JSONDecoder(object_pairs_hook=_pairs_or_duplicate)


def _refuse_duplicate_keys(data: bytes) -> None:
    """Raise `EventError` naming a key that appears twice in one JSON object."""
    try:
        found = _duplicate_finder.decode(data.decode("utf-8"))
    except (ValueError, RecursionError):  # not JSON after all: msgspec's error stands
        return
    if isinstance(found, _Duplicate):
        field = found.parent or found.key
        where = f"{found.parent}.{_printable(found.key)}" if found.parent else _printable(found.key)
        raise EventError(f"{where}: duplicate key; name each field once in a JSON object",
                         field=field, reason="duplicate_key")


# --- deep nesting (fuzz): msgspec skips values it does not need (e.g. before finding
# `type`) recursively and raised RecursionError on a few thousand nested arrays, at a
# depth that depends on the caller's stack; refuse deep nesting first, the same way each time.
MAX_DEPTH = 64


def _deep_field(data: bytes) -> tuple[bool, str | None]:
    """Whether the JSON nests deeper than MAX_DEPTH (outside strings), and the top-level key holding it."""
    text = data.decode("utf-8", "replace")
    depth, in_string, escaped, start, last_string, key = 0, False, False, 0, "", None
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string, last_string = False, text[start:i]
        elif ch == '"':
            in_string, start = True, i + 1
        elif ch == ":" and depth == 1:
            key = last_string
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                try:
                    return True, (json.loads(f'"{key}"') if key is not None and depth > 1 else None)
                except ValueError:
                    return True, key
        elif ch in "]}":
            depth -= 1
    return False, None


def _too_deep(key: str | None, what: str) -> EventError:
    if key is None:
        return EventError(f"{what} is nested more than {MAX_DEPTH} levels deep; send a flat JSON object",
                          reason="too_deep")
    return EventError(f"{_printable(key)}: nested more than {MAX_DEPTH} levels deep; a field holds a string, "
                      "a number, a list of ids or a small flat object", field=key, reason="too_deep")


def _refuse_deep_nesting(data: bytes, what: str) -> None:
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH:  # cheap test first: valid events nest 2 deep
        deep, key = _deep_field(data)
        if deep:
            raise _too_deep(key, what)


def _printable(name: str, limit: int = 64) -> str:
    """Input echoed in a message (a field name, a bad value): control characters escaped, capped."""
    if not name:
        return '""'
    if name.isprintable() and len(name) <= limit:
        return name
    return repr(name[:limit])[1:-1] + ("..." if len(name) > limit else "")


def _explain(msg: str, data: bytes) -> EventError:
    m = _PATH.search(msg)
    field = m.group(2) if m else None
    in_key = " key" if m and m.group(1) else ""
    raw = _PATH.sub("", msg)
    text = _printable(raw, limit=300)  # msgspec quotes the bad value: keep logs clean
    if "is not a real calendar date-time" in text:
        return EventError(f"ts: {text.strip('`')}; use a date that exists", field="ts", reason="bad_ts")
    if text.startswith("Object missing required field"):
        missing = text.split("`")[1]
        if missing == "type":
            return EventError(f"type: missing required field; expected one of {', '.join(EVENT_TYPES)}",
                              field="type", reason="missing_field")
        kind = _type_of(data)
        return EventError(f"{missing}: missing required field; every `{kind}` event needs it",
                          field=missing, reason="missing_field")
    if text.startswith("Object contains unknown field"):
        extra = raw.split("`", 1)[1].rsplit("`", 1)[0]  # the name may hold backticks itself
        return EventError(f"{_printable(extra)}: unknown field; allowed fields are those of the event schema v1",
                          field=extra, reason="unknown_field")
    if text.startswith("Invalid value") and field == "type" or "`type`" in text:
        return EventError(f"type: {text}; expected one of {', '.join(EVENT_TYPES)}",
                          field="type", reason="unknown_type")
    if field is None:
        return EventError(f"event: {text}; an event is a JSON object", reason="invalid")
    if field == "ts" or field.startswith("ts"):
        return EventError(f"ts: {text}; expected epoch milliseconds between 2000 and 2100 "
                          "or an ISO-8601 date-time with a zone", field="ts", reason="bad_ts")
    top = field.split(".")[0].split("[")[0]
    return EventError(f"{field}{in_key}: {text}", field=top, reason="invalid_field")


def _type_of(data: bytes) -> str:
    try:
        return str(json.loads(data).get("type", "?"))
    except Exception:  # noqa: BLE001 - only used to word an error message
        return "?"


def encode(obj: msgspec.Struct) -> bytes:
    """JSON bytes of an event, recommendation or score request."""
    return _encoder.encode(obj)


# --------------------------------------------------------------------------- #
# Output and internal messages
# --------------------------------------------------------------------------- #
class Contribution(msgspec.Struct, kw_only=True):
    """One feature group's push on an item's ranker score (see `streamrec.serving.explain`)."""

    group: str
    """The feature group: a dense feature's name, or ``user``, ``item``, ``category`` (hashed ids)."""
    direction: Literal["up", "down"]
    effect: float
    """Score delta: the ranker's score minus its score with the group at its baseline."""
    text: str
    """The same in plain words, e.g. "viewed 3 similar items (shoes) in this session"."""


class RecommendedItem(msgspec.Struct, kw_only=True, omit_defaults=True):
    item_id: str
    score: float
    propensity: float
    """Probability that the serving policy put this item at this rank."""
    reason: str
    """Why it was proposed: seq, covisit:<item>, trending, content, explore..."""
    explanation: Union[list[Contribution], None] = None
    """Only when asked for (``?explain=true``, `Settings.scorer_explain_messages`): the feature groups that
    pushed the ranker's score up or down, largest first. Absent when not asked or not ranked (optional:
    consumers of older versions ignore it)."""


MAX_SEGMENTS = 64
"""Customer segment ids are ``0 .. MAX_SEGMENTS - 1`` (`streamrec segments`): metric labels stay bounded."""
Segment = Annotated[int, Meta(ge=0, lt=MAX_SEGMENTS, description="customer segment id")]


def segment_label(segment: int | None) -> str:
    """The metric label of a segment: its id, or ``none`` for users without one.

    >>> segment_label(3), segment_label(None), segment_label(999)
    ('3', 'none', 'none')
    """
    ok = isinstance(segment, int) and not isinstance(segment, bool) and 0 <= segment < MAX_SEGMENTS
    return str(segment) if ok else "none"


SERVED_SESSION = 50
"""Newest session items logged with a recommendation's features (what the online trainer's sequence model reads)."""


class ServedFeatures(msgspec.Struct, kw_only=True):
    """What the ranker read when it scored the slate (feature logging, `Settings.scorer_log_features`).

    The online trainer learns from these. Features read back later already hold the user's reaction to
    this very slate: the clicked item is in the session, its recency is "just now" and its counts include
    the click, so a model trained on them learns the reaction, not what predicts it.
    """

    names: list[str]
    """Dense feature names, the order of each row of ``dense``."""
    dense: list[list[float]]
    """One row per item of ``Recommendation.items``, in the same order."""
    session: list[str] = []
    """The session's items (oldest first, at most the last ``SERVED_SESSION``) that the sequence model read."""
    history: list[str] = []
    """The user's newest items of earlier sessions (oldest first, `Settings.scorer_history_items`) that the
    sequence model read before ``session``."""


class Recommendation(msgspec.Struct, kw_only=True):
    """The answer to one event, published on `recommendations` keyed by user_id."""

    rec_id: str
    user_id: str
    session_id: str
    trigger_event_id: str
    items: list[RecommendedItem]
    models: list[str] = []
    """name@version of each model used."""
    variant: str = "default"
    event_ts: int = 0
    created_ts: int = 0
    degraded: bool = False
    """True when served from the scorer's trending snapshot (Redis unreachable, or scoring failed); an answer
    without models is not degraded: ``models`` is empty."""
    segment: Union[Segment, None] = None
    """The user's customer segment when one is stored (`streamrec segments`); optional, so
    consumers written before it keep working."""
    features: Union[ServedFeatures, None] = None
    """The ranker's inputs for the items, as served (absent when not ranked or not logged)."""


class ScoreRequest(msgspec.Struct, kw_only=True, array_like=False):
    """Emitted by the worker once an event's features are committed to Redis."""

    event_id: str
    user_id: str
    session_id: str
    item_id: str
    type: str
    ts: int
    feature_version: int
    """Redis write sequence of the feature update that included this event."""
    rec_id: Union[str, None] = None
    """The recommendation the event answers (clicks on a slate): the scorer counts which candidate
    sources proposed the clicked item."""


class CatalogItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """Item metadata on the compacted `catalog` topic (key item_id; a null value removes it)."""

    item_id: Id
    category: Annotated[str, Meta(max_length=128)] = ""
    tags: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=64)] = []
    title: Annotated[str, Meta(max_length=512)] = ""
    description: Annotated[str, Meta(max_length=8192)] = ""
    price: Union[float, None] = None
    created_ts: Union[int, None] = None

    def redis_fields(self) -> dict[str, str]:
        fields = {"category": self.category, "tags": "|".join(self.tags), "title": self.title,
                  "description": self.description}
        if self.price is not None:
            fields["price"] = repr(self.price)
        if self.created_ts is not None:
            fields["created_ts"] = str(self.created_ts)
        return fields


def decode_catalog(data: bytes) -> CatalogItem:
    """Decode a catalog record, or raise `EventError` naming the field."""
    if len(data) > MAX_EVENT_BYTES:
        raise EventError(f"catalog record is {len(data)} bytes; the limit is {MAX_EVENT_BYTES}",
                         reason="too_large")
    _refuse_deep_nesting(data, "catalog record")
    try:
        return _catalog_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _explain(str(exc), data) from None
    except msgspec.DecodeError as exc:
        raise EventError(f"catalog record is not valid JSON: {exc}", reason="bad_json") from None
    except RecursionError:
        raise _too_deep(_deep_field(data)[1], "catalog record") from None


_catalog_decoder = msgspec.json.Decoder(CatalogItem)
recommendation_decoder = msgspec.json.Decoder(Recommendation)
score_request_decoder = msgspec.json.Decoder(ScoreRequest)


# --------------------------------------------------------------------------- #
# JSON Schema for non-Python producers
# --------------------------------------------------------------------------- #
SCHEMA_FILE = "event.schema.json"


def event_json_schema() -> dict:
    """The JSON Schema of an event, generated from the classes above."""
    schema = msgspec.json.schema(Event)
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://streamrec.dev/schemas/event-v1.json",
        "title": "streamrec event v1",
        "description": (f"One user event. Beyond this schema, producers must keep the UTF-8 JSON "
                        f"within {MAX_EVENT_BYTES} bytes and use ISO dates that exist (no 30 February)."),
        **schema,
    }
    return schema


def shipped_event_schema() -> dict:
    """The schema file shipped in the package."""
    return json.loads(resources.files(__package__).joinpath(SCHEMA_FILE).read_text("utf-8"))


Kind = Literal["view", "click", "add_to_cart", "purchase", "impression", "skip", "rating"]
