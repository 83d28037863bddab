"""The daemon run for real: a subprocess against a real Kafka broker and a real HTTP candidate."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from shadow.store.database import Store
from tests.daemon_process import TOKEN, finished, get, ready_api, start_daemon, stop
from tests.http_server import Reply, Request, TestServer
from tests.waiting import wait_until

LABELS = ["billing", "login", "refund", "shipping"]


def label_of(i: int) -> str:
    return LABELS[i % 4]


def answer(request: Request) -> Reply:
    """Agrees with the humans except on every 20th ticket."""
    i = request.json()["payload"]["i"]
    return Reply(body={"category": label_of(i + (1 if i % 20 == 0 else 0))})


@pytest.fixture(scope="module")
def candidate() -> Iterator[TestServer]:
    with TestServer(answer) as server:
        yield server


class Deployment:
    """A config, its topics and a way to run the daemon on it."""

    def __init__(self, directory: Path, bootstrap: str, candidate_url: str) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.directory, self.bootstrap = directory, bootstrap
        self.events, self.outcomes = f"events-{suffix}", f"outcomes-{suffix}"
        self.decisions = f"decisions-{suffix}"
        self.db = directory / "daemon.duckdb"
        self.runs = 0
        self.process: subprocess.Popen[str] | None = None
        self.config = directory / "daemon.yaml"
        self.config.write_text(f"""
candidate:
  kind: http
  url: {candidate_url}/predict
  name: triage
  version: "7"
  output_path: category
store: {{path: daemon.duckdb, batch_size: 200}}
sources:
  events:
    - {{kind: kafka, bootstrap: "{bootstrap}", topics: [{self.events}], group: shadow-{suffix},
       options: {{session_timeout_ms: 6000, heartbeat_interval_ms: 1000}}}}
  outcomes:
    - {{kind: kafka, bootstrap: "{bootstrap}", topics: [{self.outcomes}],
       group: shadow-{suffix}-outcomes,
       options: {{session_timeout_ms: 6000, heartbeat_interval_ms: 1000}}}}
rollout:
  name: triage
  steps: [{{percent: 0, min_compared: 100000}}, {{percent: 25}}, {{percent: 100}}]
  sink: {{kind: kafka, bootstrap: "{bootstrap}", topic: {self.decisions}}}
daemon:
  api: {{port: 0}}
  jobs: {{evaluate_every: 1s, compare_every: 1s, reports_dir: reports}}
  shutdown_deadline: 10s
logging:
  redact: [payload.email]
