"""HTTP endpoints every service shares: /healthz, /readyz, /metrics.

A small threaded server (standard library plus prometheus_client), so a
service's event loop or batch loop never has to serve HTTP. Services add
routes of their own (the scorer's pull API) through `routes`.

- ``/healthz``: the process is alive (200 unless it is shutting down).
- ``/readyz``: 200 with the checks as JSON when every check passes, else 503.
- ``/metrics``: Prometheus text format.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger(__name__)
Check = Callable[[], bool]
# A route answers (status, content type, body) for a path and its query.
Route = Callable[[str, dict[str, list[str]], dict[str, str]], tuple[int, str, bytes]]
MAX_PATH = 2048


class PortInUse(RuntimeError):
    """The HTTP port is taken; the message names the setting to change."""


class HealthServer:
    """Serves health, readiness and metrics on host:port in a daemon thread."""

    def __init__(self, host: str, port: int, checks: dict[str, Check] | None = None,
                 routes: dict[str, Route] | None = None, registry=REGISTRY,
                 port_setting: str = "the service's STREAMREC_*_PORT"):
        self.checks: dict[str, Check] = dict(checks or {})
        self.routes: dict[str, Route] = dict(routes or {})
        self.registry = registry
        self.stopping = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                try:
                    status, ctype, body = server.handle(self.path, dict(self.headers.items()))
                except Exception:  # noqa: BLE001 - a failing route must not kill the server
                    log.exception("error serving %s", self.path[:200])
                    status, ctype, body = 500, "application/json", b'{"error": "internal"}'
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet: metrics count requests instead
                pass

        try:
            self._httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise PortInUse(f"cannot serve health/metrics on {host}:{port}: {exc.strerror}; "
                            f"stop the other process or choose another port ({port_setting})") from None
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="health-http", daemon=True)

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        results = {}
        for name, check in self.checks.items():
            try:
                results[name] = bool(check())
            except Exception:  # noqa: BLE001 - a raising check is a failing check
                results[name] = False
        return (not self.stopping and all(results.values())), results

    def handle(self, raw_path: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
        if len(raw_path) > MAX_PATH:
            return 414, "application/json", b'{"error": "path too long"}'
        parts = urlsplit(raw_path)
        path, query = parts.path, parse_qs(parts.query, max_num_fields=20)
        if path == "/healthz":
            ok = not self.stopping
            return (200 if ok else 503), "application/json", json.dumps({"alive": ok}).encode()
        if path == "/readyz":
            ok, results = self.readiness()
            return (200 if ok else 503), "application/json", json.dumps({"ready": ok, "checks": results}).encode()
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        for prefix, route in self.routes.items():
            if path.startswith(prefix):
                return route(path[len(prefix):], query, headers)
        return 404, "application/json", b'{"error": "not found"}'

    def start(self) -> "HealthServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping = True
        self._httpd.shutdown()
        self._httpd.server_close()
