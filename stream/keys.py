"""The Redis key layout: every key, what it holds, and its TTL. Nowhere else.

All keys start with ``Settings.redis_prefix`` and carry a hash tag, so that
the keys one script touches share a Redis Cluster slot:

=============================================  ==========================================  =========
key                                            holds                                       TTL
=============================================  ==========================================  =========
``P{u:USER}:ev:WINDOW``                        hash event-id digest -> marker: decision,       MARKER
                                               source partition:offset, session, neighbour  window
                                               items, fv (dedup, replays); WINDOW = server time //
                                               MARKER seconds, read with the window before
``P{u:USER}:user``                             hash: ``n:TYPE`` counts, first_ts, last_ts,  USER
                                               max_ts (lateness watermark), fv (feature
                                               version), cur (latest session id)
``P{u:USER}:recent``                           zset item -> last event ts (long-term,       USER
                                               capped at RECENT_CAP)
``P{u:USER}:aff``                              hash category -> decayed affinity at ``_L``  USER
``P{u:USER}:bought``                           zset item -> last purchase ts (capped at     USER
                                               RECENT_CAP): never recommended again
``P{u:USER}:sessions``                         zset session id -> last ts                  USER
``P{u:USER}:s:SESSION``                        hash: ``n:TYPE`` counts, first_ts, last_ts   SESSION
``P{u:USER}:s:SESSION:seq``                    zset ``item\x1ftype\x1ffv`` -> ts            SESSION
``P{u:USER}:forgotten``                        epoch ms of a `forget` request: older        FORGOTTEN
                                               events of the user are dropped
``P{u:USER}:segment``                          the user's customer segment id (written by   SEGMENT
                                               `streamrec segments`, read by the scorer)
``P{i:ITEM}:stats``                            hash: ``n:TYPE`` raw counts, ``d:TYPE``      ITEM
                                               decayed at ``_t``, last_ts, ctr (smoothed)
``P{i:ITEM}:covis``                            zset next item -> forward-decayed weight     ITEM
                                               (landmark in ``P{i:ITEM}:hw`` ``_L``)
``P{i:ITEM}:hw``                               hash source partition -> last applied        ITEM
                                               offset (replay guard), ``_L`` landmark
``P{i:ITEM}:meta``                             hash: catalog metadata (category, tags...)   CATALOG
``P{trending}:decay``                          zset item -> forward-decayed weight          TRENDING
``P{trending}:h:HOUR``                         zset item -> weight within one event hour    WINDOW
``P{trending}:hw``                             hash partition -> offset, ``_L`` landmark    TRENDING
``P{catalog}:removed``                         set of items removed from the catalog        CATALOG
``P{audit}:forget``                            list of forget requests (hashed ids only)    AUDIT
=============================================  ==========================================  =========

SEGMENT is ``Settings.segments_ttl_s`` (a few refresh periods): a user left out of later
segment runs loses the segment when it expires instead of keeping a stale one for ever.

Decayed values use the event time, never the arrival time, so late and
out-of-order events give the same result as in-order ones. Forward decay
(``w * 2**((t - L) / half_life)`` added to a zset with landmark ``L``) keeps a
sorted set ordered without rewriting every member on each event; members are
rescaled when the landmark moves.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True)
class FeatureConfig:
    """Caps, TTLs and decay constants of the feature store (all event-time based)."""

    marker_ttl_s: int = 6 * 3600
    """How long, at least, an event id is remembered for deduplication (at most twice that: markers live in
    windows of this length, each read until the next one ends)."""
    session_ttl_s: int = 2 * 86400
    user_ttl_s: int = 90 * 86400
    item_ttl_s: int = 90 * 86400
    trending_ttl_s: int = 7 * 86400
    window_ttl_s: int = 2 * 86400
    catalog_ttl_s: int = 365 * 86400
    forgotten_ttl_s: int = 30 * 86400
    audit_ttl_s: int = 365 * 86400
    session_gap_ms: int = 30 * 60_000
    """Inactivity that ends a derived session."""
    lateness_ms: int = 6 * HOUR_MS
    """Events older than the user's newest event by more than this go to the DLQ as too_late."""
    future_skew_ms: int = 5 * 60_000
    """Events stamped later than their Kafka timestamp by more than this are refused."""
    seq_cap: int = 50
    recent_cap: int = 200
    covis_cap: int = 100
    covis_neighbours: int = 5
    """How many of the session's previous items an event is co-visited with."""
    trending_cap: int = 2000
    affinity_half_life_ms: int = 7 * DAY_MS
    item_half_life_ms: int = DAY_MS
    trending_half_life_ms: int = HOUR_MS
    covis_half_life_ms: int = 7 * DAY_MS
    ctr_prior_clicks: float = 1.0
    ctr_prior_exposures: float = 20.0


    @classmethod
    def from_settings(cls, settings) -> "FeatureConfig":
        """The configurable part comes from the settings; the rest are documented constants."""
        return cls(marker_ttl_s=settings.dedup_ttl_s, session_gap_ms=settings.session_gap_s * 1000,
                   lateness_ms=settings.lateness_s * 1000, session_ttl_s=settings.session_ttl_s)


