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
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qsl, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger(__name__)
Check = Callable[[], bool]
# A route answers (status, content type, body) for a path and its query.
Route = Callable[[str, dict[str, list[str]], dict[str, str]], tuple[int, str, bytes]]
MAX_PATH = 2048
# Bad input (fuzz): at most this many query parameters, and a client that sends
# nothing for this long is dropped instead of holding a thread forever.
MAX_QUERY_FIELDS = 20
CLIENT_TIMEOUT_S = 10.0


def json_error(status: int, message: str) -> tuple[int, str, bytes]:
    """A route's error answer: the status and a JSON body saying what to fix."""
    return status, "application/json", json.dumps({"error": message}).encode()


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
            timeout = CLIENT_TIMEOUT_S
            # Answer HTTP/0.9-style lines ("GET /x") and garbage with a status line and JSON too.
            default_request_version = "HTTP/1.0"

            def do_GET(self):  # noqa: N802 - http.server API
                self._answer(with_body=True)

            def do_HEAD(self):  # noqa: N802 - http.server API
                self._answer(with_body=False)

            def _answer(self, with_body: bool) -> None:
                try:
                    status, ctype, body = server.handle(self.path, dict(self.headers.items()))
                except Exception:  # noqa: BLE001 - a failing route must not kill the server
                    log.exception("error serving %s", self.path[:200])
                    status, ctype, body = 500, "application/json", b'{"error": "internal"}'
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                if status == 401:  # RFC 6750: say which scheme the route wants
                    self.send_header("WWW-Authenticate", 'Bearer realm="streamrec"')
                self.send_header("Content-Length", str(len(body)))
                try:
                    self.end_headers()
                    if with_body:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a probe's short time-out): nothing to answer

            def parse_request(self):
                if not self.raw_requestline.strip():  # http.server would hang up without a word
                    self.command, self.request_version, self.close_connection = None, "HTTP/1.0", True
                    self.requestline = ""
                    self.send_error(400, "empty request line; send e.g. GET /healthz HTTP/1.1")
                    return False
                return super().parse_request()

            def send_error(self, code, message=None, explain=None):
                """http.server's own refusals (bad request line, headers, methods) as JSON, not HTML."""
                if code == 501:  # a method we do not serve: the client's mistake, not ours
                    code, message = 405, f"method {str(self.command)[:32]!r} not allowed; use GET or HEAD"
                elif code == 505:  # HTTP/2.0, HTTP/9.9...: a client error, not one to page anyone for
                    code, message = 400, f"{message}; use HTTP/1.1"
                body = json.dumps({"error": message or self.responses.get(code, ("error",))[0]}).encode()
                self.log_error("code %d, message %s", code, message)
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Connection", "close")
                self.send_header("Content-Length", str(len(body)))
                if code == 405:
                    self.send_header("Allow", "GET, HEAD")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, *args):  # quiet: metrics count requests instead
                pass

            def finish(self):
                """Lingering close: read what the client still sends (a refused huge request) for a
                moment, so closing does not reset the connection before it reads our answer."""
                super().finish()
                try:
                    self.connection.shutdown(socket.SHUT_WR)
                    self.connection.settimeout(1.0)
                    drained = 0
                    while drained < 1 << 20:
                        chunk = self.connection.recv(65536)
                        if not chunk:
                            break
                        drained += len(chunk)
                except OSError:
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
        try:
            pairs = parse_qsl(parts.query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            return json_error(400, f"too many query parameters; at most {MAX_QUERY_FIELDS}")
        path, query = parts.path, {}
        for name, value in pairs:
            query.setdefault(name, []).append(value)
        if path in ("/healthz", "/readyz", "/metrics") and query:
            return json_error(400, f"unknown query parameter {next(iter(query))[:64]!r}; {path} takes none")
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
