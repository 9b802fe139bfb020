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

Id = Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[^\s]+$",
                         description="non-empty identifier without whitespace")]
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
_PATH = re.compile(r" - at `\$\.?([^`]*)`$")


def decode_event(data: bytes) -> Event:
    """Decode and validate one event, or raise `EventError` naming the field and the fix."""
    if len(data) > MAX_EVENT_BYTES:
        raise EventError(f"event is {len(data)} bytes; the limit is {MAX_EVENT_BYTES} bytes (16 KiB)",
                         field=None, reason="too_large")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(f"event is not valid UTF-8 (byte {exc.start}); encode JSON as UTF-8",
                         reason="not_utf8") from None
    try:
        return _event_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _explain(str(exc), data) from None
    except msgspec.DecodeError as exc:
        raise EventError(f"event is not valid JSON: {exc}", reason="bad_json") from None


def _explain(msg: str, data: bytes) -> EventError:
    m = _PATH.search(msg)
    field = m.group(1) if m else None
    text = _PATH.sub("", msg)
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
        extra = text.split("`")[1]
        return EventError(f"{extra}: unknown field; allowed fields are those of the event schema v1",
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
    return EventError(f"{field}: {text}", field=top, reason="invalid_field")


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
class RecommendedItem(msgspec.Struct, kw_only=True):
    item_id: str
    score: float
    propensity: float
    """Probability that the serving policy put this item at this rank."""
    reason: str
    """Why it was proposed: seq, covisit:<item>, trending, content, explore..."""


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
    """True when served without a full feature read or without models."""


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
    try:
        return _catalog_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _explain(str(exc), data) from None
    except msgspec.DecodeError as exc:
        raise EventError(f"catalog record is not valid JSON: {exc}", reason="bad_json") from None


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
