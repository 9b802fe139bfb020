"""The HTTP endpoints against generated malformed requests sent over raw sockets: bad
methods, request lines, versions, ids, percent-encoding, UTF-8, queries and headers
always get a clean answer below 500 with a JSON body, never a hang, and the server
stays up."""

from __future__ import annotations

import http.client
import json
import random
import socket
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings as hsettings
from prometheus_client import CollectorRegistry

from streamrec import health
from streamrec.health import HealthServer

from .strategies import PULL, RawRequest, malformed_request, malformed_requests

pytestmark = pytest.mark.fuzz


def send(port: int, data: bytes, method: str = "GET") -> tuple[int, dict, bytes]:
    """Send raw bytes, read one response; a hang shows up as a socket timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before we finished sending (a huge line): the answer is still there
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def check_clean(port: int, request: RawRequest, allow_503: bool = False) -> int:
    method = "HEAD" if request.data.startswith(b"HEAD ") else "GET"
    status, headers, body = send(port, request.data, method)
    assert status < 500 or (allow_503 and status == 503), f"{request.kind}: {status} {body[:200]!r}"
    if headers.get("content-type", "").startswith("text/plain"):  # /metrics
        assert status == 200
        return status
    assert headers.get("content-type") == "application/json", (request.kind, status, headers)
    if method == "HEAD":
        assert body == b""
        return status
    answer = json.loads(body)
    if status >= 400:
        assert isinstance(answer.get("error"), str) and answer["error"], (request.kind, answer)
    return status


def get(port: int, path: str) -> tuple[int, bytes]:
    status, _, body = send(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    return status, body


@pytest.fixture(scope="module")
def server():
    old = health.CLIENT_TIMEOUT_S
    health.CLIENT_TIMEOUT_S = 2.0  # idle clients are dropped after 2 s instead of 10
    srv = HealthServer("127.0.0.1", 0, checks={"ok": lambda: True}, registry=CollectorRegistry()).start()
    yield srv
    srv.stop()
    health.CLIENT_TIMEOUT_S = old


def test_3000_malformed_requests_get_clean_4xx_and_the_server_stays_up(server):
    rnd = random.Random(9)
    statuses = Counter(check_clean(server.port, malformed_request(rnd)) for _ in range(3000))
    assert get(server.port, "/healthz") == (200, b'{"alive": true}')
    assert {400, 404, 405, 414} <= set(statuses), statuses
    print(f"\nstatuses: {dict(sorted(statuses.items()))}")


@given(malformed_requests())
@hsettings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_property_any_request_gets_a_clean_answer(server, request_):
    check_clean(server.port, request_)


@pytest.mark.parametrize("data,status", [
    (b"POST /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 405),
    (b"BREW /healthz HTTP/1.1\r\n\r\n", 405),
    (b"GET /healthz HTTP/9.9\r\n\r\n", 400),
    (b"GET /healthz\r\n\r\n", 200),  # HTTP/0.9 style: answered as HTTP/1.0, with a status line
    (b"\x00\x01\x02\r\n\r\n", 400),
    (b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", 400),
    (b"GET /healthz?" + b"&".join(b"p%d=1" % i for i in range(30)) + b" HTTP/1.1\r\n\r\n", 400),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431),
])
def test_known_bad_requests(server, data, status):
    assert check_clean(server.port, RawRequest(data, kind=repr(data[:40])), allow_503=True) == status


def test_head_is_served_and_other_methods_say_what_is_allowed(server):
    status, headers, body = send(server.port, b"HEAD /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", "HEAD")
    assert status == 200 and body == b""
    status, headers, body = send(server.port, b"DELETE /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status == 405 and headers["allow"] == "GET, HEAD" and "DELETE" in json.loads(body)["error"]


def test_idle_and_half_sent_clients_are_dropped_while_others_are_served(server):
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    half = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    half.sendall(b"GET /heal")
    try:
        assert get(server.port, "/healthz")[0] == 200
        assert idle.recv(1) == b"", "an idle client must be disconnected"
        assert half.recv(1) == b"", "a client that stops mid-request must be disconnected"
    finally:
        idle.close()
        half.close()


@pytest.mark.integration
def test_scorer_pull_api_answers_malformed_requests_cleanly(fresh_settings, tmp_path):
    """The scorer's HTTP server with its pull API, backed by the real Redis (no models: cold start)."""
    from ..integration.test_scorer import Running

    running = Running(fresh_settings.replace(registry_uri=str(tmp_path / "registry")))
    port = running.scorer.http.port
    try:
        rnd = random.Random(11)
        statuses = Counter(check_clean(port, malformed_request(rnd), allow_503=True) for _ in range(1500))
        assert statuses[200] > 0 and statuses[400] > 0, statuses
        for bad in ("%ff", "%zz", "a%00b", "%1b%5b2J", "x" * 257, "a%2Fb", "u1?n=5", "\xc3\xa9%ff"):
            status, body = get(port, PULL + bad)
            assert status == 400 and json.loads(body)["error"], (bad, status, body)
        assert get(port, "/readyz?verbose=1")[0] == 400
        status, body = get(port, PULL + "%C3%A9l%C3%A8ve")  # a real UTF-8 id, percent-encoded
        assert status == 200 and json.loads(body)["user_id"] == "élève"
        assert get(port, "/healthz")[0] == 200
    finally:
        assert running.stop() == 0
    print(f"\nscorer statuses: {dict(sorted(statuses.items()))}")
