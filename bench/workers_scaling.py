"""Candidate workers' throughput with a latency-bound candidate: 1, 2 and 4 workers.

    python bench/workers_scaling.py [--events 4000] [--workers 1,2,4] [--delay 0.1]
                                    [--concurrency 16] [--partitions 8] [--batch-size 128]
                                    [--runs 1] [--bootstrap HOST:PORT]

Without ``--bootstrap`` a broker of its own is started with ``scripts/kafka-local`` (free
ports, a fresh run directory under the temporary directory) and stopped at the end.

One ``slow_endpoint.py`` (answers every POST after ``--delay`` s) serves every run. For
each number of workers N, on fresh topics and a fresh store:

1. ``shadow run --role recorder`` starts, then N ``shadow worker`` processes (real
   subprocesses) with an HTTP candidate (``kind: http``, ``concurrency``) on an event
   topic of ``--partitions`` partitions;
2. once the workers' consumer group is stable with N members, ``--events`` events are
   produced;
3. the rate is the steady one: every item the workers handed over (in messages of a
   batch each) carries the time its worker sent it, and the rate is the items between
   the 10th and the 90th percentile of those times over that window (start-up and the
   last batches' tail left out);
4. the recorder must store every event once with one prediction that is not an error
   (read from its metrics while it runs, then from the store once it stopped); a run
   in which it stores nothing for 60 s fails, with the state of the workers' group.

Each run also prints the CPU the workers and the recorder used per event (Linux
``/proc``, from the stable group to the last event stored). With ``--runs`` each count
runs that many times and the best rate counts. The table gives each N's rate and its
ratio to one worker's. The targets (issue 23):
1, 2 and 4 workers at least 0.9x, 1.8x and 3.4x one worker's rate. The ideal for one
worker is ``concurrency / delay`` events/s.
"""

from __future__ import annotations

import argparse
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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import duckdb
from daemon_run import stop
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from local_broker import broker
from stage_timer import cpu_seconds

from connectors.compacted import ensure_topic
from shadow.service.control import DaemonFile

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOKEN = "bench-workers-token"
TARGETS = {1: 0.9, 2: 1.8, 4: 3.4}
JOIN_S = 45
STALL_S = 60
"""How long the recorder may store nothing before the run is given up."""
"""How long the workers have to form their consumer group (it takes seconds)."""
GROUP_OPTIONS = "{session_timeout_ms: 6000, heartbeat_interval_ms: 1000}"


# -- broker and endpoint ----------------------------------------------------------

def start_endpoint(delay: float) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, str(HERE / "slow_endpoint.py"), "--port", "0", "--delay", str(delay)],
        stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    first = process.stdout.readline().strip()
    if not first.startswith("listening on "):
        process.kill()
        raise SystemExit(f"slow_endpoint.py did not start: {first!r}")
    return process, f"http://127.0.0.1:{first.rsplit(' ', 1)[1]}/predict"


def stop_endpoint(process: subprocess.Popen[str]) -> dict[str, Any]:
    process.terminate()
    out, _ = process.communicate(timeout=30)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


# -- one cluster: a recorder and its workers ----------------------------------------

@dataclass
class Result:
    workers: int
    rate: float
    window_s: float
    handed_over: int
    by_worker: dict[str, int]
    stored_after_s: float
    load: tuple[float, float, float]
    worker_cpu_s: float
    """CPU the workers used from the moment their group was stable to the last event stored."""
    recorder_cpu_s: float


