"""A replay of an agent candidate against a real MCP server (tests/candidates/mcp_server.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import duckdb

from shadow.pipeline.replay import ReplayRequest, replay_files
from tests.candidates.mcp_server import CUSTOMERS, ORDERS

SERVER = Path(__file__).resolve().parent.parent / "candidates" / "mcp_server.py"
CUSTOMER_OF = {"e1": "c1", "e2": "c2", "e3": "c9"}
"""c9 is not a customer: its lookup fails and the agent answers without acting."""


def test_every_event_is_predicted_and_only_lookups_reach_the_server(
    tmp_path: Path, write_lines: Callable[[str, Iterable[str]], Path]
) -> None:
    record = tmp_path / "received.jsonl"
    events = write_lines("events.jsonl", (
        json.dumps({"event_id": event_id, "key": f"t-{event_id}",
                    "occurred_at": "2026-12-01T10:00:00Z", "payload": {"customer": customer}})
        for event_id, customer in CUSTOMER_OF.items()))
    outcomes = write_lines("outcomes.jsonl", [])
    config = tmp_path / "shadow.yaml"
    config.write_text(json.dumps({"version": 1, "candidate": {
        "kind": "agent", "name": "refund-agent", "model": "tests.candidates.agent_model:refund",
        "tools": {"command": [sys.executable, str(SERVER), str(record), "stdio"]},
        "allow": ["get_customer", "get_orders"],
        "user": '{"customer_id": "{{ payload.customer }}"}',
    }}), encoding="utf-8")
    db = tmp_path / "store.duckdb"

    replay_files(ReplayRequest(events=[events], outcomes=[outcomes], db=db, config=config))

    received = [json.loads(line) for line in record.read_text().splitlines()]
    assert {call["tool"] for call in received} == {"get_customer", "get_orders"}
    expected_lookups = [("get_customer", customer) for customer in CUSTOMER_OF.values()]
    assert sorted((c["tool"], c["arguments"].get("customer_id")) for c in received
                  if c["tool"] == "get_customer") == sorted(expected_lookups)

    with duckdb.connect(str(db), read_only=True) as store:
        rows = store.execute("SELECT event_id, output, error_type FROM predictions "
                             "WHERE candidate = 'refund-agent' ORDER BY event_id").fetchall()
        stored_calls = store.execute(
            "SELECT event_id, ordinal, tool, result, error FROM tool_calls "
            "WHERE candidate = 'refund-agent' ORDER BY event_id, ordinal").fetchall()
    assert [row[0] for row in rows] == sorted(CUSTOMER_OF)
    assert all(row[2] is None for row in rows)
    outputs = {row[0]: json.loads(row[1]) for row in rows}
    for event_id in ("e1", "e2"):
        customer = CUSTOMERS[CUSTOMER_OF[event_id]]
        order = ORDERS[customer["last_order"]]
        assert outputs[event_id]["actions"] == [{
            "tool": "issue_refund", "id": "call_3_0",
            "arguments": {"order_id": order["order_id"], "amount": order["amount"]}}]
        assert [call["output"] for call in outputs[event_id]["tool_calls"]] == [customer, order]
    assert outputs["e3"]["stop"] == "answered"
    assert outputs["e3"]["actions"] == []
    [failed] = outputs["e3"]["tool_calls"]
    assert "no customer c9" in failed["error"]
    assert [(e, o, t) for e, o, t, _, _ in stored_calls] == [
        ("e1", 0, "get_customer"), ("e1", 1, "get_orders"),
        ("e2", 0, "get_customer"), ("e2", 1, "get_orders"), ("e3", 0, "get_customer")]
    assert json.loads(stored_calls[1][3]) == ORDERS["o9"]
    assert stored_calls[4][3] is None
    assert "no customer c9" in stored_calls[4][4]
