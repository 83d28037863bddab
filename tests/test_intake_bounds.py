"""Webhook intake bounded in time and space: a body that does not arrive is refused, a
flood of errors is logged by the handful, and the daemon may open as many files as the
system lets it."""

from __future__ import annotations

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
from tests.daemon_process import TOKEN, ready_api, stop
from tests.test_signatures import SECRET, sign_github
from tests.test_webhooks import PATH, Pipeline, endpoint, event


def test_a_body_that_stops_arriving_is_refused_and_the_next_delivery_is_stored(
    tmp_path: Path,
) -> None:
    source = endpoint("github")
    with Pipeline(tmp_path / "s.duckdb", [source]) as pipeline, \
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