def glob_escape(text: str) -> str:
    """``text`` with Redis glob characters escaped, for SCAN MATCH patterns built from a prefix or id."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


# Weights of an event type in affinities, trending and co-visitation.
TYPE_WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0,
                "rating": 1.0, "impression": 0.0, "skip": 0.0}


class Keys:
    """Builds key names for one prefix. Lua scripts build the per-slot suffixes themselves
    from the base keys below, following the table in this module's docstring."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def user_base(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}"

    def item_base(self, item_id: str) -> str:
        return f"{self.prefix}{{i:{item_id}}}"

    @property
    def trending_base(self) -> str:
        return f"{self.prefix}{{trending}}"

    @property
    def catalog_base(self) -> str:
        return f"{self.prefix}{{catalog}}"

    @property
    def audit_base(self) -> str:
        return f"{self.prefix}{{audit}}"

    # Concrete keys used from Python (readers, tests, forget).
    def user(self, user_id: str) -> str:
        return self.user_base(user_id) + ":user"

    def recent(self, user_id: str) -> str:
        return self.user_base(user_id) + ":recent"

    def affinity(self, user_id: str) -> str:
        return self.user_base(user_id) + ":aff"

    def bought(self, user_id: str) -> str:
        return self.user_base(user_id) + ":bought"

    def sessions(self, user_id: str) -> str:
        return self.user_base(user_id) + ":sessions"

    def session(self, user_id: str, session_id: str) -> str:
        return f"{self.user_base(user_id)}:s:{session_id}"

    def session_seq(self, user_id: str, session_id: str) -> str:
        return self.session(user_id, session_id) + ":seq"

    def forgotten(self, user_id: str) -> str:
        return self.user_base(user_id) + ":forgotten"

    def segment(self, user_id: str) -> str:
        return self.user_base(user_id) + ":segment"

    def markers(self, user_id: str, window: int) -> str:
        """The hash of the user's event-id markers written in ``window`` (server seconds // marker TTL)."""
        return f"{self.user_base(user_id)}:ev:{window}"

    def item_stats(self, item_id: str) -> str:
        return self.item_base(item_id) + ":stats"

    def item_meta(self, item_id: str) -> str:
        return self.item_base(item_id) + ":meta"

    def covis(self, item_id: str) -> str:
        return self.item_base(item_id) + ":covis"

    def item_hw(self, item_id: str) -> str:
        return self.item_base(item_id) + ":hw"

    @property
    def trending(self) -> str:
        return self.trending_base + ":decay"

    def trending_hour(self, hour: int) -> str:
        return f"{self.trending_base}:h:{hour}"

    @property
    def trending_hw(self) -> str:
        return self.trending_base + ":hw"

    @property
    def removed(self) -> str:
        return self.catalog_base + ":removed"

    @property
    def forget_audit(self) -> str:
        return self.audit_base + ":forget"


def marker_field(event_id: str) -> str:
    """The field an event id's marker has in its window: 72 bits of BLAKE2b in base64 (12 characters, where an
    SDK id takes 32 and a client's own id up to 256). A collision (an event taken for a duplicate) becomes
    likely only past about 2**36 events of one user within two marker windows.

    >>> marker_field("0123456789abcdef0123456789abcdef")
    'L6yZVePiD+Qn'
    """
    return base64.b64encode(hashlib.blake2b(event_id.encode(), digest_size=9).digest()).decode()


def marker_windows(keys: Keys, user_id: str, now_s: int, marker_ttl_s: int) -> tuple[str, str]:
    """The two hashes an event id is looked up in at Redis server time ``now_s``: its window's and the one
    before (as ``user.lua``'s ``marker_windows`` reads them)."""
    window = now_s // marker_ttl_s
    return keys.markers(user_id, window), keys.markers(user_id, window - 1)