""", encoding="utf-8")

    def produce(self, start: int, stop: int) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=20)
        for i in range(start, stop):
            event = {"event_id": f"e{i}", "key": f"t{i}", "occurred_at": "2026-01-01T00:00:00Z",
                     "payload": {"i": i, "email": f"person{i}@example.com"}}
            outcome = {"key": f"t{i}", "outcome": label_of(i),
                       "decided_at": "2026-01-02T00:00:00Z"}
            producer.send(self.events, json.dumps(event).encode(), key=f"t{i}".encode())
            producer.send(self.outcomes, json.dumps(outcome).encode(), key=f"t{i}".encode())
        producer.flush(timeout=60)
        producer.close()

    def start(self, *, token: str | None = TOKEN) -> subprocess.Popen[str]:
        self.runs += 1
        self.process = start_daemon(self.config, f"daemon-{self.runs}.log", token=token)
        return self.process

    def api(self, timeout_s: float = 60) -> str:
        """The API of the daemon started last, once it answers ready."""
        return ready_api(self.db, timeout_s, process=self.process)

    def cli(self, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
        env["SHADOW_API_TOKEN"] = token
        env["SHADOW_ACTOR"] = "dana"
        return subprocess.run([sys.executable, "-m", "shadow", *args, "--config",
                               str(self.config)], cwd=self.directory, env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    def wait_for(self, api: str, predictions: int, timeout_s: float = 120, *,
                 outcomes: int = 0) -> dict[str, Any]:
        def report() -> dict[str, Any]:
            status, body = get(api + "/report?format=json", token=TOKEN)
            return json.loads(body) if status == 200 else {}

        def enough(found: dict[str, Any]) -> bool:
            return bool(found and found["candidates"]
                        and found["candidates"][0]["predictions"] >= predictions
                        and found["outcomes"]["stored"] >= outcomes)

        return wait_until(report, accept=enough, timeout_s=timeout_s, interval_s=0.5,
                          what=f"{predictions} predictions and {outcomes} outcomes reported")


def counts(db: Path) -> tuple[int, int, int, int]:
    with Store(db, read_only=True) as store:
        return store.db.execute(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM predictions), "
            "(SELECT count(DISTINCT event_id) FROM predictions), "
            "(SELECT count(*) FROM outcomes)").fetchall()[0]


@pytest.fixture
def deployment(kafka_bootstrap: str, candidate: TestServer, tmp_path: Path) -> Deployment:
    return Deployment(tmp_path, kafka_bootstrap, candidate.url)


def test_events_flow_end_to_end_and_the_cli_steers_the_rollout_through_the_api(
    deployment: Deployment,
) -> None:
    deployment.produce(0, 400)
    daemon = deployment.start()
    try:
        api = deployment.api()
        report = deployment.wait_for(api, 400)
        (triage,) = report["candidates"]
        assert triage["events"] == 400

        status = deployment.cli("rollout", "status", "--format", "json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["status"] == "progressing"
        promoted = deployment.cli("rollout", "promote", "--force", "--reason", "owner ok")
        assert promoted.returncode == 0, promoted.stderr
        assert "step 1 (25 %, progressing) by dana" in promoted.stdout
        back = deployment.cli("rollout", "rollback", "--reason", "drill")
        assert back.returncode == 0, back.stderr
        refused = deployment.cli("rollout", "rollback", "--reason", "again")
        assert refused.returncode == 1 and "nothing is live" in refused.stderr

        # Unauthenticated and wrong-token calls are refused; health needs no token.
        assert get(api + "/rollout")[0] == 401
        assert get(api + "/rollout", token="wrong")[0] in (401, 403)
        assert get(api + "/rollout/promote", method="POST", body={"actor": "x", "reason": "y"}
                   )[0] == 401
        assert get(api + "/health")[0] == 200

        # A second daemon on the same store is refused with a clear message.
        second = deployment.start()
        second.wait(timeout=60)
        err = finished(second)
        assert second.returncode == 1 and "another daemon" in err
        assert "Traceback" not in err
    finally:
        code, err = stop(daemon)
    assert code == 0, err
    assert "person1@example.com" not in err  # the configured payload field is redacted
    history = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(h.get("event") == "daemon started" for h in history)
    assert counts(deployment.db)[:3] == (400, 400, 400)
    assert list((deployment.directory / "reports").glob("report-*.json"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_daemon_stopped_mid_stream_loses_nothing_after_restart(
    deployment: Deployment, sig: int
) -> None:
    total = 3000
    deployment.produce(0, total)
    daemon = deployment.start()
    api = deployment.api()
    deployment.wait_for(api, 300)
    code, err = stop(daemon, sig)
    if sig == signal.SIGTERM:
        assert code == 0, err
    else:
        assert code == -signal.SIGKILL
    stored = counts(deployment.db)
    assert stored[0] < total, "stopped too late to test anything"

    again = deployment.start()
    try:
        # the two topics are consumed side by side, neither waiting for the other
        deployment.wait_for(deployment.api(), total, timeout_s=180, outcomes=total)
    finally:
        code, err = stop(again)
    assert code == 0, err
    events, predictions, distinct, outcomes = counts(deployment.db)
    assert (events, predictions, distinct, outcomes) == (total, total, total, total)


def test_metrics_parse_as_prometheus_text_and_match_the_store(deployment: Deployment) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    deployment.produce(0, 200)
    daemon = deployment.start()
    try:
        api = deployment.api()
        deployment.wait_for(api, 200)
        assert get(api + "/metrics")[0] == 401
        status, text = get(api + "/metrics", token=TOKEN)
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        (events,) = families["shadow_events"].samples
        assert events.value == 200
        predictions = sum(s.value for s in families["shadow_predictions"].samples
                          if s.name.endswith("_total"))
        assert predictions == 200
    finally:
        code, err = stop(daemon)
    assert code == 0, err


def test_a_daemon_without_its_api_token_refuses_to_start(deployment: Deployment) -> None:
    daemon = deployment.start(token=None)
    daemon.wait(timeout=60)
    err = finished(daemon)
    assert daemon.returncode == 2
    assert "SHADOW_API_TOKEN" in err and "Traceback" not in err


def test_signed_webhook_deliveries_flow_through_the_daemon(
    candidate: TestServer, tmp_path: Path
) -> None:
    import base64
    import hashlib
    import hmac

    key = b"0123456789abcdef0123456789abcdef"
    secret = "whsec_" + base64.b64encode(key).decode()
    config = tmp_path / "hooks.yaml"
    config.write_text(f"""
candidate: {{kind: http, url: {candidate.url}/predict, name: triage, output_path: category}}
store: {{path: hooks.duckdb}}
sources:
  events:
    - {{kind: webhook, name: tickets, path: /hooks/tickets, scheme: standard,
       secret_env: HOOK_SECRET}}
daemon:
  api: {{port: 0}}
  webhooks: {{port: 0}}
""", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env.update(SHADOW_API_TOKEN=TOKEN, HOOK_SECRET=secret)
    log = tmp_path / "daemon.log"
    with open(log, "w", encoding="utf-8") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "shadow", "run", "--config", str(config)],
                                  cwd=tmp_path, env=env, stdout=out, stderr=out, text=True)
    daemon.log = log  # type: ignore[attr-defined]
    try:
        api = ready_api(tmp_path / "hooks.duckdb", process=daemon)
        hooks = json.loads(get(api + "/ready")[1])["checks"]["webhooks"]

        def post(i: int, signature_key: bytes) -> int:
            payload = json.dumps({"event_id": f"w{i}", "key": f"t{i}",
                                  "occurred_at": "2026-01-01T00:00:00Z",
                                  "payload": {"i": i}}).encode()
            delivery, stamp = f"msg_{i}", str(int(time.time()))
            mac = hmac.new(signature_key, f"{delivery}.{stamp}.".encode() + payload,
                           hashlib.sha256).digest()
            request = urllib.request.Request(
                hooks + "/hooks/tickets", data=payload, method="POST", headers={
                    "webhook-id": delivery, "webhook-timestamp": stamp,
                    "webhook-signature": "v1," + base64.b64encode(mac).decode(),
                    "content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert [post(i, key) for i in range(5)] == [200] * 5
        assert post(5, b"not the secret at all, not at all") == 401
        assert post(0, key) == 200  # a replayed delivery: acknowledged, stored once
        status, body = get(api + "/report?format=json", token=TOKEN)
        (triage,) = json.loads(body)["candidates"]
        assert (triage["events"], triage["predictions"]) == (5, 5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    assert daemon.returncode == 0, log.read_text(encoding="utf-8")
    assert counts(tmp_path / "hooks.duckdb")[:2] == (5, 5)


def test_a_judge_outage_shows_in_the_metrics_until_the_judge_answers(tmp_path: Path) -> None:
    """File sources, an HTTP candidate and a judge on one local server; the judge is down first."""
    from prometheus_client.parser import text_string_to_metric_families

    n = 6
    judge_up = False

    def reply(request: Request) -> Reply:
        if request.path == "/predict":
            i = int(request.json()["event_id"][1:])
            return Reply(body={"category": label_of(i)})
        if not judge_up:
            return Reply(status=503, body="overloaded")
        prompt = request.json()["messages"][1]["content"]  # the default rubric
        sides = re.search(r"AI output:\n(.*)\n\nHuman outcome:\n(.*)\n\nReply", prompt)
        assert sides is not None
        verdict = "agree" if sides.group(1) == sides.group(2) else "disagree"
        content = json.dumps({"verdict": verdict, "reason": "checked"})
        return Reply(body={"choices": [{"message": {"content": content}}]})

    # Every event's candidate answer is label_of(i); the human chose billing for all.
    with (tmp_path / "events.jsonl").open("w", encoding="utf-8") as events, \
            (tmp_path / "outcomes.jsonl").open("w", encoding="utf-8") as outcomes:
        for i in range(n):
            events.write(json.dumps({"event_id": f"e{i}", "key": f"t{i}",
                                     "occurred_at": "2026-01-01T00:00:00Z",
                                     "payload": {"i": i}}) + "\n")
            outcomes.write(json.dumps({"key": f"t{i}", "outcome": {"category": "billing"},
                                       "decided_at": "2026-01-02T00:00:00Z"}) + "\n")
    expected_agree = sum(label_of(i) == "billing" for i in range(n))

    def metrics(api: str) -> dict[str, dict[tuple[str, ...], float]]:
        status, text = get(api + "/metrics", token=TOKEN)
        assert status == 200
        found: dict[str, dict[tuple[str, ...], float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = tuple(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                found.setdefault(sample.name, {})[key] = sample.value
        return found

    def until(api: str, holds: Any, what: str) -> dict[str, dict[tuple[str, ...], float]]:
        return wait_until(lambda: metrics(api), accept=holds, timeout_s=60, interval_s=0.3,
                          what=what)

    def deferred_last_run(found: dict[str, dict[tuple[str, ...], float]]) -> float | None:
        values = list(found.get("shadow_comparisons_deferred_last_run", {}).values())
        return values[0] if values else None

    with TestServer(reply) as server:
        config = tmp_path / "daemon.yaml"
        config.write_text(f"""
candidate: {{kind: http, url: {server.url}/predict, name: triage, version: "7"}}
comparator:
  kind: judge
  base_url: {server.url}/v1
  model: test-judge
  prediction_path: category
  outcome_path: category
  max_attempts: 1
  cache: false
store: {{path: daemon.duckdb}}
sources:
  events: [{{kind: file, path: events.jsonl}}]
  outcomes: [{{kind: file, path: outcomes.jsonl}}]
daemon:
  api: {{port: 0}}
  jobs: {{compare_every: 1s}}
""", encoding="utf-8")
        daemon = start_daemon(config, "daemon.log")
        try:
            api = ready_api(tmp_path / "daemon.duckdb", process=daemon)
            down = until(api, lambda f: deferred_last_run(f) == n, "a compare run deferring all")
            assert sum(down.get("shadow_comparisons_total", {}).values()) == 0
            (total,) = down["shadow_comparisons_deferred_total"].values()
            assert total >= n and total % n == 0  # every run deferred every prediction
            judge_up = True
            up = until(api, lambda f: deferred_last_run(f) == 0, "a compare run with the judge up")
            verdicts = up["shadow_comparisons_total"]
            agreed = sum(v for k, v in verdicts.items() if "verdict=agree" in k)
            assert (agreed, sum(verdicts.values())) == (expected_agree, n)
        finally:
            code, err = stop(daemon)
    assert code == 0, err
