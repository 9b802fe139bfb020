"""The HTTP server every service shares (`streamrec.health`): the port, shutting down, and routes that block."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from streamrec.health import HealthServer, PortInUse, json_error


def get(port: int, path: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, dict, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        if own:
            conn.close()


@pytest.fixture
def slow():
    """A server with a route that blocks until told to go on (as the pull API blocks on Redis and ONNX)."""
    go = threading.Event()

    def route(rest, query, headers):
        if rest == "wait":
            go.wait(10)
        return 200, "application/json", json.dumps({"rest": rest}).encode()

    srv = HealthServer("127.0.0.1", 0, checks={"ok": lambda: True}, routes={"/slow/": route},
                       registry=CollectorRegistry()).start()
    yield srv, go
    go.set()
    srv.stop()


def test_a_taken_port_is_a_clear_error_naming_the_setting():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port}.*choose another port \\(STREAMREC_SCORER_PORT\\)"):
            HealthServer("127.0.0.1", port, port_setting="STREAMREC_SCORER_PORT")


def test_stop_answers_503_on_healthz_then_releases_the_port():
    srv = HealthServer("127.0.0.1", 0, registry=CollectorRegistry()).start()
    port = srv.port
    assert get(port, "/healthz")[::2] == (200, b'{"alive": true}')
    srv.stopping = True  # what a service sets when SIGTERM arrives, before it drains
    status, headers, body = get(port, "/healthz")
    assert (status, body) == (503, b'{"alive": false}') and headers["content-type"] == "application/json"
    assert get(port, "/readyz")[0] == 503
    srv.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    HealthServer("127.0.0.1", port, registry=CollectorRegistry()).start().stop()  # the port is free again


def test_a_server_never_started_releases_its_port_on_stop():
    srv = HealthServer("127.0.0.1", 0)
    srv.stop()
    HealthServer("127.0.0.1", srv.port).stop()


def test_a_blocking_route_does_not_hold_up_probes_or_other_requests(slow):
    srv, go = slow
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(get(srv.port, "/slow/wait")))
    waiting.start()
    time.sleep(0.2)
    # The blocked route is released only after these answers: had they queued behind it, they would never come.
    assert get(srv.port, "/healthz")[0] == 200
    assert get(srv.port, "/readyz")[0] == 200
    assert get(srv.port, "/slow/fast")[::2] == (200, b'{"rest": "fast"}')
    assert not answers
    go.set()
    waiting.join(10)
    assert answers and answers[0][0] == 200


def test_stop_lets_a_request_in_progress_finish(slow):
    srv, go = slow
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(get(srv.port, "/slow/wait")))
    waiting.start()
    time.sleep(0.2)
    threading.Timer(0.3, go.set).start()
    srv.stop()
    waiting.join(10)
    assert answers and answers[0][0] == 200


def test_keep_alive_connections_are_reused_and_errors_are_json(slow):
    srv, _ = slow
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    for _ in range(3):
        assert get(srv.port, "/healthz", conn)[0] == 200
    status, headers, body = get(srv.port, "/nope", conn)
    assert status == 404 and headers["content-type"] == "application/json" and json.loads(body)["error"]
    assert get(srv.port, "/metrics", conn)[1]["content-type"].startswith("text/plain")
    conn.close()


def test_a_failing_route_is_a_json_500_and_the_server_stays_up():
    def broken(rest, query, headers):
        raise RuntimeError("boom")

    srv = HealthServer("127.0.0.1", 0, routes={"/broken/": broken, "/teapot/": lambda *_: json_error(418, "tea")},
                       registry=CollectorRegistry()).start()
    try:
        assert get(srv.port, "/broken/x")[::2] == (500, b'{"error": "internal"}')
        assert get(srv.port, "/teapot/x")[::2] == (418, b'{"error": "tea"}')
        assert get(srv.port, "/healthz")[0] == 200
    finally:
        srv.stop()
