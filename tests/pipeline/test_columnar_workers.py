"""With a candidate in worker processes, the columnar replay reads the next batch while
the workers predict, and stores what the serial replay stores.

The comparison reuses the mixed input of ``test_columnar.py``: malformed records,
repeats within a batch and across batch boundaries, the same files replayed again and
outcomes that arrive late; batches of five records make every boundary count.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from connectors.base import RawRecord
from connectors.files import FileSource
from connectors.mapping import EventMapper, OutcomeMapper
from shadow.candidates import Candidate
from shadow.candidates.callable import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.core.models import Event, Mode, Prediction
from shadow.pipeline import columnar
from shadow.pipeline.columnar import ColumnarPipeline
from shadow.store.database import Store
from shadow.store.writes import WriteCounts
from shadow.testing import ListSource
from tests.pipeline.test_columnar import (
    NOW,
    _event,
    _line,
    _mixed_events,
    _outcomes,
    _tables,
    _write,
    describe,
)
from tests.waiting import wait_until

FAILING = {3, 22}
"""Events (by ``payload.n``) the candidate raises on."""


def describe_or_fail(event: Event) -> dict[str, Any]:
    """As ``describe``, raising on the events of ``FAILING``: their predictions are errors."""
    if isinstance(event.payload, dict) and event.payload.get("n") in FAILING:
        raise ValueError(f"no answer for {event.event_id}")
    return describe(event)


def _replay(db: Path, events: list[Path], outcomes: list[Path], workers: int
            ) -> dict[str, Any]:
    candidate = CallableCandidate(describe_or_fail, name="describe", version="1",
                                  workers=workers)
    with Store(db) as store, candidate:
        comparator = build_comparator(ExactSpec(prediction_path="label", outcome_path="label"))
        pipeline = ColumnarPipeline(store, candidate, comparator, event_mapper=EventMapper(),
                                    outcome_mapper=OutcomeMapper(), batch_size=5,
                                    now=lambda: NOW)
        return pipeline.run([FileSource(p) for p in events],
                            [FileSource(p) for p in outcomes]).as_dict()


def test_a_replay_with_workers_stores_what_the_serial_replay_stores(tmp_path: Path) -> None:
    files = {
        "events": _write(tmp_path / "events.jsonl", _mixed_events()),
        "more": _write(tmp_path / "more.jsonl", [_line(**_event(2)), _line(**_event(22))]),
        "outcomes": _write(tmp_path / "outcomes.jsonl", _outcomes(late=False)),
        "late": _write(tmp_path / "late.jsonl", _outcomes(late=True)),
    }
    summaries: dict[int, list[dict[str, Any]]] = {}
    for workers in (1, 2):
        db = tmp_path / f"workers-{workers}.duckdb"
        summaries[workers] = [
            _replay(db, [files["events"]], [files["outcomes"]], workers),
            _replay(db, [files["events"], files["more"]], [files["late"]], workers),
        ]

    assert summaries[2] == summaries[1]
    serial, overlapped = _tables(tmp_path / "workers-1.duckdb"), _tables(
        tmp_path / "workers-2.duckdb")
    assert list(overlapped) == list(serial)
    for name, rows in serial.items():
        assert overlapped[name] == rows, name
    first, second = summaries[1]
    assert first["dead_letters"] >= 6 and first["duplicates"] >= 2
    assert second["already_stored"] > 0 and second["outcomes_stored"] == 2
    assert first["prediction_errors"] == len(FAILING) - 1  # event 22 comes in the second
    assert second["prediction_errors"] == 1


def test_a_new_candidate_predicts_once_what_consecutive_batches_repeat(tmp_path: Path) -> None:
    stored = _write(tmp_path / "stored.jsonl", [_line(**_event(n)) for n in range(8)])
    # Events stored before and new ones, each three times in a row: in small batches a
    # batch repeats what the batch before predicted and has not written yet.
    again = _write(tmp_path / "again.jsonl", [_line(**_event(n)) for n in
                                              (0, 8, 1, 9, 2, 10, 11, 12) for _ in range(3)])
    comparator = build_comparator(ExactSpec(prediction_path="label", outcome_path="label"))
    predicted: dict[int, list[tuple[str, int]]] = {}
    for workers in (1, 2):
        db = tmp_path / f"workers-{workers}.duckdb"
        for names, path in ((["old"], stored), (["old", "new"], again)):
            candidates = [CallableCandidate(describe, name=name, version="1", workers=workers)
                          for name in names]
            with Store(db) as store, ExitStack() as running:
                for candidate in candidates:
                    running.enter_context(candidate)
                ColumnarPipeline(store, candidates, comparator, batch_size=5,
                                 now=lambda: NOW).run([FileSource(path)])
        with Store(db) as store:
            predicted[workers] = store.db.execute(
                "SELECT candidate, count(*) FROM predictions GROUP BY candidate"
                " ORDER BY candidate").fetchall()

    assert predicted[2] == predicted[1] == [("new", 8), ("old", 13)]
    serial, overlapped = (_tables(tmp_path / f"workers-{w}.duckdb") for w in (1, 2))
    for name, rows in serial.items():
        assert overlapped[name] == rows, name


class _CountingSource(ListSource):
    """A list source that counts its polls, from any thread."""

    def __init__(self, values: list[dict[str, Any]], *, fail_at: int = 0) -> None:
        super().__init__(values)
        self.polls = 0
        self._fail_at = fail_at

    def _poll(self, max_records: int) -> list[RawRecord]:
        self.polls += 1
        if self.polls == self._fail_at:
            raise OSError("file gone")
        return super()._poll(max_records)


class _Awaiting(Candidate):
    """Predicts in this process but says it does not, so batches overlap; with a source,
    each ``predict`` waits until the pipeline has polled the source again."""

    def __init__(self, source: _CountingSource | None = None, *,
                 out_of_process: bool = True) -> None:
        self.name, self.version = "awaiting", "1"
        self._source = source
        self._out = out_of_process
        self.threads: list[str] = []

    @property
    def predicts_out_of_process(self) -> bool:
        return self._out

    def predict(self, events: Sequence[Event], now: datetime) -> list[Prediction]:
        self.threads.append(threading.current_thread().name)
        source = self._source
        if source is not None:  # the n-th batch is the n-th poll; the next poll reads ahead
            ahead = len(self.threads) + 1
            wait_until(lambda: source.polls >= ahead, timeout_s=30,
                       what="the next batch polled while this one is predicted")
        return [Prediction(event_id=e.event_id, candidate=self.name, version=self.version,
                           mode=Mode.SHADOW, output={"label": "l1"}, latency_ms=0.0,
                           predicted_at=now) for e in events]


def _values(count: int) -> list[dict[str, Any]]:
    return [_event(n) for n in range(count)]


def _pipeline(store: Store, candidate: Candidate) -> ColumnarPipeline:
    comparator = build_comparator(ExactSpec(prediction_path="label", outcome_path="label"))
    return ColumnarPipeline(store, candidate, comparator, batch_size=5, now=lambda: NOW)


@pytest.fixture
def each_batch_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch with a new event is a transaction of its own: the commits show them."""
    monkeypatch.setattr(columnar, "GROUP_EVENTS", 1)


