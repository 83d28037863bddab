"""Which prompt produced which output: a chat candidate's requests, kept once per distinct
content, and ``shadow show``, against a real OpenAI-compatible server on 127.0.0.1 and the
``shadow`` command run for real in subprocesses."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.cli.test_cli import run, write_jsonl
from tests.http_server import Reply, Request, TestServer

SECRET = "sk-test-never-stored-4f1c"
PAYLOADS = {
    "e1": {"customer": "c1", "subject": "late parcel", "email": "ann@example.org"},
    "e2": {"customer": "c2", "subject": "broken cup", "email": "bob@example.org"},
    # Two events with the same content: one request between them.
    "e3": {"customer": "c3", "subject": "wrong size", "email": "cy@example.org"},
    "e4": {"customer": "c3", "subject": "wrong size", "email": "cy@example.org"},
}
REFUND = {"type": "object", "properties": {"amount": {"type": "number"}},
          "required": ["amount"]}


def answer(request: Request) -> Reply:
    return Reply(body={
        "model": "served-model",
        "choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "issue_refund", "arguments": '{"amount": 20}'}}]}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 8},
    })


@pytest.fixture
def server() -> Iterator[TestServer]:
    with TestServer(answer) as running:
        yield running


def prepare(directory: Path, server: TestServer) -> None:
    write_jsonl(directory / "events.jsonl", [
        {"event_id": ident, "key": ident, "occurred_at": "2024-05-01T00:00:00Z",
         "payload": payload} for ident, payload in PAYLOADS.items()])
    (directory / "shadow.yaml").write_text(json.dumps({
        "candidate": {
            "kind": "chat", "name": "agent", "base_url": server.url + "/v1",
            "model": "gpt-test", "api_key_env": "SHADOW_TEST_KEY", "temperature": 0.2,
            "system": "You handle refunds.",
            "user": "Ticket from {{ payload.customer }} ({{ payload.email }}): "
                    "{{ payload.subject }}",
            "tools": [{"type": "function",
                       "function": {"name": "issue_refund", "parameters": REFUND}}],
            "retry": {"max_attempts": 1},
        },
        "report": {"redact": ["email"]}, "store": {"path": "s.duckdb"},
    }), encoding="utf-8")


def replay(directory: Path) -> None:
    result = run(directory, "replay", "events.jsonl", "--config", "shadow.yaml",
                 "--db", "s.duckdb", SHADOW_TEST_KEY=SECRET)
    assert result.returncode == 0, result.stderr


def canonical_hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def stored(directory: Path) -> tuple[dict[str, tuple[str, Any]], int, int]:
    """Each event's (request_hash, request), the count of requests and of predictions."""
    with duckdb.connect(str(directory / "s.duckdb"), read_only=True) as db:
        linked = {event: (digest, json.loads(request)) for event, digest, request in db.execute(
            "SELECT p.event_id, p.request_hash, r.request FROM predictions p "
            "JOIN requests r USING (request_hash)").fetchall()}
        ((requests,),) = db.execute("SELECT count(*) FROM requests").fetchall()
        ((predictions,),) = db.execute("SELECT count(*) FROM predictions").fetchall()
    return linked, requests, predictions


def test_each_distinct_request_is_stored_once_and_linked_from_its_prediction(
    tmp_path: Path, server: TestServer
) -> None:
    prepare(tmp_path, server)
    replay(tmp_path)

    received = [request.json() for request in server.requests]
    assert len(received) == 4
    distinct = {canonical_hash(body) for body in received}
    linked, requests, predictions = stored(tmp_path)
    assert (requests, predictions) == (len(distinct), 4) == (3, 4)
    for event, payload in PAYLOADS.items():
        digest, request = linked[event]
        user = (f"Ticket from {payload['customer']} ({payload['email']}): "
                f"{payload['subject']}")
        sent = next(body for body in received if body["messages"][-1]["content"] == user)
        assert request == sent
        assert digest == canonical_hash(sent)
    assert linked["e3"] == linked["e4"]
    # The API key went as a header, never into the store.
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    with duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True) as db:
        assert not db.execute("SELECT * FROM requests WHERE request::VARCHAR LIKE ?",
                              [f"%{SECRET}%"]).fetchall()

    replay(tmp_path)

    assert len(server.requests) == 4
    assert stored(tmp_path) == (linked, requests, predictions)


def test_show_prints_the_prediction_the_request_and_redacts_private_fields(
    tmp_path: Path, server: TestServer
) -> None:
    prepare(tmp_path, server)
    replay(tmp_path)
    (sent,) = [request.json() for request in server.requests
               if "late parcel" in request.json()["messages"][-1]["content"]]

    shown = run(tmp_path, "show", "e1", "--db", "s.duckdb", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["event"]["payload"] == PAYLOADS["e1"]
    (prediction,) = record["predictions"]
    assert prediction["candidate"] == "agent"
    assert prediction["request"] == sent
    assert prediction["request_hash"] == canonical_hash(sent)
    assert (prediction["asked_model"], prediction["model"]) == ("gpt-test", "served-model")
    assert prediction["output"]["actions"] == [
        {"tool": "issue_refund", "arguments": {"amount": 20}, "id": "call_1"}]
    assert prediction["tool_calls"] == []

    text = run(tmp_path, "show", "e1", "--db", "s.duckdb", "--candidate", "agent")
    assert text.returncode == 0, text.stderr
    assert f"request sha256:{canonical_hash(sent)}" in text.stdout
    assert "Ticket from c1 (ann@example.org): late parcel" in text.stdout
    assert '"issue_refund"' in text.stdout

    # The store named by the configuration's store.path.
    private = run(tmp_path, "show", "e1", "--config", "shadow.yaml", "--format", "json")
    assert private.returncode == 0, private.stderr
    assert "ann@example.org" not in private.stdout
    record = json.loads(private.stdout)
    assert record["predictions"][0]["request"]["messages"][-1]["content"] == (
        "Ticket from c1 ([redacted]): late parcel")


def test_show_names_what_is_missing(tmp_path: Path, server: TestServer) -> None:
    prepare(tmp_path, server)
    replay(tmp_path)

    unknown = run(tmp_path, "show", "e9", "--db", "s.duckdb")
    assert unknown.returncode == 2
    assert "shadow: error: EVENT_ID: the store has no event 'e9'" in unknown.stderr
    nowhere = run(tmp_path, "show", "e1")
    assert nowhere.returncode == 2
    assert "shadow: error: --db is required" in nowhere.stderr
    other = run(tmp_path, "show", "e1", "--db", "s.duckdb", "--candidate", "nobody")
    assert other.returncode == 2
    assert "--candidate: event 'e1' has no prediction of 'nobody' (it has: agent)" in (
        other.stderr)
