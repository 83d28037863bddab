"""Sources fail on their own: a broker that is away stops neither the daemon nor its
other sources, is reported while it is away, and gets its offsets once it is back.

The guard is driven by a fake clock; the outage is a real broker of the test's own,
stopped and started again, under a real daemon subprocess taking signed webhooks.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import structlog
from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook

from connectors.base import RawRecord, Source
from connectors.kafka import KafkaSource
from connectors.kafka_batch import KafkaBatch
from shadow.core.errors import SourceError
from shadow.pipeline.source_guard import GuardedSource
from shadow.store.database import Store
from tests.clock import ManualClock
from tests.connectors.test_kafka import events, produce, topic_name
from tests.daemon_process import TOKEN, get, ready_api, start_daemon, stop
from tests.kafka import SCRIPT, broker_env
from tests.waiting import wait_until

# -- the guard, on a fake clock ----------------------------------------------------------


class Flaky(Source):
    """A source that fails whatever ``failing`` names, and counts what was asked of it."""

    def __init__(self) -> None:
        self.name = "flaky"
        self.failing: set[str] = set()
        self.said_away: str | None = None
        self.calls: list[str] = []
        self.committed: list[str] = []

    def _fail(self, what: str) -> None:
        self.calls.append(what)
        if what in self.failing:
            raise SourceError(f"{what} refused\nsecond line")

    def _open(self) -> None:
        self._fail("open")

    def _poll(self, max_records: int) -> list[RawRecord]:
        self._fail("poll")
        return [RawRecord(self.name, "p1", {"event_id": "e1"}, b"{}")]

    def commit(self, position: str) -> None:
        self._fail("commit")
        self.committed.append(position)

    def away(self) -> str | None:
        return self.said_away

    def _close(self) -> None:
        pass


def guarded(flaky: Flaky, clock: ManualClock) -> GuardedSource:
    # `uniform` returns its upper bound: the backoff is 1, 2, 4, … s, capped at 8.
    return GuardedSource(flaky, max_backoff_s=8.0, clock=clock,
                         now=lambda: datetime(2026, 1, 1, tzinfo=UTC),
                         uniform=lambda low, high: high)


def test_a_source_that_cannot_open_is_retried_after_a_doubling_backoff() -> None:
    flaky, clock = Flaky(), ManualClock()
    flaky.failing = {"open"}
    source = guarded(flaky, clock)
    with structlog.testing.capture_logs() as logs:
        source.open()  # does not raise
        status = source.status()
        assert (status.up, status.reason, status.failures) == (False, "open failed: open refused",
                                                                 1)
        assert status.retry_in_s == 1.0
        waits = []
        for _ in range(5):
            assert source.poll(10) == []  # before the retry time: not even tried
            opened = flaky.calls.count("open")
            clock.t += source.status().retry_in_s or 0.0
            assert source.poll(10) == []
            assert flaky.calls.count("open") == opened + 1
            waits.append(source.status().retry_in_s)
        assert waits == [2.0, 4.0, 8.0, 8.0, 8.0]
        flaky.failing = set()
        clock.t += 8.0
        assert [r.position for r in source.poll(10)] == ["p1"]
    assert source.status().up and source.status().failures == 0
    warnings = [e["event"] for e in logs if e["log_level"] == "warning"]
    # one line going away, then one per doubling of the failures (2, 4): six failures, 3 lines
    assert warnings == ["source away; the others go on", "source still away",
                        "source still away"]


def test_a_failing_poll_or_commit_makes_the_source_away_without_raising() -> None:
    flaky, clock = Flaky(), ManualClock()
    source = guarded(flaky, clock)
    source.open()
    assert len(source.poll(10)) == 1
    flaky.failing = {"commit"}
    source.commit("p1")
    assert source.status().reason == "commit failed: commit refused"
    assert flaky.committed == []
    flaky.failing = {"poll"}
    clock.t += 1.0
    assert source.poll(10) == []
    assert source.status().failures == 2 and source.status().retry_in_s == 2.0
    flaky.failing = set()
    clock.t += 2.0
    assert len(source.poll(10)) == 1
    source.commit("p1")
    assert flaky.committed == ["p1"] and source.status().up


class FlakyBatches(Flaky):
    """A flaky source that also reads its polls as one batch, as a Kafka source does."""

    def poll_batch(self, max_records: int) -> KafkaBatch:
        self._fail("poll")
        return KafkaBatch(self.name, [SimpleNamespace(topic="t", partition=0, offset=7,
                                                      value=b"{}")])


def test_a_batch_poll_is_guarded_as_a_poll_is() -> None:
    clock = ManualClock()
    assert guarded(Flaky(), clock).poll_batch is None  # the inner source reads no batches
    flaky = FlakyBatches()
    flaky.failing = {"open"}
    source = guarded(flaky, clock)
    assert source.poll_batch is not None
    with pytest.raises(RuntimeError, match="cannot poll source 'flaky': it is new"):
        source.poll_batch(10)
    source.open()
    assert len(source.poll_batch(10)) == 0  # could not open: nothing, and not tried again
    assert flaky.calls == ["open"]
    flaky.failing = {"poll"}
    clock.t += 1.0
    assert len(source.poll_batch(10)) == 0  # opened, and the poll failed
    assert source.status().reason == "poll failed: poll refused"
    assert (source.status().failures, source.status().retry_in_s) == (1, 1.0)  # opened: 0
    flaky.failing = set()
    assert len(source.poll_batch(10)) == 0  # before the retry time: not even tried
    clock.t += 1.0
    polled = source.poll_batch(10)
    assert (len(polled), polled.last_position) == (1, "t/0@7")
    assert source.status().up and flaky.calls == ["open", "open", "poll", "poll"]


def test_a_source_saying_its_system_is_away_is_reported_and_still_polled() -> None:
    flaky, clock = Flaky(), ManualClock()
    source = guarded(flaky, clock)
    source.open()
    flaky.said_away = "no broker reachable"
    for _ in range(3):
        assert len(source.poll(10)) == 1
    status = source.status()
    assert (status.up, status.reason, status.retry_in_s) == (False, "no broker reachable", None)
    assert status.as_dict()["state"] == "away"
    flaky.said_away = None
    source.poll(10)
    assert source.status().as_dict() == {"name": "flaky", "state": "up", "reason": None,
                                         "since": None, "failures": 0, "retry_in_s": None}


# -- a real broker going away -----------------------------------------------------------


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A broker of this module's own, so stopping it disturbs no other test."""
    env = broker_env(tmp_path_factory.mktemp("own-kafka") / "run")
    started = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True,
                             check=True, timeout=600)
    try:
        yield started.stdout.strip().splitlines()[-1], env
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120,
                       check=False)


