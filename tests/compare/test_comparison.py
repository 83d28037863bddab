"""The comparison step: which predictions are compared again, and per-field verdicts."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from shadow.core.models import Event
from shadow.pipeline.replay import ReplayRequest, replay_files
from shadow.pipeline.runner import ReplaySummary

HERE = "tests.compare.test_comparison"
LineWriter = Callable[[str, Iterable[str]], Path]
ReportReader = Callable[[Path], dict[str, Any]]

# (category, priority) the candidate answers, and what the human decided, per ticket.
CASES = {
    "t1": (("Billing", "high"), ("billing", "high")),
    "t2": (("billing", "low"), ("billing", "high")),
    "t3": (("bug", "high"), ("login", "high")),
    "t4": (("LOGIN ", "low"), ("login", "low")),
    "t5": (("bug", "urgent"), ("shipping", "low")),
}


def triage(event: Event) -> dict[str, str]:
    category, priority = event.payload["answer"]
    return {"category": category, "priority": priority}


def write_inputs(write_lines: LineWriter) -> tuple[Path, Path]:
    events = write_lines("events.jsonl", (
        json.dumps({"event_id": f"e-{key}", "key": key, "occurred_at": "2024-05-01T10:00:00Z",
                    "segment": {"queue": "eu" if key in ("t1", "t2", "t3") else "us"},
                    "payload": {"answer": list(answer)}})
        for key, (answer, _) in CASES.items()
    ))
    outcomes = write_lines("outcomes.jsonl", (
        json.dumps({"key": key, "decided_at": "2024-05-02T10:00:00Z",
                    "outcome": {"category": category, "priority": priority}})
        for key, (_, (category, priority)) in CASES.items()
    ))
    return events, outcomes


def replay(
    db: Path, events: Path, outcomes: Path, config: Path, compare: str | None = None
) -> ReplaySummary:
    return replay_files(ReplayRequest(
        events=[events], outcomes=[outcomes], db=db, config=config,
        candidate=f"{HERE}:triage", compare=compare,
    ))


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "shadow.yaml"
    config.write_text(
        "comparator:\n"
        "  kind: fields\n"
        "  fields:\n"
        "    category: {kind: normalized}\n"
        "    priority: {kind: exact}\n"
        "comparators:\n"
        "  category-only: {kind: normalized, prediction_path: category,"
        " outcome_path: category}\n",
        encoding="utf-8",
    )
    return config


def folded(text: str) -> str:
    return " ".join(text.split()).casefold()


def test_per_field_agreement_is_reported_next_to_the_overall_rate(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    events, outcomes = write_inputs(write_lines)
    db = tmp_path / "store.duckdb"

    replay(db, events, outcomes, write_config(tmp_path))

    category = [folded(a[0]) == folded(h[0]) for a, h in CASES.values()]
    priority = [a[1] == h[1] for a, h in CASES.values()]
    both = [c and p for c, p in zip(category, priority, strict=True)]
    (candidate,) = read_report(db)["candidates"]
    assert candidate["compared"] == len(CASES)
    assert candidate["agreement"]["rate"] == sum(both) / len(both)
    fields = {f["field"]: (f["compared"], f["agreement"]["rate"]) for f in candidate["fields"]}
    assert fields == {
        "category": (len(CASES), sum(category) / len(category)),
        "priority": (len(CASES), sum(priority) / len(priority)),
    }


def test_another_comparator_compares_every_prediction_again(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    events, outcomes = write_inputs(write_lines)
    db = tmp_path / "store.duckdb"
    config = write_config(tmp_path)
    replay(db, events, outcomes, config)

    again = replay(db, events, outcomes, config, compare="category-only")

    category = [folded(a[0]) == folded(h[0]) for a, h in CASES.values()]
    assert (again.predictions, again.compared) == (0, len(CASES))
    (candidate,) = read_report(db)["candidates"]
    assert candidate["agreement"]["rate"] == sum(category) / len(category)
    assert len(candidate["comparators"]) == 1
    assert candidate["fields"] == []


def test_the_same_comparator_compares_nothing_again(
    tmp_path: Path, write_lines: LineWriter
) -> None:
    events, outcomes = write_inputs(write_lines)
    db = tmp_path / "store.duckdb"
    config = write_config(tmp_path)
    replay(db, events, outcomes, config)

    again = replay(db, events, outcomes, config)

    assert again.compared == 0


def test_segments_slice_the_comparisons(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    events, outcomes = write_inputs(write_lines)
    db = tmp_path / "store.duckdb"

    replay(db, events, outcomes, write_config(tmp_path), compare="category-only")

    expected: dict[str, list[bool]] = {"eu": [], "us": []}
    for key, (answer, human) in CASES.items():
        queue = "eu" if key in ("t1", "t2", "t3") else "us"
        expected[queue].append(folded(answer[0]) == folded(human[0]))
    (candidate,) = read_report(db)["candidates"]
    got = {s["value"]: (s["compared"], s["agreement"]["rate"]) for s in candidate["segments"]}
    assert got == {q: (len(v), sum(v) / len(v)) for q, v in expected.items()}
