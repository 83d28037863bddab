"""Candidate workers under faults: SIGKILLs during a long run, and rollbacks reaching them.

    python bench/workers_faults.py [--events 100000] [--workers 3] [--rollbacks 20]
                                   [--bootstrap HOST:PORT] [--dir DIR]

Without ``--bootstrap`` a broker of its own is started with ``scripts/kafka-local`` (free
ports, a fresh run directory) and stopped at the end.
Everything runs as real processes: one ``shadow run --role recorder`` and ``--workers``
``shadow worker`` processes with the trivial candidate, on topics of 8 partitions.

1. **Kills.** N events and their outcomes are produced; the rollout is promoted to 100 %
   before the first is read. While they are consumed, five workers chosen at random are
   SIGKILLed (each replaced at once by a new one) and the recorder twice (restarted at
   once), spread over the run. Once the recorder has stored N events it is stopped and
   the store counted: events and predictions stored (and distinct), duplicates, dead
   letters, live decisions never published, and live decisions missing from the action
   topic. Every one of these but the first two must be 0, and those two N.
2. **Rollbacks.** Events keep flowing (a producer thread); ``--rollbacks`` times, the
   rollout is promoted (``restart`` then ``promote --force``), live decisions are seen
   flowing, and it is rolled back through the control API. Each worker's metrics
   (``shadow_worker_state_revision``, polled every 10 ms) tell when the rollback reached
   it; the action topic's timestamps tell whether any worker published a live decision
   more than 2 s after a rollback. Prints p50, p99 and the maximum of the reach times.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from local_broker import broker  # noqa: E402

from connectors.compacted import ensure_topic  # noqa: E402
from shadow.service.control import DaemonFile  # noqa: E402
from shadow.store.database import Store  # noqa: E402

TOKEN = "bench-token"
PARTITIONS = 8
LATE_S = 2.0


class Cluster:
    def __init__(self, directory: Path, bootstrap: str) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.directory, self.bootstrap = directory, bootstrap
        self.events, self.outcomes = f"f-events-{suffix}", f"f-outcomes-{suffix}"
        self.actions, self.handoff = f"f-actions-{suffix}", f"f-handoff-{suffix}"
        for topic in (self.events, self.outcomes):
            ensure_topic(bootstrap, topic, partitions=PARTITIONS)
        self.db = directory / "recorder.duckdb"
        self.config = directory / "faults.yaml"
        group = "{session_timeout_ms: 6000, heartbeat_interval_ms: 1000}"
        self.config.write_text(f"""
candidate: {{callable: "trivial_candidate:label", name: trivial, version: "1"}}
comparator: {{kind: exact, prediction_path: category, outcome_path: category}}
store: {{path: recorder.duckdb}}
sources:
  events: [{{kind: kafka, bootstrap: "{bootstrap}", topics: [{self.events}],
            group: workers-{suffix}, options: {group}}}]
  outcomes: [{{kind: kafka, bootstrap: "{bootstrap}", topics: [{self.outcomes}],
              group: outcomes-{suffix}, options: {group}}}]
workers: {{bootstrap: "{bootstrap}", topic: {self.handoff}, partitions: {PARTITIONS},
          group: recorder-{suffix}, options: {group}}}
rollout:
  name: trivial
  steps: [{{percent: 0}}, {{percent: 100}}]
  max_decision_age: null
  sink: {{kind: kafka, bootstrap: "{bootstrap}", topic: {self.actions}}}
  state_topic: {{bootstrap: "{bootstrap}", topic: f-state-{suffix}, heartbeat: 250ms,
                max_age: 1s}}
daemon:
  api: {{port: 0}}
  jobs: {{evaluate_every: 1s, compare_every: 5s}}
  shutdown_deadline: 30s