def broker_down(env: dict[str, str]) -> None:
    subprocess.run([str(SCRIPT), "stop", "--keep-data"], env=env, check=True,
                   capture_output=True, timeout=120)


def broker_up(env: dict[str, str]) -> None:
    subprocess.run([str(SCRIPT), "start"], env=env, check=True, capture_output=True,
                   timeout=300)


def committed(bootstrap: str, group: str, topic: str) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, 0))  # type: ignore[no-any-return]
    finally:
        consumer.close()


def log_end(bootstrap: str, topic: str) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partition = TopicPartition(topic, 0)
        return consumer.end_offsets([partition]).get(partition)  # type: ignore[no-any-return]
    finally:
        consumer.close()


def test_offsets_a_broker_away_did_not_take_are_committed_once_it_is_back(
        own_broker: tuple[str, dict[str, str]]) -> None:
    bootstrap, env = own_broker
    topic = topic_name("events")
    produce(bootstrap, topic, events(12), key=lambda e: e["key"])
    run = subprocess.run([sys.executable, "-m", "tests.kafka_outage", bootstrap, topic, "12"],
                         env=env, cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    said = json.loads(run.stdout.strip().splitlines()[-1])
    assert said["commit_s"] < 5  # one bounded attempt, no exception
    assert "offsets not committed" in said["after_commit"]
    assert "no broker reachable" in said["while_away"]
    assert said.get("records_while_away", 0) == 0
    assert said["after"] is None
    # On failure, say what the broker holds after its restart and what the source saw.
    assert committed(bootstrap, f"g-{topic}", topic) == 12, (said, log_end(bootstrap, topic))


def delivery(hooks: Webhook, n: int) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"event_id": f"w{n}", "key": f"w{n}", "occurred_at": "2026-01-01T00:00:00Z",
                       "payload": {"n": n}}).encode()
    message_id, at = f"msg_{n}", datetime.now(UTC)
    return body, {"webhook-id": message_id, "webhook-timestamp": str(int(at.timestamp())),
                  "webhook-signature": hooks.sign(message_id, at, body),
                  "content-type": "application/json"}


def source_up(metrics: str) -> dict[str, float]:
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    return {s.labels["source"]: s.value for s in families["shadow_source_up"].samples}


def wait_for_events(db: Path, api: str, expected: int, timeout_s: float = 90) -> dict[str, Any]:
    def report() -> dict[str, Any]:
        status, body = get(api + "/report?format=json", token=TOKEN)
        return json.loads(body) if status == 200 else {}

    return wait_until(report, accept=lambda found: found.get("events_stored", 0) >= expected,
                      timeout_s=timeout_s, interval_s=0.3,
                      what=f"{expected} events stored in {db.name}")


