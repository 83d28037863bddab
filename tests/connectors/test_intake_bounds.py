"""Webhook intake bounded in time and space: headers or a body that do not arrive are
refused, connections beyond the cap are turned away, floods of errors and refusals are
logged by the handful, and the daemon may open as many files as the system lets it."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import structlog

from connectors.webhook_server import RateLimitedErrors, WebhookServer
from tests.connectors.test_signatures import SECRET, sign_github
from tests.connectors.test_webhooks import PATH, PollingThread, endpoint, event
from tests.daemon_process import TOKEN, ready_api, stop
from tests.waiting import wait_until


def test_a_body_that_stops_arriving_is_refused_and_the_next_delivery_is_stored(
    tmp_path: Path,
) -> None:
    source = endpoint("github")
    with PollingThread(tmp_path / "s.duckdb", [source]) as pipeline, \
            WebhookServer(sources=[source], body_timeout_s=0.5) as server:
        body = event(1)
        headers = "".join(f"{k}: {v}\r\n" for k, v in sign_github(SECRET, body).items())
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
            slow.sendall(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                         f"\r\n".encode() + body[:10])
            started = time.monotonic()
            answer = slow.recv(4096).decode()
            waited = time.monotonic() - started
        assert answer.startswith("HTTP/1.1 408"), answer
        assert 0.4 <= waited < 3
        fine = event(2)
        response = httpx.post(server.url + PATH, content=fine, timeout=10,
                              headers={**sign_github(SECRET, fine), "X-GitHub-Delivery": "d-2"})
        assert response.status_code == 200
        assert [e[0] for e in pipeline.events()] == ["e2"]


def test_a_flood_of_the_same_error_is_logged_once_per_window_with_a_count() -> None:
    now = [0.0]
    handler = RateLimitedErrors(every_s=10.0, clock=lambda: now[0])
    error = OSError(24, "Too many open files")
    with structlog.testing.capture_logs() as logs:
        for i in range(1000):
            now[0] = i * 0.05  # 1,000 failed accepts in 50 s
            handler(None, {"message": "socket.accept() out of system resource",  # type: ignore[arg-type]
                           "exception": error})
        handler(None, {"message": "another thing", "exception": ValueError()})  # type: ignore[arg-type]
    logged = [e for e in logs if e["event"] == "webhook server error"]
    accepts = [e for e in logged if e["message"].startswith("socket.accept")]
    assert len(accepts) == 5  # at 0, 10, 20, 30 and 40 s
    assert [e["left_out_since_last"] for e in accepts] == [0, 199, 199, 199, 199]
    assert [e["message"] for e in logged if e not in accepts] == ["another thing"]


def test_the_daemon_may_open_as_many_files_as_its_hard_limit(tmp_path: Path) -> None:
    (tmp_path / "triage.py").write_text("def triage(event):\n    return 'billing'\n",
                                        encoding="utf-8")
    (tmp_path / "events.jsonl").write_text(json.dumps(
        {"event_id": "e1", "key": "k1", "occurred_at": "2026-01-01T00:00:00Z"}) + "\n",
        encoding="utf-8")
    (tmp_path / "daemon.yaml").write_text(
        'candidate: {callable: triage:triage, name: triage, version: "1"}\n'
        "store: {path: daemon.duckdb}\n"
        "sources: {events: [{kind: file, path: events.jsonl}]}\n"
        "daemon: {api: {port: 0}}\n", encoding="utf-8")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env["SHADOW_API_TOKEN"] = TOKEN
    with (tmp_path / "daemon.log").open("w") as log:
        # Started with the common soft limit of 1,024, as a login shell would give it.
        daemon = subprocess.Popen(
            [sys.executable, "-m", "shadow", "run", "--config", "daemon.yaml"], cwd=tmp_path,
            env=env, stdout=log, stderr=log, text=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)))
    daemon.log = tmp_path / "daemon.log"  # type: ignore[attr-defined]
    try:
        ready_api(tmp_path / "daemon.duckdb")
        limits: dict[str, Any] = {}
        for line in Path(f"/proc/{daemon.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                shown_soft, shown_hard = line.split()[3:5]
                limits = {"soft": shown_soft, "hard": shown_hard}
    finally:
        code, err = stop(daemon)
    assert code == 0, err
    assert limits == {"soft": str(hard), "hard": str(hard)} and hard > 1024


LATE_HEADERS = "webhook connections closed: request headers not received"


def _request(n: int) -> bytes:
    """A whole signed delivery of event ``n``, as raw HTTP/1.1 (kept alive)."""
    body = event(n)
    headers = "".join(f"{k}: {v}\r\n"
                      for k, v in sign_github(SECRET, body, delivery=f"d-{n}").items())
    return (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


def _response(sock: socket.socket) -> bytes:
    """One whole response (headers and a Content-Length body), the connection left open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    (length,) = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")]
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset ends it too)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


