"""Replays with remote candidates, end to end: the store after faults, secrets, costs."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import duckdb
import pytest
import structlog

from shadow.pipeline.replay import ReplayRequest, replay_files
from tests.http_server import Reply, Request, TestServer

LineWriter = Callable[[str, Iterable[str]], Path]
ReportReader = Callable[[Path], dict[str, Any]]
SECRET = "s3cr3t-token-value-7781"
EVENTS = 60


def flaky(request: Request) -> Reply:
    """Per event, by the number in its id: some fail once, some always, some drop."""
    number = int(request.json()["event_id"].removeprefix("e"))
    seen = sum(1 for r in SEEN if r == number)
    SEEN.append(number)
    if number % 10 == 3:
        return Reply(status=500, body={"error": "always"})
    if number % 5 == 1 and seen == 0:
        return Reply(drop=True)
    if number % 7 == 2 and seen == 0:
        return Reply(status=429, headers={"Retry-After": "0"})
    return Reply(body={"label": "billing" if number % 2 else "login", "confidence": 0.8})


SEEN: list[int] = []


def write_inputs(write_lines: LineWriter) -> tuple[Path, Path]:
    events = write_lines("events.jsonl", (
        json.dumps({"event_id": f"e{i}", "key": f"k{i}", "occurred_at": "2024-05-01T10:00:00Z",
                    "payload": {"n": i}})
        for i in range(EVENTS)
    ))
    outcomes = write_lines("outcomes.jsonl", (
        json.dumps({"key": f"k{i}", "outcome": "billing", "decided_at": "2024-05-02T10:00:00Z"})
        for i in range(EVENTS)
    ))
    return events, outcomes


def all_text(db: Path) -> str:
    with duckdb.connect(str(db), read_only=True) as con:
        tables = [row[0] for row in con.execute("SHOW TABLES").fetchall()]
        return "\n".join(str(con.execute(f"SELECT * FROM {t}").fetchall())
                         for t in tables)


def test_a_flaky_endpoint_loses_no_event_and_leaks_no_secret(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    SEEN.clear()
    monkeypatch.setenv("SHADOW_TEST_TOKEN", SECRET)
    events, outcomes = write_inputs(write_lines)
    db = tmp_path / "store.duckdb"
    with TestServer(flaky) as server:
        config = tmp_path / "shadow.yaml"
        config.write_text(f"""
candidate:
  kind: http
  url: {server.url}/predict
  name: triage-api
  headers: {{Authorization: "Bearer ${{SHADOW_TEST_TOKEN}}"}}
  output_path: label
  concurrency: 8
  retry: {{max_attempts: 3, backoff_s: 0.01, max_backoff_s: 0.05}}
  breaker: {{failures: 1000, cooldown_s: 1}}
""", encoding="utf-8")
        with structlog.testing.capture_logs() as logs:
            summary = replay_files(ReplayRequest(events=[events], outcomes=[outcomes], db=db,
                                                 config=config))
        headers = {r.headers["authorization"] for r in server.requests}

    always_failing = {i for i in range(EVENTS) if i % 10 == 3}
    assert headers == {f"Bearer {SECRET}"}
    assert summary.predictions == EVENTS
    assert summary.prediction_errors == len(always_failing)
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT event_id, error_kind, attempts FROM predictions").fetchall()
    assert Counter(event_id for event_id, _, _ in rows) == {f"e{i}": 1 for i in range(EVENTS)}
    assert {e: (k, a) for e, k, a in rows if k} == {
        f"e{i}": ("http_status", 3) for i in always_failing
    }
    assert Counter(SEEN)[3] == 3  # an always-failing event was tried max_attempts times
    (candidate,) = read_report(db)["candidates"]
    expected_agree = sum(1 for i in range(EVENTS) if i % 2 and i not in always_failing)
    assert candidate["compared"] == EVENTS - len(always_failing)
    assert candidate["agreement"]["rate"] == expected_agree / candidate["compared"]
    assert SECRET not in all_text(db)
    assert SECRET not in repr(logs)


def chat(request: Request) -> Reply:
    body = request.json()
    n = int(body["messages"][-1]["content"].split()[-1])
    return Reply(body={
        "model": "served-model",
        "choices": [{"message": {"role": "assistant", "content": json.dumps("billing")}}],
        "usage": {"prompt_tokens": 100 + n, "completion_tokens": 3 + n % 4},
    })


def test_tokens_and_cost_of_a_chat_candidate_add_up_in_the_report(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHADOW_TEST_KEY", SECRET)
    events, outcomes = write_inputs(write_lines)
    db = tmp_path / "store.duckdb"
    with TestServer(chat) as server:
        config = tmp_path / "shadow.yaml"
        config.write_text(f"""
candidate:
  kind: chat
  base_url: {server.url}/v1
  model: cheap-model
  api_key_env: SHADOW_TEST_KEY
  user: "Ticket number {{{{ payload.n }}}}"
  prices: {{prompt_per_1k: 0.25, completion_per_1k: 2.0}}
""", encoding="utf-8")
        replay_files(ReplayRequest(events=[events], outcomes=[outcomes], db=db, config=config))

    prompt = sum(100 + n for n in range(EVENTS))
    completion = sum(3 + n % 4 for n in range(EVENTS))
    (candidate,) = read_report(db)["candidates"]
    assert candidate["tokens"] == {"prompt": prompt, "completion": completion}
    assert candidate["cost"]["total"] == pytest.approx((prompt * 0.25 + completion * 2.0) / 1000)
    assert candidate["cost"]["per_prediction"] == pytest.approx(
        candidate["cost"]["total"] / EVENTS
    )
    assert candidate["agreement"]["rate"] == 1.0
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT DISTINCT model FROM predictions").fetchall() == [
            ("served-model",)
        ]
    assert SECRET not in all_text(db)
