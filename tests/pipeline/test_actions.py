"""Candidates that propose actions: a callable and a real HTTP endpoint, replayed into a store."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import duckdb
import orjson

from shadow.core.models import Event
from shadow.pipeline.replay import ReplayRequest, replay_files
from tests.http_server import Reply, Request, TestServer

LineWriter = Callable[[str, Iterable[str]], Path]
EVENTS = 12


def proposed(number: int) -> dict[str, Any]:
    """What the agent answers for event ``e<number>``: every third event has a malformed
    second action (no tool), every fourth proposes nothing."""
    actions: list[Any] = [{"tool": "update_record", "arguments": {"priority": number % 3},
                           "id": f"call-{number}"}]
    if number % 3 == 0:
        actions.append({"arguments": {"note": "missing tool"}})
    if number % 4 == 0:
        actions = []
    actions.append({"tool": "send_reply", "arguments": {"text": f"hello {number}"},
                    "confidence": 0.5})
    return {"label": "update", "actions": actions}


def agent(event: Event) -> dict[str, Any]:
    return proposed(int(event.event_id.removeprefix("e")))


def endpoint(request: Request) -> Reply:
    return Reply(body=proposed(int(request.json()["event_id"].removeprefix("e"))))


def expected_rows() -> list[tuple[str, int, str | None, Any, bool]]:
    """(event, ordinal, tool, arguments, valid) as each answer lists them."""
    rows: list[tuple[str, int, str | None, Any, bool]] = []
    for number in range(EVENTS):
        for ordinal, item in enumerate(proposed(number)["actions"]):
            tool = item.get("tool")
            rows.append((f"e{number}", ordinal, tool, item["arguments"] if tool else None,
                         tool is not None))
    return sorted(rows)


def malformed_events() -> set[str]:
    return {f"e{n}" for n in range(EVENTS)
            if any("tool" not in item for item in proposed(n)["actions"])}


def write_events(write_lines: LineWriter) -> Path:
    return write_lines("events.jsonl", (
        json.dumps({"event_id": f"e{i}", "key": f"k{i}", "occurred_at": "2024-05-01T10:00:00Z",
                    "payload": {"n": i}})
        for i in range(EVENTS)
    ))


def stored(db: Path) -> tuple[list[tuple[str, int, str | None, Any, bool]], dict[str, Any]]:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT event_id, ordinal, tool, arguments, valid FROM actions "
                           "WHERE side = 'prediction'").fetchall()
        violations = dict(con.execute(
            "SELECT event_id, violations FROM predictions WHERE violations IS NOT NULL"
        ).fetchall())
    return (sorted((e, o, t, None if a is None else orjson.loads(a), v) for e, o, t, a, v in rows),
            violations)


def replay(events: Path, db: Path, config: Path) -> Any:
    return replay_files(ReplayRequest(events=[events], db=db, config=config))


def test_a_callables_actions_are_stored_and_its_malformed_ones_are_violations(
    tmp_path: Path, write_lines: LineWriter,
) -> None:
    events, db, config = write_events(write_lines), tmp_path / "store.duckdb", tmp_path / "s.yaml"
    config.write_text("candidate:\n  callable: tests.pipeline.test_actions:agent\n"
                      "  name: agent\n  version: v1\n", encoding="utf-8")

    first = replay(events, db, config)
    again = replay(events, db, config)

    rows, violations = stored(db)
    assert rows == expected_rows()
    assert first.predictions == EVENTS
    assert first.violations == len(malformed_events())
    assert violations == {
        event: ["actions:malformed actions[1]: tool: expected a non-empty string, got null"]
        for event in malformed_events()}
    assert again.predictions == 0
    assert stored(db)[0] == rows


def test_an_http_candidates_actions_are_stored(tmp_path: Path, write_lines: LineWriter) -> None:
    events, db, config = write_events(write_lines), tmp_path / "store.duckdb", tmp_path / "s.yaml"
    with TestServer(endpoint) as server:
        config.write_text(f"candidate:\n  kind: http\n  url: {server.url}/decide\n"
                          f"  name: agent-api\n  version: v1\n", encoding="utf-8")
        summary = replay(events, db, config)

    rows, violations = stored(db)
    assert summary.predictions == EVENTS and summary.prediction_errors == 0
    assert rows == expected_rows()
    assert set(violations) == malformed_events()
