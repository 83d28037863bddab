"""The columnar pipeline's Kafka batches store what the per-record pipeline stores.

Both pipelines read the same topics of a real broker, each in a consumer group of its
own, into stores of their own, with the same clock: events that take the fast path,
events only pydantic reads, malformed values, values that are JSON but no object,
tombstones, repeats within a batch and across batches, and, in a second run, the same
topic read again from the start (re-reads) with a second topic repeating ids. Every
table is then read back in full and compared, as ``test_columnar.py`` does for files.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from connectors.files import FileSource
from connectors.kafka import KafkaSource, Start
from connectors.mapping import EventMapper, OutcomeMapper
from connectors.specs import EventMapping
from shadow.candidates.callable import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.pipeline.columnar import ColumnarPipeline
from shadow.pipeline.runner import Pipeline
from shadow.store.database import Store
from tests.pipeline.test_columnar import (
    NOW,
    _event,
    _line,
    _mixed_events,
    _outcomes,
    _reshaped,
    _tables,
    _write,
    describe,
)

TOMBSTONE = None


def _produce(bootstrap: str, topic: str, values: list[str | None]) -> None:
    """Each value as a message keyed by its position; ``None`` is a tombstone. Every
    third message has a header."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for n, value in enumerate(values):
        headers = [("origin", f"o{n % 2}".encode())] if n % 3 == 0 else []
        producer.send(topic, None if value is None else value.encode(),
                      key=f"m{n}".encode(), headers=headers)
    producer.flush(timeout=30)
    producer.close()


def _run(kind: Callable[..., Pipeline], db: Path, bootstrap: str, topics: list[str],
         outcomes: Path, mapping: EventMapping | None) -> dict[str, Any]:
    group = f"g-{kind.__name__}-{uuid.uuid4().hex[:8]}"  # from the start, every run
    sources = [KafkaSource(bootstrap=bootstrap, topics=[topic], group_id=group,
                           start=Start.EARLIEST, poll_timeout_s=0.5, idle_s=2.0)
               for topic in topics]
    with Store(db) as store, CallableCandidate(describe, name="describe", version="1") as c:
        comparator = build_comparator(ExactSpec(prediction_path="label", outcome_path="label"))
        pipeline = kind(store, c, comparator,
                        event_mapper=EventMapper(mapping), outcome_mapper=OutcomeMapper(),
                        batch_size=6, now=lambda: NOW)
        return pipeline.run(sources, [FileSource(outcomes)]).as_dict()


def _values(mapping: EventMapping | None) -> tuple[list[str | None], list[str | None]]:
    """The messages of the two topics: the files' mixed events, tombstones among them."""
    events: list[str | None] = list(_mixed_events())
    more: list[str | None] = [_line(**_event(2)), TOMBSTONE, _line(**_event(22))]
    if mapping is not None:
        events = [_reshaped(v) for v in events if v is not None]
        more = [_reshaped(v) if v is not None else None for v in more]
        events.insert(3, _line(kind="note", id="n1"))  # left out by ``when``
    events[4:4] = [TOMBSTONE, '"a string"', "null"]
    events.append(TOMBSTONE)
    return events, more


# The dotted mapping reads the message's key and a header: the metadata the per-record
# path adds to every value, and with ``payload: $`` the whole of it is stored.
DOTTED = EventMapping(event_id="id", key="_kafka.key", occurred_at="ticket.at",
                      segment={"channel": "via.channel", "origin": "_kafka.headers.origin"},
                      payload="$", routing_key=None, when={"path": "kind", "equals": "ticket"})


