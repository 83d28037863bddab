"""Candidate workers and one recorder, as real processes against a real Kafka broker.

``shadow worker`` processes share the event topic's partitions in one consumer group,
call the candidate (:mod:`tests.service.scale_candidate`), publish live decisions and hand
every prediction over; ``shadow run --role recorder`` stores them, with the outcomes,
evaluates the rollout and publishes its state on a compacted topic the workers follow.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from connectors.compacted import ensure_topic
from shadow.store.database import Store
from tests.daemon_process import TOKEN, get, log_tail, ready_api, start_daemon, stop
from tests.service.test_metrics import check
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

CATEGORIES = ["billing", "login", "refund", "shipping"]
PARTITIONS = 4
STATE_MAX_AGE_S = 1.0


def category(i: int) -> str:
    return CATEGORIES[i % len(CATEGORIES)]


class Cluster:
    """A recorder, its workers, their topics and one configuration file for all of them."""

    def __init__(self, directory: Path, bootstrap: str) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.directory, self.bootstrap = directory, bootstrap
        self.events, self.outcomes = f"w-events-{suffix}", f"w-outcomes-{suffix}"
        self.actions, self.handoff = f"w-actions-{suffix}", f"w-handoff-{suffix}"
        self.state = f"w-state-{suffix}"
        for topic in (self.events, self.outcomes):
            ensure_topic(bootstrap, topic, partitions=PARTITIONS)
        self.db = directory / "recorder.duckdb"
        self.config = directory / "scale.yaml"
        group = "{session_timeout_ms: 6000, heartbeat_interval_ms: 1000}"
        self.config.write_text(f"""
candidate: {{callable: "tests.service.scale_candidate:triage", name: triage, version: "1"}}
store: {{path: recorder.duckdb, batch_size: 500}}
sources:
  events:
    - {{kind: kafka, bootstrap: "{bootstrap}", topics: [{self.events}],
       group: workers-{suffix}, options: {group}}}
  outcomes:
    - {{kind: kafka, bootstrap: "{bootstrap}", topics: [{self.outcomes}],
       group: recorder-outcomes-{suffix}, options: {group}}}
workers:
  bootstrap: "{bootstrap}"
  topic: {self.handoff}
  partitions: {PARTITIONS}
  group: recorder-{suffix}
  options: {group}
rollout:
  name: triage
  steps: [{{percent: 0}}, {{percent: 100}}]
  max_decision_age: null
  sink: {{kind: kafka, bootstrap: "{bootstrap}", topic: {self.actions}}}
  state_topic: {{bootstrap: "{bootstrap}", topic: {self.state}, heartbeat: 250ms,
                max_age: {STATE_MAX_AGE_S}s}}
daemon:
  api: {{port: 0}}
  jobs: {{evaluate_every: 1s, compare_every: 1s, reports_dir: reports}}
  shutdown_deadline: 10s