def _parts(answer: bytes) -> tuple[bytes, set[bytes], dict[str, Any]]:
    """The status line, the other header lines, and the JSON body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *headers = head.split(b"\r\n")
    assert f"Content-Length: {len(body)}".encode() in headers, answer
    return status, set(headers), json.loads(body)


def test_headers_that_stop_arriving_are_answered_408_and_the_next_delivery_is_stored(
    tmp_path: Path,
) -> None:
    source = endpoint("github")
    with PollingThread(tmp_path / "s.duckdb", [source]) as pipeline, \
            WebhookServer(sources=[source], header_timeout_s=0.5) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as slow:
            slow.sendall(_request(1)[:40])  # the request line and part of a header
            started = time.monotonic()
            answer = _until_closed(slow)
            waited = time.monotonic() - started
        status, headers, body = _parts(answer)
        assert status == b"HTTP/1.1 408 Request Timeout"
        assert b"Connection: close" in headers
        assert body == {"status": "timeout",
                        "reason": "the request headers did not arrive within 0.5 s"}
        assert 0.4 <= waited < 2
        fine = event(2)
        response = httpx.post(server.url + PATH, content=fine, timeout=10,
                              headers=sign_github(SECRET, fine, delivery="d-2"))
        assert response.status_code == 200
        assert [e[0] for e in pipeline.events()] == ["e2"]


def test_a_kept_alive_connection_trickling_its_next_headers_is_closed(tmp_path: Path) -> None:
    source = endpoint("github")
    with structlog.testing.capture_logs() as logs, \
            PollingThread(tmp_path / "s.duckdb", [source]) as pipeline, \
            WebhookServer(sources=[source], header_timeout_s=0.5) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as sender:
        sender.sendall(_request(1))
        assert _response(sender).startswith(b"HTTP/1.1 200 OK\r\n")
        answered = time.monotonic()
        sender.sendall(f"POST {PATH} HTTP/1.1\r\n".encode())
        sender.settimeout(0.1)

        def closed() -> bool:
            try:
                sender.sendall(b"X-Slow: 1\r\n")  # a header line every 0.1 s
                after = sender.recv(4096)
            except TimeoutError:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            assert after == b"", after  # closed without an answer: the last one was the 200
            return True

        # The socket's 0.1 s timeout paces the header lines.
        wait_until(closed, timeout_s=3, interval_s=0, what="the trickling connection closed")
        closed_after = time.monotonic() - answered
        assert 0.4 <= closed_after < 1.5
        assert [e[0] for e in pipeline.events()] == ["e1"]
    assert [e["closed"] for e in logs if e["event"].startswith(LATE_HEADERS)] == [1]


def test_an_idle_kept_alive_connection_is_closed_without_a_log_line(tmp_path: Path) -> None:
    source = endpoint("github")
    with structlog.testing.capture_logs() as logs, \
            PollingThread(tmp_path / "s.duckdb", [source]), \
            WebhookServer(sources=[source], header_timeout_s=0.3) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as sender:
        sender.sendall(_request(1))
        assert _response(sender).startswith(b"HTTP/1.1 200 OK\r\n")
        answered = time.monotonic()
        assert _until_closed(sender) == b""
        assert 0.2 <= time.monotonic() - answered < 1.5
    assert not [e for e in logs if e["event"].startswith(LATE_HEADERS)]


def _admitted(server: WebhookServer) -> bool:
    """Whether a new connection gets a request in (404 for no path) rather than the 503."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as probe:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            probe.sendall(b"GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Connection: close\r\n\r\n")
        return _until_closed(probe).startswith(b"HTTP/1.1 404 ")


def test_a_connection_beyond_max_connections_is_answered_503_and_closed(tmp_path: Path) -> None:
    source = endpoint("github")
    with PollingThread(tmp_path / "s.duckdb", [source]) as pipeline, \
            WebhookServer(sources=[source], max_connections=3) as server:
        with contextlib.ExitStack() as idle:
            for _ in range(3):
                idle.enter_context(socket.create_connection(("127.0.0.1", server.port),
                                                            timeout=5))
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as extra:
                started = time.monotonic()
                answer = _until_closed(extra)
                waited = time.monotonic() - started
        status, headers, body = _parts(answer)
        assert status == b"HTTP/1.1 503 Service Unavailable"
        assert {b"Retry-After: 5", b"Connection: close"} <= headers
        assert body == {"status": "unavailable", "reason": "too many connections are open"}
        assert waited < 1  # answered at once, not after a timeout
        # the three are closed on the server's side too
        wait_until(lambda: _admitted(server), timeout_s=5, interval_s=0.01,
                   what="a new connection admitted once the three idle ones closed")
        fine = event(1)
        response = httpx.post(server.url + PATH, content=fine, timeout=10,
                              headers=sign_github(SECRET, fine, delivery="d-1"))
        assert response.status_code == 200
        assert [e[0] for e in pipeline.events()] == ["e1"]


def test_refused_connections_are_logged_once_per_window() -> None:
    source = endpoint("github")
    with structlog.testing.capture_logs() as logs, \
            WebhookServer(sources=[source], max_connections=1) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=5):
        for _ in range(50):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as extra:
                assert _until_closed(extra).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    refusals = [e for e in logs if e["event"].startswith("webhook connections refused")]
    assert [(e["log_level"], e["refused"]) for e in refusals] == [("warning", 1)]
    assert len(logs) <= 3, logs