@pytest.mark.usefixtures("each_batch_written")
def test_the_next_batch_is_read_while_the_workers_predict(tmp_path: Path) -> None:
    source = _CountingSource(_values(12) + [_event(3)])
    candidate = _Awaiting(source)
    with Store(tmp_path / "store.duckdb") as store:
        summary = _pipeline(store, candidate).run([source])
        stored = store.count("events")

    assert candidate.threads and "MainThread" not in candidate.threads
    # An eighth of a batch first, then a quarter and a half (at least one record), then whole.
    assert source.committed == ["item 0", "item 1", "item 3", "item 8", "item 12"]
    assert (stored, summary.events_stored, summary.duplicates) == (12, 12, 1)
    assert summary.predictions == 12
    assert not [t for t in threading.enumerate() if t.name.startswith("shadow-predict")]


@pytest.mark.usefixtures("each_batch_written")
def test_candidates_in_this_process_keep_the_serial_path(tmp_path: Path) -> None:
    source = _CountingSource(_values(12))
    candidate = _Awaiting(out_of_process=False)
    with Store(tmp_path / "store.duckdb") as store:
        _pipeline(store, candidate).run([source])

    assert set(candidate.threads) == {"MainThread"}
    assert source.committed == ["item 4", "item 9", "item 11"]


class _FailingStore(Store):
    """A store whose writes fail from the ``fail_at``-th on."""

    def __init__(self, path: Path, *, fail_at: int) -> None:
        super().__init__(path)
        self.writes = 0
        self._fail_at = fail_at

    def write_tables(self, batches: Sequence[dict[str, pa.Table]]) -> WriteCounts:
        self.writes += 1
        if self.writes >= self._fail_at:
            raise OSError("disk full")
        return super().write_tables(batches)


@pytest.mark.parametrize("in_process", [False, True], ids=["workers", "in-process"])
def test_batches_are_written_in_transactions_of_enough_new_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_process: bool,
) -> None:
    monkeypatch.setattr(columnar, "GROUP_EVENTS", 10)
    # Batches of 5 (with workers: 1, 1, 2, then 5); repeats count for no new event.
    source = _CountingSource(_values(12) + [_event(3)] * 6 + _values(14)[12:])
    counting = _FailingStore(tmp_path / "store.duckdb", fail_at=99)
    with counting as store:
        summary = _pipeline(store, _Awaiting(out_of_process=not in_process)).run([source])
        stored = store.count("events")

    committed = ["item 9", "item 19"] if in_process else ["item 13", "item 19"]
    assert (source.committed, counting.writes) == (committed, 2)
    assert (stored, summary.events_stored, summary.duplicates) == (14, 14, 6)


@pytest.mark.usefixtures("each_batch_written")
def test_a_failed_write_commits_nothing_after_the_last_batch_written(tmp_path: Path) -> None:
    source = _CountingSource(_values(20))
    candidate = _Awaiting()
    with _FailingStore(tmp_path / "store.duckdb", fail_at=2) as store:
        with pytest.raises(OSError, match="disk full"):
            _pipeline(store, candidate).run([source])
        stored = store.count("events")

    # Batches of 1, 1, 2, then 5 records; the third was handed to the workers before the
    # second was written.
    assert len(candidate.threads) == 3
    assert source.committed == ["item 0"]
    assert stored == 1
    assert not [t for t in threading.enumerate() if t.name.startswith("shadow-predict")]


def test_a_failed_read_ahead_waits_for_the_batch_predicted_and_commits_nothing(
    tmp_path: Path,
) -> None:
    source = _CountingSource(_values(20), fail_at=2)
    candidate = _Awaiting()
    with Store(tmp_path / "store.duckdb") as store:
        with pytest.raises(OSError, match="file gone"):
            _pipeline(store, candidate).run([source])
        stored = store.count("events")

    assert candidate.threads == ["shadow-predict_0"]
    assert (source.committed, stored) == ([], 0)
    assert not [t for t in threading.enumerate() if t.name.startswith("shadow-predict")]
