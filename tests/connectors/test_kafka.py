"""The Kafka source and sink against a real broker on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer

from connectors.kafka import KafkaSink, KafkaSource, Start
from connectors.mapping import EventMapper
from connectors.sinks import Decision
from connectors.specs import EventMapping
from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.core.models import Event, Mode, Prediction
from shadow.pipeline.runner import Pipeline
from shadow.reports.summary import build_report
from shadow.store.database import Store
from tests.kafka import broker_env
from tests.waiting import wait_until

NOW = datetime(2024, 5, 1, tzinfo=UTC)


def label(event: Event) -> str:
    return "billing" if int(event.event_id.removeprefix("e")) % 3 else "login"


def topic_name(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:10]}"


def produce(bootstrap: str, topic: str, values: list[Any], key: Callable[[Any], str]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for value in values:
        body = value if isinstance(value, bytes) else json.dumps(value).encode()
        producer.send(topic, body, key=key(value).encode())
    producer.flush(timeout=30)
    producer.close()


def events(n: int) -> list[dict[str, Any]]:
    return [{"event_id": f"e{i}", "key": f"k{i}", "occurred_at": "2024-05-01T10:00:00Z",
             "segment": {"queue": "eu" if i % 2 else "us"}, "payload": {"n": i}}
            for i in range(n)]


def source(bootstrap: str, topic: str, **options: Any) -> KafkaSource:
    settings = {"start": Start.EARLIEST, "poll_timeout_s": 0.5, "idle_s": 3.0, **options}
    return KafkaSource(bootstrap=bootstrap, topics=[topic], group_id=f"g-{topic}", **settings)


def replay(db: Path, sources: list[KafkaSource], outcomes: list[KafkaSource]) -> Any:
    candidate = CallableCandidate(label, name="labeller")
    with Store(db) as store:
        return Pipeline(store, candidate, build_comparator(ExactSpec()),
                      batch_size=500).run(sources, outcomes)


def test_events_and_outcomes_from_topics_are_predicted_and_compared_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    n = 900
    event_topic, outcome_topic = topic_name("events"), topic_name("outcomes")
    produce(kafka_bootstrap, event_topic, events(n), key=lambda e: e["key"])
    outcomes = [{"key": f"k{i}", "outcome": "billing", "decided_at": "2024-05-02T10:00:00Z"}
                for i in range(0, n, 2)]
    produce(kafka_bootstrap, outcome_topic, outcomes, key=lambda o: o["key"])
    db = tmp_path / "store.duckdb"

    summary = replay(db, [source(kafka_bootstrap, event_topic)],
                     [source(kafka_bootstrap, outcome_topic)])

    assert (summary.events_read, summary.events_stored, summary.predictions) == (n, n, n)
    with Store(db, read_only=True) as store:
        (candidate,) = build_report(store)["candidates"]
    compared = list(range(0, n, 2))
    agreed = sum(1 for i in compared if i % 3)
    assert (candidate["compared"], candidate["pending"]) == (len(compared), n - len(compared))
    assert candidate["agreement"]["rate"] == agreed / len(compared)


def test_committed_offsets_mean_a_second_run_reads_nothing_again(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = topic_name("events")
    produce(kafka_bootstrap, topic, events(50), key=lambda e: e["key"])
    db = tmp_path / "store.duckdb"
    committed = KafkaSource(bootstrap=kafka_bootstrap, topics=[topic], group_id=f"g-{topic}",
                            poll_timeout_s=0.5, idle_s=3.0)
    replay(db, [committed], [])

    again = KafkaSource(bootstrap=kafka_bootstrap, topics=[topic], group_id=f"g-{topic}",
                        poll_timeout_s=0.5, idle_s=3.0)
    second = replay(db, [again], [])

    assert second.events_read == 0


def test_poison_records_become_dead_letters_with_their_position(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = topic_name("events")
    good = events(20)
    produce(kafka_bootstrap, topic, [*good[:10], b"{not json", {"event_id": "x"}, *good[10:]],
            key=lambda v: "k" if isinstance(v, bytes) else str(v.get("key", "k")))
    db = tmp_path / "store.duckdb"

    summary = replay(db, [source(kafka_bootstrap, topic)], [])

    assert (summary.events_stored, summary.dead_letters) == (20, 2)
    with Store(db, read_only=True) as store:
        rows = store.db.execute(
            "SELECT position, reason FROM dead_letters ORDER BY position"
        ).fetchall()
    assert [position for position, _ in rows] == [f"{topic}/0@10", f"{topic}/0@11"]
    assert "not valid JSON" in rows[0][1] and "key" in rows[1][1]


def test_the_mapping_sees_the_record_key_and_headers(kafka_bootstrap: str) -> None:
    topic = topic_name("crm")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    producer.send(topic, json.dumps({"id": 7, "at": "2024-05-01T10:00:00Z"}).encode(),
                  key=b"account-42", headers=[("region", b"emea")])
    producer.flush(timeout=30)
    producer.close()
    mapper = EventMapper(EventMapping(event_id="id", key="_kafka.key", occurred_at="at",
                                      segment={"region": "_kafka.headers.region"}, payload="$"))

    with source(kafka_bootstrap, topic) as records:
        batch: list[Any] = wait_until(lambda: records.poll(10), timeout_s=30, interval_s=0,
                                      what=f"a record from {topic}")
    event = mapper(batch[0].value)

    assert (event.event_id, event.key, event.segment) == ("7", "account-42", {"region": "emea"})


def live(prediction_id: str, mode: Mode = Mode.LIVE) -> Prediction:
    return Prediction(event_id=prediction_id, candidate="triage", version="2", mode=mode,
                      output={"category": "billing"}, latency_ms=1.0, predicted_at=NOW)


def test_a_live_decision_is_published_keyed_and_labelled(kafka_bootstrap: str) -> None:
    topic = topic_name("decisions")
    event = Event(event_id="e1", key="ticket-1", occurred_at=NOW)
    decision = Decision.of(live("e1"), event, rollout="triage", step=2, percent=5.0)

    with KafkaSink(bootstrap=kafka_bootstrap, topic=topic) as sink:
        sink.publish([decision])

    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=topic,
                             auto_offset_reset="earliest")
    messages: list[Any] = []

    def polled() -> int:
        for batch in consumer.poll(timeout_ms=500).values():
            messages.extend(batch)
        return len(messages)

    try:
        wait_until(polled, timeout_s=30, interval_s=0, what=f"a message on {topic}")
    finally:
        consumer.close()
    (message,) = messages
    assert message.key == b"ticket-1"
    assert json.loads(message.value) == {
        "event_id": "e1", "key": "ticket-1", "candidate": "triage", "version": "2",
        "output": {"category": "billing"}, "rollout": "triage", "step": 2, "percent": 5.0,
        "review": False, "predicted_at": "2024-05-01T00:00:00+00:00"}
    assert dict(message.headers) == {"candidate": b"triage", "version": b"2",
                                     "rollout": b"triage", "rollout_step": b"2",
                                     "percent": b"5", "event_id": b"e1", "review": b"false"}


def test_a_shadow_prediction_is_never_published() -> None:
    event = Event(event_id="e1", key="ticket-1", occurred_at=NOW)

    with pytest.raises(ValueError, match="never be published"):
        Decision.of(live("e1", Mode.SHADOW), event, rollout="triage", step=0, percent=5.0)


def consume_command(bootstrap: str, topic: str, db: Path, idle_s: float = 4.0,
                    expect: int = 0) -> list[str]:
    """``tests.kafka_consumer``; with ``expect``, it waits out idleness until that many events."""
    return [sys.executable, "-m", "tests.kafka_consumer", bootstrap, topic, f"g-{topic}",
            str(db), str(idle_s), str(expect)]


def wait_until_handed_out(log: Path, at_least: int, process: subprocess.Popen[bytes]) -> None:
    """Until the consumer has handed out ``at_least`` records (it prints each batch)."""
    def handed_out() -> int:
        lines = log.read_text(encoding="utf-8").splitlines()
        counts = [int(line.split()[-1]) for line in lines if line.startswith("handed out ")]
        if (not counts or counts[-1] < at_least) and process.poll() is not None:
            raise AssertionError(f"the consumer exited with {process.returncode} before it "
                                 f"handed out {at_least} records: {tail(log)}")
        return counts[-1] if counts else 0

    wait_until(handed_out, accept=lambda n: n >= at_least, timeout_s=120,
               what=f"the consumer to hand out {at_least} records",
               details=lambda: tail(log))


def tail(log: Path) -> str:
    return log.read_text(encoding="utf-8")[-3000:]


def stored(db: Path) -> tuple[int, int, int, int]:
    with Store(db, read_only=True) as store:
        return (store.count("events"), store.count("predictions"),
                store.db.execute("SELECT count(DISTINCT event_id) FROM predictions")
                .fetchall()[0][0], store.count("duplicates"))


def test_a_consumer_killed_midway_and_restarted_loses_nothing_and_counts_nothing_twice(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    n = 3000
    topic = topic_name("events")
    produce(kafka_bootstrap, topic, events(n), key=lambda e: e["key"])
    db = tmp_path / "store.duckdb"
    root = Path(__file__).resolve().parents[2]

    log = tmp_path / "consumer.log"
    with log.open("w") as out:
        process = subprocess.Popen(consume_command(kafka_bootstrap, topic, db, expect=n), cwd=root,
                                   stdout=out, stderr=subprocess.STDOUT)
    wait_until_handed_out(log, 600, process)  # some batches committed, one in the middle
    killed_midway = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    # The killed member keeps its partition until its session times out: the restart
    # must resume within 15 s, not kafka-python's default 45.
    again = tmp_path / "again.log"
    started = time.monotonic()
    with again.open("w") as out:
        restarted = subprocess.Popen(consume_command(kafka_bootstrap, topic, db, expect=n),
                                     cwd=root, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_handed_out(again, 1, restarted)
        resumed_after = time.monotonic() - started
        assert restarted.wait(timeout=300) == 0, again.read_text(encoding="utf-8")[-3000:]
    finally:
        if restarted.poll() is None:
            restarted.kill()
            restarted.wait()

    assert killed_midway, "the consumer finished before it could be killed"
    assert resumed_after < 15, f"resumed after {resumed_after:.1f} s"
    assert stored(db) == (n, n, n, 0)


def test_the_broker_going_away_and_coming_back_mid_stream_loses_nothing(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    # A broker of its own, so stopping it does not disturb the other tests.
    script = Path(__file__).resolve().parents[2] / "scripts" / "kafka-local"
    env = broker_env(tmp_path / "k")
    broker = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True,
                            check=True, timeout=300).stdout.strip().splitlines()[-1]
    try:
        n = 3000
        topic = topic_name("events")
        produce(broker, topic, events(n), key=lambda e: e["key"])
        db = tmp_path / "store.duckdb"
        root = Path(__file__).resolve().parents[2]
        log = tmp_path / "consumer.log"
        with log.open("w") as out:
            process = subprocess.Popen(consume_command(broker, topic, db, expect=n), cwd=root,
                                       stdout=out, stderr=subprocess.STDOUT)
        wait_until_handed_out(log, 600, process)
        stopped_midway = process.poll() is None
        subprocess.run([str(script), "stop", "--keep-data"], env=env, check=True, timeout=120)
        time.sleep(3)
        subprocess.run([str(script), "start"], env=env, check=True, capture_output=True,
                       timeout=300)
        process.wait(timeout=240)
    finally:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=120)

    assert process.returncode == 0, (tmp_path / "consumer.log").read_text()[-3000:]
    assert stopped_midway, "the consumer finished before the broker stopped"
    assert stored(db) == (n, n, n, 0)


def test_a_source_can_start_at_a_point_in_time(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = topic_name("events")
    produce(kafka_bootstrap, topic, events(10), key=lambda e: e["key"])
    time.sleep(1.0)
    since = datetime.now(UTC)
    time.sleep(0.2)
    later = [{**e, "event_id": f"e{100 + i}", "key": f"k{100 + i}"}
             for i, e in enumerate(events(5))]
    produce(kafka_bootstrap, topic, later, key=lambda e: e["key"])
    db = tmp_path / "store.duckdb"

    from_then = KafkaSource(bootstrap=kafka_bootstrap, topics=[topic], group_id=f"g-{topic}",
                            start=since, poll_timeout_s=0.5, idle_s=3.0)
    summary = replay(db, [from_then], [])

    with Store(db, read_only=True) as store:
        ids = sorted(row[0] for row in store.db.execute("SELECT event_id FROM events").fetchall())
    assert summary.events_read == 5
    assert ids == sorted(e["event_id"] for e in later)


@pytest.mark.parametrize("consumed", [40, 15])
def test_starting_from_the_beginning_fetches_each_record_once(
    kafka_bootstrap: str, consumed: int
) -> None:
    topic = topic_name("events")
    n = 40
    produce(kafka_bootstrap, topic, events(n), key=lambda e: e["key"])
    # The group has committed offsets (at the end, or part way), so EARLIEST must move back.
    with source(kafka_bootstrap, topic, start=Start.COMMITTED) as first:
        taken: list[Any] = []

        def took() -> int:
            taken.extend(first.poll(consumed - len(taken)))
            return len(taken)

        wait_until(took, accept=lambda n: n >= consumed, timeout_s=120, interval_s=0,
                   what=f"{consumed} records from {topic}")
        first.commit(taken[-1].position)

    again = source(kafka_bootstrap, topic)
    polled: list[int] = []
    with again:
        consumer = again._consumer
        assert consumer is not None
        poll = consumer.poll

        def counting(*args: Any, **kwargs: Any) -> Any:
            batches = poll(*args, **kwargs)
            polled.append(sum(len(records) for records in batches.values()))
            return batches

        consumer.poll = counting
        handed_out = 0
        while not again.exhausted:
            records = again.poll(500)
            handed_out += len(records)
            if records:
                again.commit(records[-1].position)
    assert handed_out == n
    assert sum(polled) == n  # nothing fetched, decoded and thrown away before the seek
