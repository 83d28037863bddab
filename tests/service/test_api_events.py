"""``GET /events/{event_id}``: what ``shadow show`` prints, from a running daemon, redacted.

The test writes a real store (an event, an agent's prediction with the request it sent and
the tool calls it executed, a plain candidate's prediction), then ``shadow run`` serves it
in a subprocess with ``report.redact`` set; every expected value is the one written here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from shadow.core.errors import ConfigError
from shadow.core.models import Event, Prediction
from shadow.service.api_client import DaemonClient
from shadow.store.database import Store
from shadow.store.writes import StoredEvent, WriteBatch
from tests.daemon_process import TOKEN, ready_api, start_daemon, stop

OCCURRED = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
PREDICTED = datetime(2026, 3, 1, 9, 30, 2, tzinfo=UTC)
EMAIL = "ann@example.org"
PAYLOAD = {"customer": "c1", "email": EMAIL, "subject": "late parcel", "order_total": 40}
REQUEST = {"model": "gpt-test", "temperature": 0.2,
           "messages": [{"role": "system", "content": "You handle refunds."},
                        {"role": "user", "content": f"Ticket from {EMAIL}: late parcel"}],
           "tools": [{"type": "function", "function": {"name": "issue_refund"}}]}
CALLS = [
    {"id": "call_1", "tool": "get_customer", "arguments": {"email": EMAIL}, "step": 0,
     "output": {"name": "Ann", "tier": "gold"}, "latency_ms": 12.5},
    {"id": "call_2", "tool": "get_order", "arguments": {"order_id": "o9"}, "step": 1,
     "error": "timed out", "latency_ms": 3000.0},
    "not a call",
]
AGENT_OUTPUT = {"reply": f"Refund of 40 sent to {EMAIL}", "refund": 40, "tool_calls": CALLS}
CONFIG = """
candidate: {callable: "shadow.demo.candidate:classify", name: keyword-triage, version: "1"}
store: {path: daemon.duckdb}
sources:
  events: [{kind: file, path: events.jsonl}]
report: {redact: [email, order_total]}
daemon:
  api: {port: 0}