""", encoding="utf-8")
        self.recorder: subprocess.Popen[str] | None = None
        self.workers: dict[str, subprocess.Popen[str]] = {}
        self.started = 0
        self.api = ""

    def start_recorder(self) -> str:
        self.started += 1
        self.recorder = start_daemon(self.config, f"recorder-{self.started}.log",
                                     command=("run", "--role", "recorder"))
        self.api = ready_api(self.db, 90, process=self.recorder)
        return self.api

    def start_worker(self, name: str) -> subprocess.Popen[str]:
        self.started += 1
        process = start_daemon(self.config, f"{name}-{self.started}.log", token=None,
                               command=("worker", "--name", name, "--metrics", "127.0.0.1:0",
                                        "--batch-size", "50"))
        self.workers[name] = process
        return process

    def metrics_url(self, name: str) -> str:
        process = self.workers[name]

        def announced() -> str | None:
            found = re.search(r'"metrics": "(http://[^"]+)"', log_tail(process, 100_000))
            return found.group(1) if found else None

        return wait_until(announced, timeout_s=60, what=f"worker {name}'s metrics address",
                          details=lambda: log_tail(process))

    def promote(self) -> None:
        status, body = get(self.api + "/rollout/promote", token=TOKEN, method="POST",
                           body={"actor": "dana", "reason": "workers go live", "force": True})
        assert status == 200, body

    def rollback(self) -> None:
        status, body = get(self.api + "/rollout/rollback", token=TOKEN, method="POST",
                           body={"actor": "dana", "reason": "something is off"})
        assert status == 200, body

    def produce(self, tickets: range, *, chunk: int = 100, pause_s: float = 0.0) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=10)
        for i in tickets:
            key = f"T-{i}".encode()
            event = {"event_id": f"e{i}", "key": f"T-{i}", "occurred_at": "2026-05-04T08:00:00Z",
                     "payload": {"i": i, "category": category(i)}}
            producer.send(self.events, json.dumps(event).encode(), key=key)
            producer.send(self.outcomes, json.dumps({
                "key": f"T-{i}", "outcome": {"category": category(i)},
                "decided_at": "2026-05-04T09:00:00Z"}).encode(), key=key)
            if (i + 1) % chunk == 0:
                producer.flush(timeout=30)
                time.sleep(pause_s)
        producer.flush(timeout=30)
        producer.close()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
        env["SHADOW_API_TOKEN"] = TOKEN
        return subprocess.run([sys.executable, "-m", "shadow", *args, "--config",
                               str(self.config)], cwd=self.directory, env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    def stored(self) -> int:
        """Predictions the recorder has stored, from its report."""
        status, body = get(self.api + "/report?format=json", token=TOKEN)
        if status != 200:
            return 0
        report = json.loads(body)
        return int(report["candidates"][0]["predictions"]) if report["candidates"] else 0

    def wait_stored(self, count: int, timeout_s: float = 120) -> None:
        wait_until(self.stored, accept=lambda n: n >= count, timeout_s=timeout_s,
                   what=f"{count} predictions stored by the recorder",
                   details=self.logs)

    def logs(self) -> str:
        parts = [f"-- recorder\n{log_tail(self.recorder)}" if self.recorder else ""]
        parts += [f"-- {name}\n{log_tail(p)}" for name, p in self.workers.items()]
        return "\n".join(parts)

    def stop_all(self) -> None:
        for name, process in list(self.workers.items()):
            if process.poll() is None:
                code, text = stop(process)
                assert code == 0, f"worker {name} exited with {code}:\n{text[-3000:]}"
        if self.recorder is not None and self.recorder.poll() is None:
            code, text = stop(self.recorder)
            assert code == 0, text[-3000:]

    def kill_everything(self) -> None:
        for process in [*self.workers.values(), self.recorder]:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def cluster(kafka_bootstrap: str, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))  # the candidate
    made = Cluster(tmp_path, kafka_bootstrap)
    try:
        yield made
    finally:
        made.kill_everything()


def read_topic(bootstrap: str, topic: str, settle_s: float = 2.0) -> list[Any]:
    """Every message on ``topic`` (all partitions, from the start), once no more come."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=int(settle_s * 1000))
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in partitions]
        if not assigned:
            return []  # never written to: the topic does not even exist
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        return list(consumer)
    finally:
        consumer.close()