def test_a_broker_away_stops_neither_the_daemon_nor_its_webhooks(
        own_broker: tuple[str, dict[str, str]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    bootstrap, env = own_broker
    topic = topic_name("events")
    group = f"shadow-{topic}"
    produce(bootstrap, topic, events(40), key=lambda e: e["key"])
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    hooks = Webhook(secret)
    config = tmp_path / "shadow.yaml"
    config.write_text(f"""
candidate: {{callable: tests.pipeline.test_source_outage:always_billing, name: triage}}
store: {{path: s.duckdb}}
sources:
  events:
    - {{kind: kafka, bootstrap: "{bootstrap}", topics: [{topic}], group: {group}, start: earliest}}
    - {{kind: webhook, name: tickets, path: /hooks/tickets, scheme: standard,
       secret_env: HOOK_SECRET}}
daemon:
  api: {{port: 0}}
  webhooks: {{port: 0}}
""", encoding="utf-8")
    monkeypatch.setenv("HOOK_SECRET", secret)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    db = tmp_path / "s.duckdb"
    daemon = start_daemon(config, "daemon.log")
    kafka_name = f"kafka:{topic}"
    try:
        api = ready_api(db, process=daemon)
        hooks_url = json.loads(get(api + "/ready")[1])["checks"]["webhooks"] + "/hooks/tickets"
        wait_for_events(db, api, 40)

        broker_down(env)
        try:
            answers, slowest = [], 0.0
            with httpx.Client(timeout=30) as client:
                for n in range(20):
                    body, headers = delivery(hooks, n)
                    started = time.monotonic()
                    answers.append(client.post(hooks_url, content=body,
                                               headers=headers).status_code)
                    slowest = max(slowest, time.monotonic() - started)
                time.sleep(6)  # past the few seconds a consumer may spend finding its group
                started = time.monotonic()
                status, ready = get(api + "/ready")
                metrics_status, metrics = get(api + "/metrics", token=TOKEN)
                answered_in = time.monotonic() - started
        finally:
            broker_up(env)
        assert answers == [200] * 20
        assert slowest < 2.0, f"a delivery waited {slowest:.2f} s while the broker was away"
        checks = json.loads(ready)["checks"]
        assert (status, checks["away"]) == (200, [kafka_name])
        (kafka_status,) = [s for s in checks["sources"] if s["name"] == kafka_name]
        assert "no broker reachable" in kafka_status["reason"]
        assert metrics_status == 200 and answered_in < 5
        assert source_up(metrics) == {kafka_name: 0.0, "tickets": 1.0}

        produce(bootstrap, topic, [{**e, "event_id": f"e{100 + i}", "key": f"k{100 + i}"}
                                   for i, e in enumerate(events(10))], key=lambda e: e["key"])
        report = wait_for_events(db, api, 70)
        wait_until(lambda: json.loads(get(api + "/ready")[1]), timeout_s=30, interval_s=0.3,
                   accept=lambda ready: not ready["checks"]["away"],
                   what="no source away in /ready")
        assert source_up(get(api + "/metrics", token=TOKEN)[1]) == {kafka_name: 1.0,
                                                                     "tickets": 1.0}
        assert (report["events_stored"], report["dead_letters"]) == (70, 0)
        # The group forgot the daemon's member during the outage, so the first commit after
        # it is refused; the records come again, are recognised, and then committed.
        wait_until(lambda: committed(bootstrap, group, topic), accept=lambda n: n == 50,
                   timeout_s=60, interval_s=0.5, what=f"offset 50 committed for {group}")
    finally:
        code, log = stop(daemon)
    assert code == 0, log[-3000:]
    with Store(db, read_only=True) as store:
        kinds = store.db.execute("SELECT count(*) FILTER (WHERE event_id LIKE 'w%'), "
                                 "count(*) FILTER (WHERE event_id LIKE 'e%') FROM events"
                                 ).fetchone()
    assert kinds == (20, 50)


def always_billing(event: Any) -> str:
    return "billing"


def test_a_kafka_source_with_no_broker_at_all_fails_to_open_at_once_and_leaks_nothing() -> None:
    with socket.socket() as placeholder:  # a port nothing listens on
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    before = len(os.listdir("/proc/self/fd")), threading.active_count()
    for _ in range(3):
        source = KafkaSource(bootstrap=f"127.0.0.1:{port}", topics=["t"], group_id="g")
        started = time.monotonic()
        with pytest.raises(SourceError, match=f"no broker reachable at 127.0.0.1:{port}"):
            source.open()
        assert time.monotonic() - started < 3
    assert (len(os.listdir("/proc/self/fd")), threading.active_count()) == before
    # and the daemon's guard takes it as a source that is away
    guard = GuardedSource(KafkaSource(bootstrap=f"127.0.0.1:{port}", topics=["t"],
                                      group_id="g"))
    guard.open()
    assert not guard.status().up and "no broker reachable" in (guard.status().reason or "")
    guard.close()
