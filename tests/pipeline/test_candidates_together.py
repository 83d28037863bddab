"""Several candidates in one replay, abstention and coverage, and --retry-errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from shadow.core.models import Event
from shadow.pipeline.replay import ReplayRequest, replay_files
from shadow.pipeline.runner import ReplaySummary

HERE = "tests.pipeline.test_candidates_together"
LineWriter = Callable[[str, Iterable[str]], Path]
ReportReader = Callable[[Path], dict[str, Any]]

# (what the human decided, confident answer?, answer of the confident model)
TICKETS = [(f"t{i}", "billing" if i % 3 else "login", i % 4 != 0) for i in range(24)]
FAILING: set[str] = set()
"""Event ids the flaky candidate fails on; emptied to let a retry succeed."""


def confident(event: Event) -> dict[str, Any]:
    human, sure = event.payload["human"], event.payload["sure"]
    answer = human if sure else "bug"
    return {"category": answer, "score": 0.9 if sure else 0.3}


def always_billing(event: Event) -> dict[str, Any]:
    return {"category": "billing", "score": 1.0}


def flaky(event: Event) -> str:
    if event.event_id in FAILING:
        raise ConnectionError(f"backend unavailable for {event.event_id}")
    return str(event.payload["human"])


def write_inputs(write_lines: LineWriter) -> tuple[Path, Path]:
    events = write_lines("events.jsonl", (
        json.dumps({"event_id": f"e-{key}", "key": key, "occurred_at": "2024-05-01T10:00:00Z",
                    "payload": {"human": human, "sure": sure}})
        for key, human, sure in TICKETS
    ))
    outcomes = write_lines("outcomes.jsonl", (
        json.dumps({"key": key, "outcome": human, "decided_at": "2024-05-02T10:00:00Z"})
        for key, human, _ in TICKETS
    ))
    return events, outcomes


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "shadow.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def replay(events: Path, outcomes: Path, db: Path, config: Path | None = None,
           **options: Any) -> ReplaySummary:
    return replay_files(ReplayRequest(events=[events], outcomes=[outcomes], db=db,
                                      config=config, **options))


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["candidates"]}


def test_two_candidates_run_on_every_event_and_are_reported_side_by_side(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    events, outcomes = write_inputs(write_lines)
    config = write_config(tmp_path, f"""
candidates:
  - {{callable: "{HERE}:confident", name: careful}}
  - {{callable: "{HERE}:always_billing", name: lazy}}
comparator: {{kind: exact, prediction_path: category}}
""")
    db = tmp_path / "store.duckdb"

    summary = replay(events, outcomes, db, config)

    report = by_name(read_report(db))
    assert summary.predictions == 2 * len(TICKETS)
    careful = sum((human if sure else "bug") == human for _, human, sure in TICKETS)
    lazy = sum(human == "billing" for _, human, _ in TICKETS)
    assert report["careful"]["agreement"]["rate"] == careful / len(TICKETS)
    assert report["lazy"]["agreement"]["rate"] == lazy / len(TICKETS)


def test_abstentions_are_not_compared_and_show_as_coverage(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    events, outcomes = write_inputs(write_lines)
    config = write_config(tmp_path, f"""
candidate:
  callable: "{HERE}:confident"
  confidence_path: score
  abstain_below: 0.5
comparator: {{kind: exact, prediction_path: category}}
""")
    db = tmp_path / "store.duckdb"

    replay(events, outcomes, db, config)

    (candidate,) = read_report(db)["candidates"]
    handled = [(human, sure) for _, human, sure in TICKETS if sure]
    assert candidate["abstained"] == len(TICKETS) - len(handled)
    assert candidate["coverage"] == len(handled) / len(TICKETS)
    assert candidate["compared"] == len(handled)
    assert candidate["pending"] == 0
    assert candidate["agreement"]["rate"] == 1.0  # it is right whenever it is sure


def test_retry_errors_predicts_again_only_the_failed_events(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    events, outcomes = write_inputs(write_lines)
    db = tmp_path / "store.duckdb"
    FAILING.clear()
    FAILING.update({"e-t1", "e-t5", "e-t7"})
    first = replay(events, outcomes, db, candidate=f"{HERE}:flaky")
    assert (first.prediction_errors, first.compared) == (3, len(TICKETS) - 3)

    FAILING.clear()
    again = replay(events, outcomes, db, candidate=f"{HERE}:flaky", retry_errors=True)

    (candidate,) = read_report(db)["candidates"]
    assert (again.retried, again.prediction_errors, again.compared) == (3, 0, 3)
    assert (candidate["predictions"], candidate["errors"]) == (len(TICKETS), 0)
    assert candidate["compared"] == len(TICKETS)
    assert candidate["agreement"]["rate"] == 1.0
