"""The scorer's HTTP endpoints: /healthz, /readyz (with degraded modes), /metrics, and the pull API.

``GET /v1/recommendations/{user_id}`` answers for the user's current session
(its newest item as the trigger), or a cold start for an unknown user, with
the same engine and policy as the Kafka path. ``?n=`` is not offered: the
slate size is the scorer's ``top_n``. ``?explain=true`` adds to each ranked
item the feature groups that pushed its score up or down (`streamrec.serving.explain`).
"""

from __future__ import annotations

import json
import time
import uuid
import re
from urllib.parse import unquote_to_bytes, urlsplit

import msgspec

from streamrec import security
from streamrec.health import HealthServer, json_error
from streamrec.stream import schemas
from streamrec.stream.schemas import ScoreRequest

PULL_PREFIX = "/v1/recommendations/"
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
EXPLAIN_VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
"""``?explain=``: the ranker's feature attributions per item (`streamrec.serving.explain`)."""


class _Server(HealthServer):
    """HealthServer whose /readyz also reports the scorer's degraded modes and models."""

    def __init__(self, scorer, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scorer = scorer

    def handle(self, raw_path, headers):
        parts = urlsplit(raw_path)
        if parts.path == "/readyz" and not parts.query:  # with a query, the base class refuses it
            ok, results = self.readiness()
            body = {"ready": ok, "checks": results, **self.scorer.status()}
            return (200 if ok else 503), "application/json", json.dumps(body).encode()
        return super().handle(raw_path, headers)


class ScorerHttp:
    def __init__(self, scorer, host: str, port: int):
        self.scorer = scorer
        self.http = _Server(scorer, host, port, checks={
            "consuming": scorer.consuming.is_set,
            "models_followed": scorer.models.caught_up.is_set,
        }, routes={PULL_PREFIX: self.pull}, port_setting="STREAMREC_SCORER_PORT")
        self.port = self.http.port
        # security: with a token set, the pull API answers only to `Authorization: Bearer <token>`;
        # health, readiness and metrics stay open for probes and Prometheus.
        self.token = security.pull_token(scorer.settings)

    def start(self) -> None:
        self.http.start()

    def stop(self) -> None:
        self.http.stop()

    def pull(self, rest: str, query, headers) -> tuple[int, str, bytes]:
        """One slate for the user. Blocks on Redis and ONNX Runtime: the HTTP server runs it in its thread pool,
        never on its event loop (`streamrec.health`)."""
        if self.token and not security.bearer_matches(headers, self.token):
            return json_error(401, "this endpoint needs the header `Authorization: Bearer <token>` with the token "
                                   "the scorer was given (STREAMREC_SCORER_PULL_TOKEN or _FILE); the request "
                                   "had none or another")
        unknown = [k for k in query if k != "explain"]
        if unknown:
            return json_error(400, f"unknown query parameter {unknown[0][:64]!r}; /v1/recommendations/{{user_id}} "
                                   "takes only explain=true|false (the slate size is the scorer's top_n)")
        explain = EXPLAIN_VALUES.get(query.get("explain", ["false"])[-1].lower())
        if explain is None:
            return json_error(400, "explain: use explain=true or explain=false")
        user_id = self._user_id(rest)
        if user_id is None:
            return json_error(400, "user_id: use /v1/recommendations/{user_id} with the percent-encoded UTF-8 "
                                   "user id of the events (1-256 characters, no whitespace, control "
                                   "characters or '/')")
        rec = self.scorer.engine.recommend([self._request(user_id)], explain=explain, log_features=False)[0]
        return 200, "application/json", schemas.encode(rec)

    @staticmethod
    def _user_id(rest: str) -> str | None:
        """The id from the path, by the same rules as `user_id` in events, or None (fuzz: bad
        percent-encoding, invalid UTF-8 and control characters used to reach Redis)."""
        rest = rest.strip("/")
        if _BAD_PERCENT.search(rest):
            return None
        try:  # the path comes as latin-1 (`streamrec.health.Route`); undo that, then decode strictly
            user_id = unquote_to_bytes(rest.encode("latin-1")).decode("utf-8")
            if "/" in user_id:
                return None
            return msgspec.convert(user_id, schemas.Id)
        except (UnicodeError, msgspec.ValidationError):
            return None

    def _request(self, user_id: str) -> ScoreRequest:
        """A request for the user's current session and newest item (cold start when unknown)."""
        reader = self.scorer.reader
        session, item = "", ""
        try:
            user = reader.client.hgetall(reader.keys.user(user_id))
            session = (user.get(b"cur") or b"").decode()
            if session:
                newest = reader.client.zrange(reader.keys.session_seq(user_id, session), -1, -1)
                item = newest[0].decode().split("\x1f", 1)[0] if newest else ""
        except Exception:  # noqa: BLE001 - Redis down: the engine serves the snapshot
            pass
        now = int(time.time() * 1000)
        return ScoreRequest(event_id=f"pull-{uuid.uuid4().hex}", user_id=user_id, session_id=session,
                            item_id=item, type="pull", ts=now, feature_version=0)