class Cluster:
    """Fresh topics, a configuration, a recorder and N workers, in ``directory``."""

    def __init__(self, directory: Path, bootstrap: str, url: str,
                 args: argparse.Namespace) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.directory, self.bootstrap, self.args = directory, bootstrap, args
        self.events, self.handoff = f"ws-events-{suffix}", f"ws-handoff-{suffix}"
        self.group = f"ws-workers-{suffix}"
        directory.mkdir(parents=True, exist_ok=True)
        ensure_topic(bootstrap, self.events, partitions=args.partitions)
        self.db = directory / "recorder.duckdb"
        self.config = directory / "workers.yaml"
        self.config.write_text(f"""
candidate: {{kind: http, url: "{url}", name: triage, version: "1",
             concurrency: {args.concurrency}, timeout_s: 30}}
store: {{path: recorder.duckdb}}
sources:
  events:
    - {{kind: kafka, bootstrap: "{bootstrap}", topics: [{self.events}], group: {self.group},
       options: {GROUP_OPTIONS}}}
workers:
  bootstrap: "{bootstrap}"
  topic: {self.handoff}
  partitions: {args.partitions}
  group: ws-recorder-{suffix}
daemon:
  api: {{port: 0}}
  shutdown_deadline: 30s
""", encoding="utf-8")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.api = ""

    def _start(self, name: str, *command: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
        env["SHADOW_API_TOKEN"] = TOKEN
        env["PYTHONPATH"] = str(ROOT)
        log: IO[bytes] = open(self.directory / f"{name}.log", "wb")  # noqa: SIM115
        with log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "shadow", *command, "--config", str(self.config)],
                cwd=self.directory, env=env, stdout=log, stderr=log)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")[-chars:]

    def start(self, workers: int) -> None:
        self._start("recorder", "run", "--role", "recorder")
        self.api = self._wait(self._recorder_api, 90, "the recorder's API")
        self._start_workers(workers)
        try:
            self._wait(lambda: self._group_stable(workers), JOIN_S,
                       f"{workers} workers in a stable consumer group")
        except SystemExit as exc:
            # Seen with kafka-python 3.0.12: a worker that joined, re-joined at once, sent
            # no heartbeat after and was removed from its group, polls on and never joins
            # again (docs/performance.md). Said, not hidden.
            print(f"  {workers} worker(s) did not form a group within {JOIN_S} s; starting "
                  f"them again ({str(exc).splitlines()[0]})", flush=True)
            self._stop_workers()
            self._start_workers(workers)
            self._wait(lambda: self._group_stable(workers), JOIN_S,
                       f"{workers} workers in a stable consumer group (second start)")

    def _start_workers(self, workers: int) -> None:
        for i in range(workers):
            self._start(f"worker-{i + 1}", "worker", "--name", f"w{i + 1}",
                        "--batch-size", str(self.args.batch_size))

    def _stop_workers(self) -> None:
        for name in [n for n in self.processes if n.startswith("worker-")]:
            stop(self.processes.pop(name), 30)

    def _recorder_api(self) -> str | None:
        self._check_alive()
        found = DaemonFile.read(self.db)
        return found.api if found is not None and http_get(found.api + "/ready")[0] == 200 \
            else None

    def _group_stable(self, workers: int) -> bool:
        self._check_alive()
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            group = admin.describe_groups([self.group]).get(self.group, {})
        except KafkaError:
            return False  # a fresh broker: no coordinator for the group yet
        finally:
            admin.close()
        return bool(group.get("group_state") == "Stable"
                    and len(group.get("members") or []) == workers)

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise SystemExit(f"{name} exited with {process.returncode}:\n"
                                 f"{self.log_tail(name)}")

    def _wait(self, probe: Any, timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = probe()
            if got:
                return got
            time.sleep(0.2)
        raise SystemExit(f"timed out waiting for {what}\n"
                         + "\n".join(f"-- {n}\n{self.log_tail(n)}" for n in self.processes))

    def produce(self, count: int) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=20)
        for i in range(count):
            event = {"event_id": f"e{i}", "key": f"T-{i}",
                     "occurred_at": "2026-05-04T08:00:00Z",
                     "payload": {"subject": f"ticket {i}", "category": "billing"}}
            producer.send(self.events, json.dumps(event).encode(), key=f"T-{i}".encode())
        producer.flush(timeout=60)
        producer.close()

    def cpu_seconds(self) -> dict[str, float]:
        """User and system CPU each process has used so far (Linux ``/proc``)."""
        return {name: cpu_seconds(process.pid) for name, process in self.processes.items()}

    def stored(self) -> int:
        status, body = http_get(self.api + "/metrics", token=TOKEN)
        found = re.search(r"^shadow_events_total (\S+)$", body, re.MULTILINE)
        return int(float(found.group(1))) if status == 200 and found else -1

    def wait_stored(self, count: int) -> None:
        """Until the recorder has stored ``count`` events; fails when none is stored for
        ``STALL_S``, saying what the workers' group looks like."""
        last, since = -1, time.monotonic()
        while (stored := self.stored()) < count:
            self._check_alive()
            if stored != last:
                last, since = stored, time.monotonic()
            elif time.monotonic() - since > STALL_S:
                raise SystemExit(f"no event stored for {STALL_S} s ({stored} of {count}); "
                                 f"the workers' group: {self._group_state()}\n"
                                 + "\n".join(f"-- {n}\n{self.log_tail(n)}"
                                             for n in self.processes))
            time.sleep(0.2)

    def _group_state(self) -> str:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            group = admin.describe_groups([self.group]).get(self.group, {})
        except KafkaError as exc:
            return f"not described ({exc})"
        finally:
            admin.close()
        return f"{group.get('group_state')} with {len(group.get('members') or [])} member(s)"

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise SystemExit(f"{name} did not stop within 60 s") from None
            if code != 0:
                raise SystemExit(f"{name} exited with {code}:\n{self.log_tail(name)}")

    def kill(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def http_get(url: str, *, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def handed_over(bootstrap: str, topic: str, expected: int) -> list[tuple[float, str]]:
    """(time sent, worker) of every item on the workers' topic (an event or a dead letter;
    a message holds a batch's items, all sent at its time)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        sent = []
        for m in consumer:
            message = json.loads(m.value)
            sent += [(m.timestamp / 1000, str(message["worker"]))] * len(message["items"])
    finally:
        consumer.close()
    if len(sent) < expected:
        raise SystemExit(f"{len(sent)} items handed over, expected at least {expected}")
    return sorted(sent)


def steady_rate(times: list[float]) -> tuple[float, float]:
    """Messages per second between the 10th and the 90th percentile of their times."""
    low, high = int(len(times) * 0.1), int(len(times) * 0.9) - 1
    window = times[high] - times[low]
    if window <= 0:
        raise SystemExit("the steady window is empty: use more --events")
    return (high - low) / window, window


def check_store(db: Path, count: int) -> None:
    """Every event stored once, with one prediction that is not an error."""
    with duckdb.connect(str(db), read_only=True) as con:
        events = con.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone()
        predictions = con.execute(
            "SELECT count(*), count(DISTINCT event_id), count(*) FILTER (error_kind IS NOT NULL)"
            " FROM predictions").fetchone()
    if events != (count, count) or predictions != (count, count, 0):
        raise SystemExit(f"store check failed: events (rows, distinct) {events}, predictions "
                         f"(rows, distinct, errors) {predictions}; expected {count} of each "
                         f"and no error")


def run(workers: int, bootstrap: str, url: str, args: argparse.Namespace) -> Result:
    cluster = Cluster(args.dir / f"workers-{workers}-{uuid.uuid4().hex[:6]}", bootstrap, url,
                      args)
    try:
        cluster.start(workers)
        cpu_before = cluster.cpu_seconds()
        produced_at = time.monotonic()
        cluster.produce(args.events)
        cluster.wait_stored(args.events)
        stored_at = time.monotonic()
        load = os.getloadavg()
        cpu = {name: used - cpu_before[name] for name, used in cluster.cpu_seconds().items()}
        cluster.stop()
    finally:
        cluster.kill()
    check_store(cluster.db, args.events)
    sent = handed_over(bootstrap, cluster.handoff, args.events)
    rate, window = steady_rate([t for t, _ in sent])
    by_worker: dict[str, int] = {}
    for _, worker in sent:
        by_worker[worker] = by_worker.get(worker, 0) + 1
    return Result(workers, rate, window, len(sent), by_worker, stored_at - produced_at, load,
                  worker_cpu_s=sum(v for k, v in cpu.items() if k != "recorder"),
                  recorder_cpu_s=cpu["recorder"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000, help="events per configuration")
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--delay", type=float, default=0.1, help="the endpoint's latency, s")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight per worker")
    parser.add_argument("--partitions", type=int, default=8, help="of the event topic")
    parser.add_argument("--batch-size", type=int, default=128, help="records per worker batch")
    parser.add_argument("--runs", type=int, default=1, help="runs of each count; the best counts")
    parser.add_argument("--bootstrap", help="an existing broker; default: start one with "
                        "scripts/kafka-local and stop it at the end")
    parser.add_argument("--dir", type=Path, default=HERE / "out")
    args = parser.parse_args()
    try:
        counts = [int(n) for n in args.workers.split(",")]
    except ValueError:
        parser.error(f"--workers: expected numbers separated by commas, got {args.workers!r}")
    if (args.events < 20 or args.delay <= 0 or args.concurrency < 1 or args.batch_size < 1
            or args.runs < 1 or min(counts) < 1 or args.partitions < max(counts)):
        parser.error("--events at least 20; --delay, --concurrency, --batch-size, --runs and "
                     "worker counts positive; --partitions at least the most workers")
    args.dir = args.dir.resolve()
    with broker(args.bootstrap, "workers-bench") as bootstrap:
        endpoint, url = start_endpoint(args.delay)
        results: list[Result] = []
        try:
            ideal = args.concurrency / args.delay
            print(f"events {args.events:,} per run, candidate latency {args.delay} s, "
                  f"concurrency {args.concurrency} per worker (ideal {ideal:,.0f} events/s per "
                  f"worker), {args.partitions} partitions, worker batch {args.batch_size}, "
                  f"broker {bootstrap}", flush=True)
            for n in counts:
                done = []
                for _ in range(args.runs):
                    result = run(n, bootstrap, url, args)
                    done.append(result)
                    shares = ", ".join(f"{w} {c:,}" for w, c in sorted(result.by_worker.items()))
                    print(f"  {n} worker(s): {result.rate:,.0f} events/s over "
                          f"{result.window_s:.1f} s; handed over {result.handed_over:,} "
                          f"({shares})"
                          f"; all stored {result.stored_after_s:.1f} s after producing began; "
                          f"CPU per event: workers {result.worker_cpu_s / args.events * 1000:.2f} "
                          f"ms, recorder {result.recorder_cpu_s / args.events * 1000:.2f} ms; "
                          f"load {result.load[0]:.2f}", flush=True)
                results.append(max(done, key=lambda r: r.rate))
        finally:
            served = stop_endpoint(endpoint)
    one = next((r.rate for r in results if r.workers == 1), None)
    print()
    print(f"{'workers':>7}  {'events/s':>9}  {'per worker':>10}  {'of ideal':>8}  "
          f"{'ratio to 1':>10}  {'target':>6}")
    for r in results:
        ratio = r.rate / one if one else float("nan")
        target = TARGETS.get(r.workers)
        verdict = "" if target is None or one is None else (
            f"{target:.1f}x " + ("met" if ratio >= target else "NOT met"))
        print(f"{r.workers:>7}  {r.rate:>9,.0f}  {r.rate / r.workers:>10,.0f}  "
              f"{r.rate / (r.workers * ideal):>8.1%}  {ratio:>10.2f}  {verdict}")
    print(f"endpoint: served {served.get('served', 0):,} calls, "
          f"max in flight {served.get('max_in_flight', 0)}")


if __name__ == "__main__":
    main()
