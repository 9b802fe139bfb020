"""HTTP endpoints every service shares: /healthz, /readyz, /metrics.

Served by aiohttp's server, in a thread of its own with its own event loop, so
a service's event loop or batch loop never has to serve HTTP. Services add
routes of their own (the scorer's pull API) through `routes`.

- ``/healthz``: the process is alive (200 unless it is shutting down).
- ``/readyz``: 200 with the checks as JSON when every check passes, else 503.
- ``/metrics``: Prometheus text format.

Routes and checks are plain blocking functions (the pull API reads Redis and
runs ONNX Runtime): they run in a small thread pool, never on the event loop,
which only parses requests and writes answers. ``/healthz`` reads one flag and
is answered on the loop itself, so a liveness probe never queues behind slow
routes. Every refusal, the parser's included (bad request line, method,
version, headers, a line too long), is JSON saying what to fix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Callable
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, BadStatusLine, HttpProcessingError, InvalidURLError, LineTooLong
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger(__name__)
Check = Callable[[], bool]
# A route answers (status, content type, body) for a path and its query. The path is the request target as
# sent, its bytes read as latin-1 (what the standard library's http.server handed over).
Route = Callable[[str, dict[str, list[str]], dict[str, str]], tuple[int, str, bytes]]
MAX_PATH = 2048
# Bad input (fuzz): at most this many query parameters, and a client that sends
# nothing for this long is dropped instead of holding a connection forever.
MAX_QUERY_FIELDS = 20
CLIENT_TIMEOUT_S = 10.0
# The parser's limits: a longer request line is answered 414, more header lines or a longer one 431.
MAX_REQUEST_LINE = 8190
MAX_HEADERS = 100
MAX_HEADER_LINE = 65536
ROUTE_THREADS = 8
"""Routes and checks answered at once; more wait for a thread (they never block the event loop)."""
STOP_TIMEOUT_S = 5.0
"""On stop, requests in progress get this long to finish before their connections are closed."""
ALLOW = "GET, HEAD"
EXAMPLE = "send e.g. GET /healthz HTTP/1.1"
_HEAD_CAP = MAX_HEADER_LINE + 16384
_VERSION = re.compile(rb"HTTP/\d\.\d")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_HOST = re.compile(rb"^host[ \t]*:", re.IGNORECASE | re.MULTILINE)


def json_error(status: int, message: str) -> tuple[int, str, bytes]:
    """A route's error answer: the status and a JSON body saying what to fix."""
    return status, "application/json", json.dumps({"error": message}).encode()


class PortInUse(RuntimeError):
    """The HTTP port is taken; the message names the setting to change."""


def _reason(exc: BaseException) -> str:
    """The parser's reason in one short line (llhttp's messages span lines and quote the bytes)."""
    text = getattr(exc, "message", "") or str(exc)
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip() and ln.strip() != "Bad status line:"]
    return (lines[0].rstrip(":") if lines else "malformed request")[:120]


class _Connection(web.RequestHandler):
    """aiohttp's connection handler, with JSON answers to what its parser refuses.

    A connection's first request is read whole (its request line and headers, up to `_HEAD_CAP` bytes)
    before aiohttp's parser sees it, to answer as the standard library's server did where aiohttp would
    not: an empty or one-word request line (400, where aiohttp waits or says nothing useful), HTTP/0.9's
    ``GET /path`` (served as HTTP/1.0), an HTTP version other than 1.0 and 1.1 (400; aiohttp would echo it
    in its status line), and HTTP/1.1 without ``Host`` (served: a hand-typed probe, ``printf ... | nc``).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._first = b""  # the connection's first bytes, until its first request's head is complete
        self._checked = False
        self._method = ""

    def data_received(self, data: bytes) -> None:
        if not self._checked:
            data = self._first_request(data)
            if not data:
                return
        super().data_received(data)

    def _first_request(self, data: bytes) -> bytes:
        head = self._first = self._first + data
        line_end = head.find(b"\n")
        if line_end < 0 and len(head) <= MAX_REQUEST_LINE + 16:
            return b""  # wait for the rest (a client that never sends it is dropped after the time-out)
        words = (head[:line_end] if line_end >= 0 else head[:64]).split()
        self._method = words[0][:32].decode("latin-1") if words else ""
        if line_end < 0:
            return self._pass(head)  # too long: the parser answers 414
        if len(words) == 2 and words[0] == b"GET":  # HTTP/0.9: no version and no headers
            return self._pass(head[:line_end].rstrip(b"\r") + b" HTTP/1.0\r\n\r\n")
        if len(words) < 3:
            line = head[:line_end].strip()[:64]
            return self._refuse(f"{'bad request line ' + repr(line) if line else 'empty request line'}; {EXAMPLE}")
        version = words[2] if len(words) == 3 else b""
        if _VERSION.fullmatch(version) and version not in (b"HTTP/1.0", b"HTTP/1.1"):
            return self._refuse(f"{version.decode()} is not served; use HTTP/1.1")
        if version == b"HTTP/1.1":
            blank = _BLANK_LINE.search(head, line_end)
            if blank is None:
                return b"" if len(head) <= _HEAD_CAP else self._pass(head)
            if not _HOST.search(head, line_end, blank.start() + 1):
                head = head[:line_end + 1] + b"Host: \r\n" + head[line_end + 1:]
        return self._pass(head)

    def _pass(self, data: bytes) -> bytes:
        self._checked, self._first = True, b""
        return data

    def _refuse(self, message: str) -> bytes:
        self._pass(b"")
        if self.transport is not None:
            body = b"" if self._method == "HEAD" else json.dumps({"error": message}).encode()
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            self.transport.close()
        return b""

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """The parser's refusals (and a failing handler) as JSON naming what to fix, never HTML or text."""
        headers = {}
        if isinstance(exc, BadHttpMethod):  # a method the parser does not know: the client's mistake
            status, text = 405, f"method {self._method!r} not allowed; use GET or HEAD" if self._method else \
                "method not allowed; use GET or HEAD"
            headers["Allow"] = ALLOW
        elif isinstance(exc, LineTooLong):
            limit = exc.args[1] if len(exc.args) > 1 else None
            if limit == MAX_REQUEST_LINE:
                status, text = 414, f"request line longer than {MAX_REQUEST_LINE} bytes; paths are at most {MAX_PATH}"
            else:
                status, text = 431, f"a header line longer than {MAX_HEADER_LINE} bytes; send shorter headers"
        elif isinstance(exc, BadStatusLine):
            status, text = 400, f"bad request line ({_reason(exc)}); {EXAMPLE}"
        elif isinstance(exc, InvalidURLError):
            status, text = 400, (f"bad request target ({_reason(exc)}); send a path such as /healthz, with "
                                 "spaces, control and non-ASCII characters percent-encoded")
        elif isinstance(exc, HttpProcessingError):
            if "Too many headers" in _reason(exc):
                status, text = 431, f"more than {MAX_HEADERS} header lines; send fewer"
            else:
                status, text = 400, f"bad request ({_reason(exc)}); {EXAMPLE} and 'Name: value' header lines"
        else:
            if exc is not None:
                log.error("error serving HTTP", exc_info=exc)
            text = "internal" if status >= 500 else HTTPStatus(status).phrase
        log.debug("refused a request: %d %s", status, text)
        body = b"" if self._method == "HEAD" else json.dumps({"error": text}).encode()
        response = web.Response(status=status, body=body, content_type="application/json", headers=headers)
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> _Connection:
        return _Connection(self, loop=self._loop, **self._kwargs)