def store_counts(db: Path) -> dict[str, Any]:
    with Store(db, read_only=True) as store:
        q = store.db.execute
        return {
            "events": q("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone(),
            "predictions": q("SELECT count(*), count(DISTINCT event_id) FROM predictions"
                             ).fetchone(),
            "live": {r[0] for r in q("SELECT event_id FROM predictions WHERE mode = 'live'"
                                     ).fetchall()},
            "unpublished_live": q("SELECT count(*) FROM predictions WHERE mode = 'live' AND "
                                  "published_at IS NULL AND withdrawn_at IS NULL").fetchone(),
            "duplicates": q("SELECT count(*) FROM duplicates").fetchone(),
            "dead_letters": q("SELECT count(*) FROM dead_letters").fetchone(),
            "outcomes": q("SELECT count(*) FROM outcomes").fetchone(),
        }


def test_workers_killed_at_random_lose_nothing_and_store_nothing_twice(cluster: Cluster) -> None:
    """Five SIGKILLs of workers and two of the recorder, during a live run: every event
    stored once, predicted once, and every live decision published."""
    total, chunk = 3000, 250
    cluster.start_recorder()
    cluster.promote()
    for name in ("w1", "w2", "w3"):
        cluster.start_worker(name)
    rng = random.Random(7)
    kills, recorder_kills, spare = 0, 0, 3
    for start in range(0, total, chunk):
        cluster.produce(range(start, start + chunk))
        cluster.wait_stored(start // 2)  # traffic keeps flowing while processes die
        if kills < 5 and start // chunk % 2 == 1:
            name = rng.choice([n for n, p in cluster.workers.items() if p.poll() is None])
            cluster.workers[name].send_signal(signal.SIGKILL)
            cluster.workers[name].wait()
            kills += 1
            spare += 1
            cluster.start_worker(f"w{spare}")
        if recorder_kills < 2 and start // chunk in (4, 8):
            assert cluster.recorder is not None
            cluster.recorder.send_signal(signal.SIGKILL)
            cluster.recorder.wait()
            recorder_kills += 1
            cluster.start_recorder()
    assert (kills, recorder_kills) == (5, 2)
    cluster.wait_stored(total, timeout_s=180)
    wait_until(lambda: pending_live(cluster), accept=lambda n: n == 0, timeout_s=60,
               what="every live decision published", details=cluster.logs)
    cluster.stop_all()

    counts = store_counts(cluster.db)
    assert counts["events"] == (total, total)
    assert counts["predictions"] == (total, total)
    assert counts["duplicates"] == (0,) and counts["dead_letters"] == (0,)
    assert counts["outcomes"] == (total,)
    assert counts["unpublished_live"] == (0,)
    # Promoted before the first event: every event was routed live but those a worker saw
    # while the recorder was down (its state not heard within max_age), and every live
    # decision reached production at least once (a worker killed after publishing, before
    # committing, publishes again).
    assert len(counts["live"]) > total // 2
    published = Counter(json.loads(m.value)["event_id"] for m in
                        read_topic(cluster.bootstrap, cluster.actions))
    assert set(published) == counts["live"]


def pending_live(cluster: Cluster) -> int:
    status, body = get(cluster.api + "/metrics", token=TOKEN)
    if status != 200:
        return -1
    found = re.search(r'^shadow_live_decisions_pending\S* (\S+)$', body, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def test_a_rollback_reaches_every_worker_within_two_seconds(cluster: Cluster) -> None:
    """Traffic flows to three workers at 100 % live; after the rollback no worker publishes a
    live decision later than 2 s after it."""
    cluster.start_recorder()
    cluster.promote()
    for name in ("w1", "w2", "w3"):
        cluster.start_worker(name)
    cluster.produce(range(0, 200))
    cluster.wait_stored(200)
    stop_producing = threading.Event()

    def keep_producing() -> None:
        i = 200
        while not stop_producing.is_set():
            cluster.produce(range(i, i + 20))
            i += 20
            time.sleep(0.05)

    producer = threading.Thread(target=keep_producing, daemon=True)
    producer.start()
    try:
        # The three share the partitions once the group has rebalanced: the recorder has
        # heard from each.
        status = wait_until(lambda: cluster.cli("status"),
                            accept=lambda done: "workers heard from: 3" in done.stdout,
                            timeout_s=60, what="records from every worker", interval_s=0.5)
        assert status.returncode == 0, status.stderr
        assert all(f"  {name}: last record stored" in status.stdout
                   for name in ("w1", "w2", "w3"))
        time.sleep(2)
        rolled_back_at = time.time()
        cluster.rollback()
        time.sleep(4)
    finally:
        stop_producing.set()
        producer.join(30)
    cluster.stop_all()
    times = [m.timestamp / 1000 for m in read_topic(cluster.bootstrap, cluster.actions)]
    before = [t for t in times if t < rolled_back_at]
    assert len(before) > 200, "the workers were not acting before the rollback"
    late = [t - rolled_back_at for t in times if t > rolled_back_at + 2.0]
    assert late == []


def test_a_worker_that_stops_hearing_the_state_holds_its_live_decisions(
        cluster: Cluster) -> None:
    """The recorder frozen (SIGSTOP): its heartbeats stop, and after ``max_age`` the worker
    routes everything to shadow; once the recorder runs again, live decisions resume."""
    cluster.start_recorder()
    cluster.promote()
    cluster.start_worker("w1")
    metrics = cluster.metrics_url("w1")
    cluster.produce(range(0, 100))
    cluster.wait_stored(100)
    assert cluster.recorder is not None
    cluster.recorder.send_signal(signal.SIGSTOP)
    try:
        time.sleep(STATE_MAX_AGE_S + 2.0)
        cluster.produce(range(100, 200))

        def held() -> float:
            with urllib.request.urlopen(metrics, timeout=10) as response:
                text = response.read().decode()
            found = re.search(r"^shadow_worker_live_held_total (\S+)$", text, re.MULTILINE)
            return float(found.group(1)) if found else 0.0

        wait_until(held, accept=lambda n: n >= 100, timeout_s=60,
                   what="the worker to hold 100 live decisions", details=cluster.logs)
        with urllib.request.urlopen(metrics, timeout=10) as response:
            scraped = response.read().decode()
        linted = check("metrics", stdin=scraped)
        assert (linted.returncode, linted.stdout + linted.stderr) == (0, ""), scraped
        age = re.search(r"^shadow_worker_state_age_seconds (\S+)$", scraped, re.MULTILINE)
        assert age is not None and float(age.group(1)) > STATE_MAX_AGE_S
        assert re.search(r'^shadow_worker_predictions_total\{candidate="triage"\} 2\d\d',
                         scraped, re.MULTILINE), scraped
    finally:
        cluster.recorder.send_signal(signal.SIGCONT)
    cluster.produce(range(200, 300))
    cluster.wait_stored(300)
    cluster.stop_all()
    with Store(cluster.db, read_only=True) as store:
        modes = dict(store.db.execute(
            "SELECT event_id, mode FROM predictions").fetchall())
    assert {modes[f"e{i}"] for i in range(100, 200)} == {"shadow"}
    assert {modes[f"e{i}"] for i in range(0, 100)} == {"live"}
    assert "live" in {modes[f"e{i}"] for i in range(200, 300)}
    published = {json.loads(m.value)["event_id"]
                 for m in read_topic(cluster.bootstrap, cluster.actions)}
    assert not published & {f"e{i}" for i in range(100, 200)}


def test_a_worker_that_cannot_reach_the_state_topic_publishes_nothing_live(
        cluster: Cluster) -> None:
    """The worker's state topic on a broker that is not there: promoted or not, it never
    publishes a live decision, and says so in its metrics."""
    cluster.start_recorder()
    cluster.promote()
    unreachable = cluster.directory / "unreachable.yaml"
    unreachable.write_text(re.sub(r'state_topic: \{bootstrap: "[^"]+"',
                                  'state_topic: {bootstrap: "127.0.0.1:9"',
                                  cluster.config.read_text(encoding="utf-8")), encoding="utf-8")
    assert "127.0.0.1:9" in unreachable.read_text(encoding="utf-8")
    cluster.started += 1
    cluster.workers["w1"] = start_daemon(
        unreachable, f"w1-{cluster.started}.log", token=None,
        command=("worker", "--name", "w1", "--metrics", "127.0.0.1:0"))
    metrics = cluster.metrics_url("w1")
    cluster.produce(range(0, 50))
    cluster.wait_stored(50)
    with urllib.request.urlopen(metrics, timeout=10) as response:
        scraped = response.read().decode()
    assert re.search(r"^shadow_worker_live_allowed 0\.0$", scraped, re.MULTILINE), scraped
    assert re.search(r"^shadow_worker_state_revision NaN$", scraped, re.MULTILINE), scraped
    cluster.stop_all()
    with Store(cluster.db, read_only=True) as store:
        modes = {row[0] for row in store.db.execute("SELECT mode FROM predictions").fetchall()}
    assert modes == {"shadow"}
    assert read_topic(cluster.bootstrap, cluster.actions) == []
