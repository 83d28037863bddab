"""Candidate workers and a recorder store what one process stores, table by table.

The same mixed input as the columnar test (malformed records, repeats within and across
batches, outcomes that repeat or arrive late) goes once through :class:`Pipeline` alone,
and once through :class:`Worker` (predicting, handing over) and a recorder
(:meth:`Pipeline.run` with ``recorded``). Workers also hand some records over twice, as
one does when it is killed after handing a batch over and before committing it, and in
another order than they were read. Every table but the runs' is then compared in full.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.base import RawRecord
from connectors.files import FileSource
from connectors.mapping import EventMapper, OutcomeMapper
from shadow.candidates.callable import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.core.errors import SinkError
from shadow.core.models import DeadLetter, Event, Mode, Prediction, RecordKind
from shadow.pipeline.handoff import (
    MAX_MESSAGE_BYTES,
    Handed,
    HandedDeadLetter,
    Published,
    dead_letter_item,
    decode,
    event_item,
    messages,
)
from shadow.pipeline.runner import Pipeline
from shadow.pipeline.worker import Worker
from shadow.store.database import Store
from shadow.testing import ListSource
from tests.pipeline.test_columnar import _mixed_events, _outcomes, _tables, _write, describe

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


class Collected:
    """A workers' topic in memory: every message written, in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []
        self.refuse = 0

    def write_all(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        if self.refuse:
            self.refuse -= 1
            raise SinkError("the broker is away")
        self.messages.extend(messages)


def comparator() -> Any:
    return build_comparator(ExactSpec(prediction_path="label", outcome_path="label"))


def single_process(db: Path, files: dict[str, Path]) -> None:
    for events, outcomes in ([files["events"]], [files["outcomes"]]), \
            ([files["events"], files["more"]], [files["late"]]):
        with Store(db) as store, CallableCandidate(describe, name="describe", version="1") as c:
            Pipeline(store, c, comparator(), event_mapper=EventMapper(),
                     outcome_mapper=OutcomeMapper(), batch_size=5, now=lambda: NOW).run(
                [FileSource(p) for p in events], [FileSource(p) for p in outcomes])


def handed_over(files: list[Path], topic: Collected) -> None:
    with CallableCandidate(describe, name="describe", version="1") as c:
        sources = [FileSource(p) for p in files]
        for source in sources:
            source.open()
        worker = Worker(sources, [c], topic, name="w1", batch_size=5, now=lambda: NOW)
        while not all(s.exhausted for s in sources):
            worker.step()
        for source in sources:
            source.close()


def recorded(db: Path, messages: list[tuple[bytes, bytes]], outcomes: list[Path]) -> None:
    values = [orjson.loads(value) for _, value in messages]
    with Store(db) as store, CallableCandidate(describe, name="describe", version="1") as c:
        Pipeline(store, c, comparator(), outcome_mapper=OutcomeMapper(), batch_size=5,
                 now=lambda: NOW).run([], [FileSource(p) for p in outcomes],
                                      recorded=[ListSource(values, name="workers")])


def test_workers_and_a_recorder_store_what_one_process_stores(tmp_path: Path) -> None:
    files = {
        "events": _write(tmp_path / "events.jsonl", _mixed_events()),
        "more": _write(tmp_path / "more.jsonl", [orjson.dumps({
            "event_id": f"e{n}", "key": f"k{n}", "occurred_at": "2024-03-01T08:00:00Z",
            "payload": {"label": "l0"}}).decode() for n in (2, 22)]),
        "outcomes": _write(tmp_path / "outcomes.jsonl", _outcomes(late=False)),
        "late": _write(tmp_path / "late.jsonl", _outcomes(late=True)),
    }
    single_process(tmp_path / "one.duckdb", files)

    first, second = Collected(), Collected()
    handed_over([files["events"]], first)
    handed_over([files["events"], files["more"]], second)
    # A worker killed after handing its first batches over, before committing them: the
    # worker that takes its partitions hands them over again, after and among others.
    again = first.messages[:12]
    recorded(tmp_path / "workers.duckdb", first.messages[:20] + again + first.messages[20:],
             [files["outcomes"]])
    recorded(tmp_path / "workers.duckdb", second.messages, [files["late"]])

    one, workers = _tables(tmp_path / "one.duckdb"), _tables(tmp_path / "workers.duckdb")
    del one["runs"], workers["runs"]
    assert list(workers) == list(one)
    for name, rows in one.items():
        assert workers[name] == rows, name
    assert one["dead_letters"] and one["duplicates"] and one["comparisons"]
    assert len(one["predictions"]) == len(one["events"]) > 10


def test_a_worker_tries_a_batch_again_until_the_broker_takes_it(tmp_path: Path) -> None:
    topic = Collected()
    topic.refuse = 2
    with CallableCandidate(describe, name="describe", version="1") as c:
        source = ListSource([{"event_id": f"e{i}", "key": f"k{i}",
                              "occurred_at": "2024-03-01T08:00:00Z"} for i in range(3)])
        source.open()
        worker = Worker([source], [c], topic, name="w1", batch_size=10, now=lambda: NOW)
        assert worker.step() == 3
    # One message for the batch's three events, written once the broker took it.
    assert (topic.refuse, len(topic.messages), source.committed) == (0, 1, ["item 2"])


def test_what_a_worker_hands_over_reads_back_as_it_was() -> None:
    event = Event(event_id="e1", key="k1", occurred_at=NOW, segment={"plan": "pro"},
                  payload={"text": "é", "n": [1, 2.5, None]}, routing_key="r1")
    prediction = Prediction(event_id="e1", candidate="c", version="2", mode=Mode.LIVE,
                            output={"label": "x"}, confidence=0.75, latency_ms=3.5,
                            predicted_at=NOW, step=1, review=True, violations=("pii:email x",),
                            request={"messages": []}, prompt_tokens=3, cost=0.01)
    published = Published("e1", "c", "2", NOW)
    (got,) = decode(orjson.loads(messages([event_item(
        event, "kafka:t", "t/0@5", [prediction], published=published)], worker="w9")[0]))
    assert isinstance(got, Handed)
    assert (got.event, got.source, got.position, got.worker) == (event, "kafka:t", "t/0@5",
                                                                 "w9")
    assert got.predictions == [prediction] and got.predictions[0].request == {"messages": []}
    assert got.published == published
    dead = DeadLetter(kind=RecordKind.EVENT, source="kafka:t", position="t/0@6", raw="{",
                      reason="not valid JSON", received_at=NOW)
    (back,) = decode(orjson.loads(messages([dead_letter_item(dead)], worker="w9")[0]))
    assert isinstance(back, HandedDeadLetter)
    assert (back.dead_letter, back.worker) == (dead, "w9")


EVENT = {"event_id": "e1", "key": "k1", "occurred_at": "2024-03-01T08:00:00Z"}


def batch(*items: Any) -> dict[str, Any]:
    return {"format": 2, "kind": "batch", "worker": "w", "items": list(items)}


@pytest.mark.parametrize(("message", "position", "reason"), [
    ({"format": 99, "kind": "batch"}, "item 0", "format 99, expected 2"),
    ({"kind": "batch"}, "item 0", "format None, expected 2"),
    ({"format": 2, "kind": "batch", "worker": "w"}, "item 0", "missing field 'items'"),
    ({"format": 2, "kind": "other", "worker": "w"}, "item 0", "unknown kind 'other'"),
    ({"format": 2, "kind": "batch", "worker": "w", "items": {}}, "item 0",
     "items: expected a list, got dict"),
    (batch({"kind": "event", "source": "s", "position": "p"}), "item 0 item 0",
     "missing field 'event'"),
    (batch({"kind": "other"}), "item 0 item 0", "unknown kind 'other'"),
    (batch("text"), "item 0 item 0", "malformed: string indices must be integers, not 'str'"),
    (batch({"kind": "event", "source": "s", "position": "p", "event": EVENT,
            "predictions": [{"event_id": "e1", "candidate": "c", "version": None,
                             "error": None, "mode": "sideways"}]}),
     "item 0 item 0", "mode 'sideways': expected one of ['live', 'shadow']"),
    (batch({"kind": "event", "source": "s", "position": "p", "event": EVENT,
            "predictions": [{"event_id": "e1", "candidate": "c", "version": None}]}),
     "item 0 item 0", "missing field 'error'"),
])
def test_a_message_that_is_not_a_handover_is_a_dead_letter_of_the_recorder(
        tmp_path: Path, message: dict[str, Any], position: str, reason: str) -> None:
    """A message that is not a batch is one dead letter; in a batch, each item that cannot
    be read is one, at the message's position and the item's index."""
    recorded(tmp_path / "r.duckdb", [(b"k", orjson.dumps(message))], [])
    with Store(tmp_path / "r.duckdb") as store:
        rows = store.db.execute("SELECT source, position, reason FROM dead_letters").fetchall()
    assert rows == [("workers", position, f"not a record a worker handed over: {reason}")]


def test_a_batch_too_large_for_one_message_goes_out_as_several() -> None:
    items = [orjson.dumps({"kind": "other", "pad": "x" * 100_000}) for _ in range(12)]
    sent = messages(items, worker="w")
    assert 2 <= len(sent) <= 4 and all(len(m) <= MAX_MESSAGE_BYTES + 110_000 for m in sent)
    read = [item for m in sent for item in orjson.loads(m)["items"]]
    assert read == [orjson.loads(i) for i in items]


class AskedSource(ListSource):
    """A list source that keeps how many records each poll asked for."""

    def __init__(self, values: list[dict[str, Any]]) -> None:
        super().__init__(values, name="workers")
        self.asked: list[int] = []

    def _poll(self, max_records: int) -> list[RawRecord]:
        self.asked.append(max_records)
        return super()._poll(max_records)


def test_a_recorder_reads_a_batch_of_events_at_a_time_whatever_a_message_holds(
        tmp_path: Path) -> None:
    """Each message holds 8 events: after the first poll, the recorder asks for as many
    messages as make ``batch_size`` events, and stores every event once."""
    per_message, batch_size = 8, 40
    event_items = [
        event_item(Event(event_id=f"e{i}", key=f"k{i}", occurred_at=NOW), "kafka:t",
                   f"t/0@{i}", [], published=None)
        for i in range(400)]
    values = [orjson.loads(m) for start in range(0, len(event_items), per_message)
              for m in messages(event_items[start:start + per_message], worker="w")]
    assert len(values) == 50
    source = AskedSource(values)
    with Store(tmp_path / "r.duckdb") as store, \
            CallableCandidate(describe, name="describe", version="1") as c:
        pipeline = Pipeline(store, c, comparator(), batch_size=batch_size, now=lambda: NOW,
                            remember_ids=False)
        feeds = pipeline.feeds([], recorded=[source])
        with source:
            while not source.exhausted:
                pipeline.pump(feeds)
        assert store.count("events") == 400
    # The first poll knows nothing of the messages yet: it takes them to be full.
    assert source.asked[0] == 1
    assert set(source.asked[1:]) == {batch_size // per_message}