class HealthServer:
    """Serves health, readiness and metrics on host:port from a daemon thread with its own event loop.

    The port is bound here (`PortInUse` when taken), so ``port`` is known before `start`; `stop` closes it.
    """

    def __init__(self, host: str, port: int, checks: dict[str, Check] | None = None,
                 routes: dict[str, Route] | None = None, registry=REGISTRY,
                 port_setting: str = "the service's STREAMREC_*_PORT"):
        self.checks: dict[str, Check] = dict(checks or {})
        self.routes: dict[str, Route] = dict(routes or {})
        self.registry = registry
        self.stopping = False
        self.client_timeout_s = CLIENT_TIMEOUT_S
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._sock = socket.create_server((host, port), family=family, backlog=128)
        except OSError as exc:
            raise PortInUse(f"cannot serve health/metrics on {host}:{port}: {exc.strerror}; "
                            f"stop the other process or choose another port ({port_setting})") from None
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self.port = self.address[1]
        self._pool = ThreadPoolExecutor(ROUTE_THREADS, thread_name_prefix="health-route")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.BaseRunner | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="health-http", daemon=True)

    # ------------------------------------------------------------------ answers (any thread)
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

    def _handle_safely(self, raw_path: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
        try:
            return self.handle(raw_path, headers)
        except Exception:  # noqa: BLE001 - a failing route must not kill the server
            log.exception("error serving %s", raw_path[:200])
            return 500, "application/json", b'{"error": "internal"}'

    # ------------------------------------------------------------------ the event loop's side
    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, content_type="application/json", headers={"Allow": ALLOW},
                                body=json.dumps({"error": f"method {request.method[:32]!r} not allowed; "
                                                          "use GET or HEAD"}).encode())
        if request.version[0] != 1:
            return web.Response(status=400, content_type="application/json", body=json.dumps(
                {"error": f"HTTP/{request.version[0]}.{request.version[1]} is not served; use HTTP/1.1"}).encode())
        if isinstance(request.protocol, _Connection):
            request.protocol._method = ""  # the first request's method; a later refusal names none
        # The target's bytes as latin-1, as routes have always been given it (aiohttp reads them as UTF-8).
        raw_path = request.raw_path.encode("utf-8", "surrogateescape").decode("latin-1")
        headers = dict(request.headers.items())
        if raw_path == "/healthz":  # one flag: answered here, never behind slow routes
            status, ctype, body = self._handle_safely(raw_path, headers)
        else:
            status, ctype, body = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._handle_safely, raw_path, headers)
        response = web.Response(status=status, body=body, headers={"Content-Type": ctype})
        if status == 401:  # RFC 6750: say which scheme the route wants
            response.headers["WWW-Authenticate"] = 'Bearer realm="streamrec"'
        return response

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            async def setup() -> None:
                server = _Server(self._answer, keepalive_timeout=self.client_timeout_s, lingering_time=1.0,
                                 max_line_size=MAX_REQUEST_LINE, max_headers=MAX_HEADERS,
                                 max_field_size=MAX_HEADER_LINE, access_log=None)
                self._runner = web.ServerRunner(server, shutdown_timeout=STOP_TIMEOUT_S)
                await self._runner.setup()
                await web.SockSite(self._runner, self._sock).start()

            loop.run_until_complete(setup())
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._failed = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            leftover = asyncio.all_tasks(loop)  # e.g. a connection still draining a refused request's body
            for task in leftover:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def start(self) -> "HealthServer":
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            self._sock.close()
            raise self._failed
        return self

    def stop(self) -> None:
        """Answer 503 on /healthz, finish the requests in progress (up to `STOP_TIMEOUT_S`), release the port."""
        self.stopping = True
        loop = self._loop
        if loop is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(STOP_TIMEOUT_S + 5)
        self._sock.close()  # the site closed it already when it ran; closing twice is harmless
        self._pool.shutdown(wait=False, cancel_futures=True)
