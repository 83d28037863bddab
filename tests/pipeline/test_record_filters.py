"""``mapping.*.when`` in the pipeline: one file read as events and as outcomes, each side
keeping what its condition accepts; a record can be both, either or neither, and every
record read is stored, a duplicate, a dead letter or skipped."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from connectors.files import FileSource
from connectors.mapping import EventMapper, OutcomeMapper
from connectors.specs import MappingConfig
from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.core.models import Event
from shadow.pipeline.runner import Pipeline
from shadow.store.database import Store

LineWriter = Callable[[str, Iterable[str]], Path]

MAPPING = MappingConfig.model_validate({
    "events": {"when": {"path": "kind", "in": ["opened", "reopened"]},
               "event_id": "id", "key": "ticket", "occurred_at": "at", "payload": "$"},
    "outcomes": {"when": {"or": [{"path": "label", "present": True},
                                 {"path": "kind", "equals": "closed"}]},
                 "key": "ticket", "outcome": "label", "decided_at": "at"},
})

RECORDS: list[dict[str, Any]] = [
    # both: an event, and an outcome
    {"id": "r1", "ticket": "T-1", "kind": "opened", "label": "billing",
     "at": "2024-06-03T09:00:00Z"},
    # an event only
    {"id": "r2", "ticket": "T-2", "kind": "opened", "at": "2024-06-03T09:01:00Z"},
    # an outcome only
    {"id": "r3", "ticket": "T-2", "kind": "closed", "label": "login",
     "at": "2024-06-03T09:30:00Z"},
    # neither: skipped on both sides
    {"id": "r4", "ticket": "T-2", "kind": "commented", "at": "2024-06-03T09:10:00Z"},
    # an event the mapping cannot read: a dead letter, not skipped
    {"id": "r5", "ticket": "T-3", "kind": "reopened"},
    # an outcome whose label is null: `present` says no, and kind is not closed
    {"id": "r6", "ticket": "T-3", "kind": "edited", "label": None,
     "at": "2024-06-03T09:20:00Z"},
]


def label(event: Event) -> str:
    return "billing"


def test_one_file_gives_events_and_outcomes_by_their_conditions(
    write_lines: LineWriter, tmp_path: Path
) -> None:
    path = write_lines("changes.jsonl", [json.dumps(record) for record in RECORDS])

    with Store(tmp_path / "store.duckdb") as store:
        pipeline = Pipeline(store, CallableCandidate(label, name="labeller"),
                            build_comparator(ExactSpec()),
                            event_mapper=EventMapper(MAPPING.events),
                            outcome_mapper=OutcomeMapper(MAPPING.outcomes))
        s = pipeline.run([FileSource(path)], [FileSource(path)])
        events = store.db.execute("SELECT event_id FROM events ORDER BY 1").fetchall()
        outcomes = store.db.execute(
            "SELECT key, outcome FROM outcomes ORDER BY decided_at").fetchall()
        dead = store.db.execute("SELECT kind, position FROM dead_letters").fetchall()

    assert events == [("r1",), ("r2",)]
    assert outcomes == [("T-1", '"billing"'), ("T-2", '"login"')]
    assert dead == [("event", "line 5")]
    assert (s.events_read, s.events_stored, s.duplicates, s.dead_letters, s.events_skipped) == (
        6, 2, 0, 1, 3)
    assert (s.outcomes_read, s.outcomes_stored, s.outcome_dead_letters, s.outcomes_skipped) == (
        6, 2, 0, 4)
    assert s.events_read == s.events_stored + s.duplicates + s.dead_letters + s.events_skipped
