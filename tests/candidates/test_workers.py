"""A callable candidate with ``workers: N``: N processes, each event predicted exactly once."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from shadow.candidates import build_candidate
from shadow.candidates.callable import CallableCandidate
from shadow.candidates.workers import decode_events, encode_events
from shadow.config.candidates import CallableCandidateSpec
from shadow.config.file import parse_config
from shadow.core.errors import ConfigError
from shadow.core.models import Event, Prediction
from shadow.pipeline.replay import ReplayRequest, replay_files
from tests.candidates import workers_model
from tests.waiting import wait_until

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def expected_digest(text: str) -> int:
    value = 0
    for char in text * 8:
        value = (value * 31 + ord(char)) & 0xFFFFFFFF
    return value


def events(count: int, **special: dict[str, Any]) -> list[Event]:
    """``count`` events e0000…; ``special`` adds payload fields to the event of that id."""
    return [Event(event_id=f"e{i:04d}", key=f"k{i}", occurred_at=NOW - timedelta(seconds=i),
                  segment={"team": "a" if i % 2 else "b"},
                  payload={"text": "x" * (i % 13), **special.get(f"e{i:04d}", {})})
            for i in range(count)]


def comparable(predictions: list[Prediction]) -> list[tuple[Any, ...]]:
    """Everything but the latency, which no two runs share."""
    return [(p.event_id, p.candidate, p.version, p.output, p.confidence, p.abstained, p.error,
             p.predicted_at) for p in predictions]


def label_candidate(workers: int) -> CallableCandidate:
    return CallableCandidate(workers_model.label, name="label", version="1", workers=workers)


def test_every_event_is_predicted_once_in_order_by_both_workers() -> None:
    batch = events(300)
    candidate = CallableCandidate(workers_model.pid, name="pid", version="1", workers=2)
    with candidate:
        predictions = candidate.predict(batch, NOW)
        pids = candidate.worker_pids

    assert [p.event_id for p in predictions] == [e.event_id for e in batch]
    assert all(p.error is None for p in predictions)
    assert {p.output for p in predictions} == set(pids)
    assert os.getpid() not in {p.output for p in predictions}


def test_outputs_match_the_candidate_in_one_process() -> None:
    batch = events(200)
    candidate = label_candidate(2)
    with candidate:
        predictions = candidate.predict(batch, NOW)

    assert [p.output for p in predictions] == [
        {"label": "long" if len(e.payload["text"]) > 8 else "short",
         "digest": expected_digest(e.payload["text"]), "confidence": 0.75} for e in batch]
    assert all(p.confidence == 0.75 and p.predicted_at == NOW for p in predictions)
    assert comparable(predictions) == comparable(label_candidate(1).predict(batch, NOW))


def test_an_exception_in_the_candidate_is_an_error_of_that_event_only() -> None:
    batch = events(50, e0007={"boom": True})
    candidate = label_candidate(2)
    with candidate:
        predictions = candidate.predict(batch, NOW)

    failed = [(p, p.error) for p in predictions if p.error is not None]
    assert [p.event_id for p, _ in failed] == ["e0007"]
    (first, error), = failed
    assert (error.type, error.message) == ("ValueError", "no label for e0007")
    assert first.output is None
    assert comparable(predictions) == comparable(label_candidate(1).predict(batch, NOW))


def test_a_worker_killed_with_sigkill_is_replaced_and_its_task_run_again(tmp_path: Path) -> None:
    pid_file = tmp_path / "killed-worker.pid"
    batch = events(120, e0042={"wait_for_kill": str(pid_file)})
    candidate = label_candidate(2)
    with candidate:
        result: list[list[Prediction]] = []
        thread = threading.Thread(target=lambda: result.append(candidate.predict(batch, NOW)))
        thread.start()
        wait_until(lambda: pid_file.exists() and pid_file.read_text() != "", timeout_s=60,
                   what="a worker to write its pid and wait to be killed")
        killed = int(pid_file.read_text())
        assert killed in candidate.worker_pids
        os.kill(killed, signal.SIGKILL)
        thread.join(60)
        assert not thread.is_alive()
        assert killed not in candidate.worker_pids
        assert candidate.worker_restarts == 1

    (predictions,) = result
    assert [p.event_id for p in predictions] == [e.event_id for e in batch]
    assert all(p.error is None for p in predictions)
    assert predictions[42].output["digest"] == expected_digest(batch[42].payload["text"])


def test_a_worker_that_kills_itself_once_loses_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "died"
    batch = events(80, e0010={"die_once": str(marker)})
    candidate = label_candidate(2)
    with candidate:
        predictions = candidate.predict(batch, NOW)
        assert candidate.worker_restarts == 1

    assert marker.exists()
    assert [p.event_id for p in predictions] == [e.event_id for e in batch]
    assert all(p.error is None for p in predictions)


def test_an_event_that_kills_its_worker_every_time_becomes_an_error() -> None:
    batch = events(40, e0013={"die_always": True})
    candidate = label_candidate(2)
    with candidate:
        predictions = candidate.predict(batch, NOW)
        again = candidate.predict(events(6), NOW)  # the replaced workers serve on

    failed = [(p.event_id, p.error) for p in predictions if p.error is not None]
    assert [event_id for event_id, _ in failed] == ["e0013"]
    (_, error), = failed
    assert error.type == "WorkerDied"
    assert "died on this event 2 times" in error.message
    assert [p.event_id for p in predictions] == [e.event_id for e in batch]
    assert all(p.error is None for p in again)


def test_a_batch_callable_is_called_with_the_same_lists_as_in_one_process() -> None:
    batch = events(30)
    in_process = CallableCandidate(workers_model.labels, name="labels", version="1")
    with CallableCandidate(workers_model.labels, name="labels", version="1",
                           workers=3) as candidate:
        predictions = candidate.predict(batch, NOW)

    assert comparable(predictions) == comparable(in_process.predict(batch, NOW))
    ids = [e.event_id for e in batch]
    assert [p.output["with"] for p in predictions] == [
        ids[i // 4 * 4 : i // 4 * 4 + 4] for i in range(30)]


def test_close_stops_the_workers() -> None:
    candidate = label_candidate(2)
    with candidate:
        pids = candidate.worker_pids
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    wait_until(lambda: not any(_alive(pid) for pid in pids), timeout_s=10,
               what="the workers to exit")
    with pytest.raises(RuntimeError, match="closed"):
        candidate.predict(events(1), NOW)


def test_one_worker_runs_in_this_process_without_opening() -> None:
    candidate = CallableCandidate(workers_model.pid, name="pid", version="1")
    assert [p.output for p in candidate.predict(events(3), NOW)] == [os.getpid()] * 3


def test_workers_do_not_change_the_fingerprint() -> None:
    one = build_candidate(CallableCandidateSpec(callable="tests.candidates.workers_model:label"))
    two = build_candidate(CallableCandidateSpec(callable="tests.candidates.workers_model:label",
                                                workers=2))
    assert one.version is not None and one.version.startswith("fp-")
    assert two.version == one.version


@pytest.mark.parametrize("workers", [0, 65, "many"])
def test_workers_out_of_range_is_a_configuration_error_naming_the_key(workers: object) -> None:
    with pytest.raises(ConfigError, match=r"candidate\.workers"):
        parse_config({"version": 1, "candidate": {"callable": "app:predict",
                                                   "workers": workers}}, origin="test")


def test_workers_on_an_http_candidate_is_a_configuration_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"candidates\.0\.workers: unknown setting"):
        parse_config({"version": 1, "candidates": [{
            "kind": "http", "url": "http://localhost:1/predict", "workers": 2}]}, origin="test")


def test_a_replay_with_two_workers_stores_what_one_worker_stores(
    tmp_path: Path, write_lines: Callable[[str, Iterable[str]], Path]
) -> None:
    kill_marker = tmp_path / "died"
    records = [{"event_id": f"e{i:04d}", "key": f"k{i}",
                "occurred_at": (NOW - timedelta(minutes=i)).isoformat(),
                "payload": {"text": "y" * (i % 11), "boom": i % 97 == 5,
                            "die_once": str(kill_marker) if i == 1234 else None}}
               for i in range(2500)]
    records.append(records[17])  # a duplicate, stored once
    events_file = write_lines("events.jsonl", (json.dumps(r) for r in records))
    outcomes = write_lines("outcomes.jsonl", (
        json.dumps({"key": f"k{i}", "decided_at": NOW.isoformat(),
                    "outcome": {"label": "long" if i % 11 > 8 else "short"}})
        for i in range(0, 2500, 7)))
    stores = {}
    for workers in (1, 2):
        config = tmp_path / f"shadow-{workers}.yaml"
        config.write_text(json.dumps({"version": 1, "candidate": {
            "callable": "tests.candidates.workers_model:label", "workers": workers},
            "comparator": {"kind": "exact", "prediction_path": "label",
                           "outcome_path": "label"}}), encoding="utf-8")
        stores[workers] = tmp_path / f"store-{workers}.duckdb"
        # Only the run with workers should die once: the marker exists for the other.
        if workers == 1:
            kill_marker.write_text("in-process run")
        else:
            kill_marker.unlink()
        summary = replay_files(ReplayRequest(events=[events_file], outcomes=[outcomes],
                                             db=stores[workers], config=config, batch_size=700))
        assert (summary.events_stored, summary.predictions) == (2500, 2500)
    assert kill_marker.read_text() != "in-process run"  # a worker did die once

    tables = {
        "events": "SELECT * EXCLUDE (stored_at) FROM events ORDER BY event_id",
        "outcomes": "SELECT * EXCLUDE (stored_at) FROM outcomes ORDER BY key",
        "predictions": "SELECT * EXCLUDE (latency_ms, predicted_at) FROM predictions "
                       "ORDER BY event_id",
        "comparisons": "SELECT * EXCLUDE (compared_at) FROM comparisons ORDER BY event_id",
    }
    rows = {}
    for workers, db in stores.items():
        with duckdb.connect(str(db), read_only=True) as store:
            rows[workers] = {name: store.execute(sql).fetchall() for name, sql in tables.items()}
    assert len(rows[2]["predictions"]) == 2500
    assert len(rows[2]["comparisons"]) > 300
    for name in tables:
        assert rows[2][name] == rows[1][name], name


def test_a_worker_sees_the_fields_an_event_was_given_as_this_process_does() -> None:
    given = [
        Event(event_id="a", key="k", occurred_at=NOW),
        Event(event_id="b", key="k", occurred_at=NOW, payload={"x": 1}, segment={"s": "t"}),
        Event(event_id="c", key="k", occurred_at=NOW, routing_key=None),
        Event(event_id="d", key="k", occurred_at=NOW, segment={}, payload={}, routing_key="r"),
    ]
    back = decode_events(*encode_events(given))

    assert back == given
    assert [e.model_fields_set for e in back] == [e.model_fields_set for e in given]
    assert [e.model_dump(exclude_unset=True) for e in back] == [
        e.model_dump(exclude_unset=True) for e in given]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but still answers; its state says so.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][:1] != "Z"