"""


def canonical_hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def write_store(path: Path) -> None:
    event = Event(event_id="e1", key="ticket-1", occurred_at=OCCURRED, payload=PAYLOAD)
    agent = Prediction(
        event_id="e1", candidate="agent", version="2", output=AGENT_OUTPUT, latency_ms=812.0,
        predicted_at=PREDICTED, model="served-model", prompt_tokens=40, completion_tokens=8,
        cost=0.0021, violations=(f"pii:email {EMAIL} at output.reply",), request=REQUEST)
    baseline = Prediction(event_id="e1", candidate="baseline", version=None,
                          output={"category": "refund"}, latency_ms=3.0,
                          predicted_at=PREDICTED)
    with Store(path) as store:
        store.write(WriteBatch(events=[StoredEvent(event, "tickets", "0")],
                               predictions=[agent, baseline]))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("events")
    write_store(directory / "daemon.duckdb")
    (directory / "events.jsonl").write_text("", encoding="utf-8")
    config = directory / "daemon.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    process = start_daemon(config, "daemon.log")
    try:
        yield ready_api(directory / "daemon.duckdb", process=process)
    finally:
        code, log = stop(process)
    assert code == 0, log


def get(api: str, path: str, token: str | None = TOKEN) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.get(api + path, headers=headers, trust_env=False, timeout=60)


def test_an_event_comes_with_each_prediction_its_request_and_its_tool_calls(api: str) -> None:
    response = get(api, "/events/e1")
    assert response.status_code == 200, response.text
    shown = response.json()
    assert shown["event"] == {
        "event_id": "e1", "key": "ticket-1", "occurred_at": "2026-03-01T09:30:00+00:00",
        "payload": {"customer": "c1", "email": "[redacted]", "subject": "late parcel",
                    "order_total": "[redacted]"}}
    agent, baseline = shown["predictions"]
    assert {k: agent[k] for k in ("candidate", "version", "mode", "predicted_at", "model",
                                  "asked_model", "prompt_tokens", "completion_tokens", "cost",
                                  "latency_ms", "attempts", "error_type")} == {
        "candidate": "agent", "version": "2", "mode": "shadow",
        "predicted_at": "2026-03-01T09:30:02+00:00", "model": "served-model",
        "asked_model": "gpt-test", "prompt_tokens": 40, "completion_tokens": 8,
        "cost": 0.0021, "latency_ms": 812.0, "attempts": 1, "error_type": None}
    assert agent["request_hash"] == canonical_hash(REQUEST)
    assert agent["request"]["messages"][1] == {"role": "user",
                                               "content": "Ticket from [redacted]: late parcel"}
    assert agent["request"]["tools"] == REQUEST["tools"]
    assert agent["tool_calls"] == [
        {"ordinal": 0, "step": 0, "call_id": "call_1", "tool": "get_customer",
         "arguments": {"email": "[redacted]"}, "result": {"name": "Ann", "tier": "gold"},
         "latency_ms": 12.5, "error": None, "problem": None},
        {"ordinal": 1, "step": 1, "call_id": "call_2", "tool": "get_order",
         "arguments": {"order_id": "o9"}, "result": None, "latency_ms": 3000.0,
         "error": "timed out", "problem": None},
        {"ordinal": 2, "step": None, "call_id": None, "tool": None, "arguments": None,
         "result": None, "latency_ms": None, "error": None,
         "problem": "expected an object with a tool"}]
    assert (baseline["candidate"], baseline["output"], baseline["request"],
            baseline["request_hash"], baseline["tool_calls"]) == (
        "baseline", {"category": "refund"}, None, None, [])


def test_private_fields_are_redacted_wherever_they_show_but_measures_are_kept(
        api: str) -> None:
    response = get(api, "/events/e1?candidate=agent")
    assert response.status_code == 200, response.text
    assert EMAIL not in response.text
    (agent,) = response.json()["predictions"]
    assert agent["output"]["reply"] == "Refund of [redacted] sent to [redacted]"
    assert agent["output"]["refund"] == "[redacted]"
    assert agent["violations"] == ["pii:email [redacted] at output.reply"]
    assert agent["prompt_tokens"] == 40  # a count, not the private order total


def test_the_candidate_query_keeps_only_its_predictions(api: str) -> None:
    response = get(api, "/events/e1?candidate=baseline")
    assert response.status_code == 200, response.text
    assert [p["candidate"] for p in response.json()["predictions"]] == ["baseline"]


@pytest.mark.parametrize(("path", "message"), [
    ("/events/e9", "the store has no event 'e9'"),
    ("/events/e1?candidate=nobody",
     "event 'e1' has no prediction of 'nobody' (it has: agent, baseline)"),
], ids=["event", "candidate"])
def test_what_the_store_does_not_have_is_404_naming_it(api: str, path: str,
                                                       message: str) -> None:
    response = get(api, path)
    assert (response.status_code, response.json()) == (404, {"error": message})


def test_the_route_needs_a_token_the_daemon_knows(api: str) -> None:
    without = get(api, "/events/e1", token=None)
    assert without.status_code == 401
    assert without.headers["WWW-Authenticate"] == 'Bearer realm="shadow"'
    assert EMAIL not in without.text and "ticket-1" not in without.text
    unknown = get(api, "/events/e1", token=TOKEN + "x")
    assert unknown.status_code == 403
    assert "not one the daemon accepts" in unknown.json()["error"]


def test_the_client_asks_for_an_event(api: str) -> None:
    client = DaemonClient(api, TOKEN)
    assert client.event("e1") == get(api, "/events/e1").json()
    assert [p["candidate"] for p in client.event("e1", candidate="agent")["predictions"]] == [
        "agent"]
    with pytest.raises(ConfigError, match="the store has no event 'e/9'"):
        client.event("e/9")