""", encoding="utf-8")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
        self.env["SHADOW_API_TOKEN"] = TOKEN
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "bench"), str(ROOT)])
        self.recorder: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics: dict[str, str] = {}
        self.started = 0
        self.api = ""

    def _start(self, name: str, *command: str) -> subprocess.Popen[bytes]:
        self.started += 1
        log = open(self.directory / f"{name}-{self.started}.log", "wb")  # noqa: SIM115
        try:
            return subprocess.Popen([sys.executable, "-m", "shadow", *command, "--config",
                                     str(self.config)], cwd=self.directory, env=self.env,
                                    stdout=log, stderr=log)
        finally:
            log.close()

    def start_recorder(self) -> None:
        self.recorder = self._start("recorder", "run", "--role", "recorder")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = DaemonFile.read(self.db)
            if found is not None and self.recorder.poll() is None:
                try:
                    with urllib.request.urlopen(found.api + "/ready", timeout=5):
                        self.api = found.api
                        return
                except (urllib.error.URLError, OSError):
                    pass
            if self.recorder.poll() is not None:
                raise SystemExit(f"the recorder exited with {self.recorder.returncode}")
            time.sleep(0.1)
        raise SystemExit("the recorder did not answer ready within 120 s")

    def start_worker(self, name: str) -> None:
        process = self._start(name, "worker", "--name", name, "--metrics", "127.0.0.1:0")
        self.workers[name] = process
        log = self.directory / f"{name}-{self.started}.log"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(r'"metrics": "(http://[^"]+)"', log.read_text(errors="replace"))
            if found:
                self.metrics[name] = found.group(1)
                return
            if process.poll() is not None:
                raise SystemExit(f"worker {name} exited with {process.returncode}")
            time.sleep(0.05)
        raise SystemExit(f"worker {name} did not start within 60 s")

    def command(self, action: str, **body: Any) -> None:
        request = urllib.request.Request(
            f"{self.api}/rollout/{action}", method="POST",
            data=json.dumps({"actor": "bench", "reason": "bench", **body}).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def metric(self, url: str, name: str) -> float | None:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except (urllib.error.URLError, OSError):
            return None
        found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else None

    def stored(self) -> int:
        request = urllib.request.Request(f"{self.api}/metrics",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode()
        except (urllib.error.URLError, OSError):
            return -1
        found = re.search(r"^shadow_events_total (\S+)$", text, re.MULTILINE)
        return int(float(found.group(1))) if found else 0

    def produce(self, start: int, stop: int) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks=1, linger_ms=20,
                                 batch_size=256 * 1024)
        for i in range(start, stop):
            key = f"T-{i}".encode()
            producer.send(self.events, json.dumps({
                "event_id": f"e{i}", "key": f"T-{i}", "occurred_at": "2026-05-04T08:00:00Z",
                "payload": {"i": i}}).encode(), key=key)
            producer.send(self.outcomes, json.dumps({
                "key": f"T-{i}", "outcome": {"category": "billing"},
                "decided_at": "2026-05-04T09:00:00Z"}).encode(), key=key)
        producer.flush(timeout=120)
        producer.close()

    def stop(self, process: subprocess.Popen[bytes]) -> int:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def stop_all(self) -> None:
        for process in self.workers.values():
            if process.poll() is None:
                self.stop(process)
        if self.recorder is not None and self.recorder.poll() is None:
            code = self.stop(self.recorder)
            if code != 0:
                raise SystemExit(f"the recorder stopped with {code}")


def topic_messages(bootstrap: str, topic: str) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    try:
        assigned = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not assigned:
            return []
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        return list(consumer)
    finally:
        consumer.close()


def one(result: Any) -> tuple[Any, ...]:
    row = result.fetchone()
    assert row is not None
    return tuple(row)


def kills(cluster: Cluster, events: int, workers: int, rng: random.Random) -> None:
    cluster.start_recorder()
    cluster.command("promote", force=True)
    for n in range(workers):
        cluster.start_worker(f"w{n}")
    started = time.monotonic()
    cluster.produce(0, events)
    print(f"produced {events:,} events and outcomes in {time.monotonic() - started:.1f} s")
    # Five worker kills and two recorder kills, spread over the run by what is stored.
    plan = sorted([(events * k // 8, "worker") for k in (1, 2, 3, 5, 6)]
                  + [(events * k // 8, "recorder") for k in (4, 7)])
    spare = workers
    for threshold, victim in plan:
        while cluster.stored() < threshold:
            time.sleep(0.2)
        if victim == "worker":
            name = rng.choice([n for n, p in cluster.workers.items() if p.poll() is None])
            cluster.workers[name].send_signal(signal.SIGKILL)
            cluster.workers[name].wait()
            cluster.start_worker(f"w{spare}")
            spare += 1
        else:
            assert cluster.recorder is not None
            cluster.recorder.send_signal(signal.SIGKILL)
            cluster.recorder.wait()
            cluster.start_recorder()
        print(f"  SIGKILL {victim} at {cluster.stored():,} events stored "
              f"({time.monotonic() - started:.1f} s)")
    while cluster.stored() < events:
        time.sleep(0.5)
    # Live decisions a worker could not publish go out through the recorder's outbox.
    time.sleep(3)
    cluster.stop_all()
    print(f"all {events:,} stored after {time.monotonic() - started:.1f} s")
    with Store(cluster.db, read_only=True) as store:
        q = store.db.execute
        stored = one(q("SELECT count(*), count(DISTINCT event_id) FROM events"))
        predicted = one(q("SELECT count(*), count(DISTINCT event_id) FROM predictions"))
        duplicates = one(q("SELECT count(*) FROM duplicates"))
        dead = one(q("SELECT count(*) FROM dead_letters"))
        live = {r[0] for r in q("SELECT event_id FROM predictions WHERE mode = 'live'")
                .fetchall()}
        unpublished = one(q("SELECT count(*) FROM predictions WHERE mode = 'live' AND "
                            "published_at IS NULL AND withdrawn_at IS NULL"))
    published = {json.loads(m.value)["event_id"]
                 for m in topic_messages(cluster.bootstrap, cluster.actions)}
    rows = [("events stored (distinct)", f"{stored[0]:,} ({stored[1]:,})"),
            ("predictions stored (distinct)", f"{predicted[0]:,} ({predicted[1]:,})"),
            ("duplicates", duplicates[0]), ("dead letters", dead[0]),
            ("live decisions", f"{len(live):,}"),
            ("live decisions never published", unpublished[0]),
            ("live decisions missing from the action topic", len(live - published))]
    for label, value in rows:
        print(f"  {label:48} {value}")
    lost = events - stored[1]
    twice = stored[0] - stored[1] + predicted[0] - predicted[1]
    ok = (lost, twice, predicted[1], duplicates[0], dead[0], unpublished[0],
          len(live - published)) == (0, 0, events, 0, 0, 0, 0)
    print(f"kills: {lost} events lost, {twice} stored twice: {'ok' if ok else 'FAILED'}")
    if not ok:
        raise SystemExit(1)


def rollbacks(cluster: Cluster, count: int) -> None:
    if count < 1:
        return
    flowing = threading.Event()
    stop = threading.Event()

    def keep_producing() -> None:
        i = 10_000_000
        while not stop.is_set():
            cluster.produce(i, i + 50)
            i += 50
            flowing.set()
            time.sleep(0.1)

    producer = threading.Thread(target=keep_producing, daemon=True)
    producer.start()
    flowing.wait(30)
    reach: list[float] = []
    windows: list[tuple[float, float]] = []
    try:
        for n in range(count):
            if n:
                cluster.command("restart")
            cluster.command("promote", force=True)
            deadline = time.monotonic() + 30
            while not all(cluster.metric(url, "shadow_worker_live_allowed") == 1.0
                          for url in cluster.metrics.values()):
                if time.monotonic() > deadline:
                    raise SystemExit("the workers did not go live within 30 s")
                time.sleep(0.05)
            time.sleep(0.5)  # live decisions flow
            before = {name: cluster.metric(url, "shadow_worker_state_revision")
                      for name, url in cluster.metrics.items()}
            at = time.time()
            cluster.command("rollback")
            waiting = {name for name in cluster.metrics}
            while waiting:
                for name in list(waiting):
                    revision = cluster.metric(cluster.metrics[name],
                                              "shadow_worker_state_revision")
                    previous = before[name]
                    if revision is not None and previous is not None and revision > previous:
                        reach.append(time.time() - at)
                        waiting.discard(name)
                if time.time() - at > 30:
                    raise SystemExit(f"rollback {n} did not reach {sorted(waiting)} in 30 s")
                time.sleep(0.01)
            time.sleep(LATE_S + 0.5)
            windows.append((at, time.time()))
    finally:
        stop.set()
        producer.join(30)
    cluster.stop_all()
    times = [m.timestamp / 1000 for m in topic_messages(cluster.bootstrap, cluster.actions)]
    late = [t - at for at, until in windows for t in times if at + LATE_S < t <= until]
    ordered = sorted(reach)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(f"rollbacks: {count}, reaching {len(cluster.metrics)} workers each "
          f"({len(reach)} reach times)")
    print(f"  reach p50 {statistics.median(reach) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"max {max(reach) * 1000:.0f} ms (metrics polled every 10 ms)")
    print(f"  live decisions published more than {LATE_S:g} s after a rollback: {len(late)}")
    if late or p99 > LATE_S:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rollbacks", type=int, default=20)
    parser.add_argument("--bootstrap")
    parser.add_argument("--dir", type=Path, default=ROOT / "bench" / "out" / "faults")
    args = parser.parse_args()
    with broker(args.bootstrap, "faults-bench") as bootstrap:
        for part in ("kills", "rollbacks"):
            directory = args.dir / part
            directory.mkdir(parents=True, exist_ok=True)
            for old in directory.glob("recorder.duckdb*"):
                old.unlink()
            cluster = Cluster(directory, bootstrap)
            try:
                if part == "kills":
                    kills(cluster, args.events, args.workers, random.Random(7))
                else:
                    cluster.start_recorder()
                    for n in range(args.workers):
                        cluster.start_worker(f"w{n}")
                    rollbacks(cluster, args.rollbacks)
            finally:
                for process in [*cluster.workers.values(), cluster.recorder]:
                    if process is not None and process.poll() is None:
                        process.kill()
                        process.wait()


if __name__ == "__main__":
    main()