@pytest.mark.parametrize("mapping", [None, DOTTED], ids=["canonical", "dotted paths"])
def test_columnar_kafka_batches_store_what_the_per_record_pipeline_stores(
    kafka_bootstrap: str, tmp_path: Path, mapping: EventMapping | None
) -> None:
    events, more = _values(mapping)
    topics = [f"columnar-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    _produce(kafka_bootstrap, topics[0], events)
    _produce(kafka_bootstrap, topics[1], more)
    outcomes = _write(tmp_path / "outcomes.jsonl", _outcomes(late=False))

    runs: dict[str, list[dict[str, Any]]] = {}
    for kind in (Pipeline, ColumnarPipeline):
        db = tmp_path / f"{kind.__name__}.duckdb"
        first = _run(kind, db, kafka_bootstrap, topics[:1], outcomes, mapping)
        second = _run(kind, db, kafka_bootstrap, topics, outcomes, mapping)
        runs[kind.__name__] = [first, second]

    old, new = runs["Pipeline"], runs["ColumnarPipeline"]
    assert new == old
    old_tables = _tables(tmp_path / "Pipeline.duckdb")
    new_tables = _tables(tmp_path / "ColumnarPipeline.duckdb")
    assert list(new_tables) == list(old_tables)
    for name, rows in old_tables.items():
        assert new_tables[name] == rows, name
    # The input is as mixed as it claims, counted from the messages themselves.
    tombstones = sum(1 for v in events if v is None)
    assert tombstones == 2
    assert old[0]["events_read"] == len(events)
    assert old[0]["events_skipped"] == tombstones + (1 if mapping is not None else 0)
    assert old[0]["dead_letters"] >= 8 and old[0]["duplicates"] >= 1
    assert old[1]["already_stored"] > 0 and old[1]["duplicates"] > old[0]["duplicates"]
    reasons = {row[-1] for row in _dead_letters(tmp_path / "Pipeline.duckdb")}
    assert "expected a JSON object as the record value" in reasons
    assert any(reason.startswith("not valid JSON: ") for reason in reasons)
    positions = {row[0] for row in _dead_letters(tmp_path / "ColumnarPipeline.duckdb")}
    assert f"{topics[0]}/0@{events.index('{not json')}" in positions
    if mapping is not None:
        payloads = [json.loads(row[0]) for row in _stored_payloads(
            tmp_path / "ColumnarPipeline.duckdb")]
        assert all(p["_kafka"]["topic"] in topics for p in payloads)


def _dead_letters(db: Path) -> list[tuple[Any, ...]]:
    with Store(db) as store:
        return store.db.execute("SELECT position, reason FROM dead_letters").fetchall()


def _stored_payloads(db: Path) -> list[tuple[Any, ...]]:
    with Store(db) as store:
        return store.db.execute("SELECT payload FROM events").fetchall()


class StopsAtCommit(KafkaSource):
    """A Kafka source that notes how many events the store holds at each commit, and
    stops the run at commit number ``stop_at`` (as a process killed there would):
    after the store's transaction, before the offsets are committed."""

    def __init__(self, stored: Callable[[], int], stop_at: int | None, **options: Any) -> None:
        super().__init__(**options)
        self._stored, self._stop_at = stored, stop_at
        self.held_at_commit: list[int] = []

    def commit(self, position: str) -> None:
        self.held_at_commit.append(self._stored())
        if len(self.held_at_commit) == self._stop_at:
            raise KeyboardInterrupt("stopped between the store's commit and the offsets'")
        super().commit(position)


def test_a_columnar_run_stopped_before_committing_offsets_stores_each_event_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = f"columnar-stop-{uuid.uuid4().hex[:10]}"
    _produce(kafka_bootstrap, topic, [_line(**_event(n)) for n in range(1, 41)])
    options: dict[str, Any] = dict(bootstrap=kafka_bootstrap, topics=[topic],
                                   group_id=f"g-{topic}", start=Start.COMMITTED,
                                   poll_timeout_s=0.5, idle_s=2.0)
    db = tmp_path / "store.duckdb"

    def run(stop_at: int | None) -> tuple[StopsAtCommit, dict[str, Any] | None]:
        with Store(db) as store, CallableCandidate(describe, name="describe") as c:
            source = StopsAtCommit(lambda: store.count("events"), stop_at, **options)
            pipeline = ColumnarPipeline(store, c, build_comparator(ExactSpec()),
                                        batch_size=10, now=lambda: NOW)
            try:
                return source, pipeline.run([source]).as_dict()
            except KeyboardInterrupt:
                return source, None

    stopped, _ = run(stop_at=2)
    resumed, summary = run(stop_at=None)

    # Each commit came after the store held every event read before it.
    first, second = stopped.held_at_commit
    assert 0 < first < second <= 40
    assert summary is not None
    # The batch stored but not committed is read again at its positions: re-reads,
    # neither stored twice nor kept as duplicates.
    assert summary["events_read"] == 40 - first
    assert summary["already_stored"] == summary["duplicates"] == second - first
    assert summary["events_stored"] == 40 - second
    assert resumed.held_at_commit[-1] == 40
    with Store(db) as store:
        assert store.count("events") == store.count("predictions") == 40
        assert store.count("duplicates") == 0
        assert store.db.execute(
            "SELECT count(DISTINCT event_id) FROM predictions").fetchone() == (40,)
