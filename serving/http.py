"""The scorer's HTTP endpoints: /healthz, /readyz (with degraded modes), /metrics, and the pull API.

``GET /v1/recommendations/{user_id}`` answers for the user's current session
(its newest item as the trigger), or a cold start for an unknown user, with
the same engine and policy as the Kafka path. ``?n=`` is not offered: the
slate size is the scorer's ``top_n``.
"""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import unquote

from streamrec.health import HealthServer
from streamrec.stream import schemas
from streamrec.stream.schemas import ScoreRequest

PULL_PREFIX = "/v1/recommendations/"


class _Server(HealthServer):
    """HealthServer whose /readyz also reports the scorer's degraded modes and models."""

    def __init__(self, scorer, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scorer = scorer

    def handle(self, raw_path, headers):
        if raw_path.split("?", 1)[0] == "/readyz":
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

    def start(self) -> None:
        self.http.start()

    def stop(self) -> None:
        self.http.stop()

    def pull(self, rest: str, query, headers) -> tuple[int, str, bytes]:
        user_id = unquote(rest).strip("/")
        if not user_id or "/" in user_id or len(user_id) > 256 or any(ch.isspace() for ch in user_id):
            return 400, "application/json", json.dumps(
                {"error": "user_id: use /v1/recommendations/{user_id} with a non-empty id without "
                          "whitespace or '/'"}).encode()
        rec = self.scorer.engine.recommend([self._request(user_id)])[0]
        return 200, "application/json", schemas.encode(rec)

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
