"""What an agent's run started from, kept with its prediction and stored once per distinct
content, against the real MCP server (tests/candidates/mcp_server.py) over stdio."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from shadow.candidates.agent import AgentCandidate, Message, Turn
from shadow.candidates.mcp_tools import McpToolset, Tool
from shadow.cli.show import event_record
from shadow.core.models import Event
from shadow.store.database import Store
from shadow.store.writes import StoredEvent, WriteBatch
from tests.candidates.mcp_server import CUSTOMERS
from tests.candidates.test_agent import SERVER, Scripted, calls, prompt

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


class LookThenRefund(Scripted):
    """Looks the customer up, then proposes a refund; ``seen`` keeps what each run's
    last step was given (the prompt, the lookup's turn and its result)."""

    def __call__(self, messages: Sequence[Message], tools: Sequence[Tool]) -> Turn:
        if messages[-1]["role"] == "tool":
            self.seen[-1] = [dict(message) for message in messages]
            return calls(("issue_refund", {"order_id": "o9", "amount": 1.0}))
        self.seen.append([dict(message) for message in messages])
        self.offered.append([tool.name for tool in tools])
        return calls(("get_customer", json.loads(messages[-1]["content"])))


def test_each_prediction_keeps_the_messages_and_tools_the_model_was_given(tmp_path: Path) -> None:
    record = tmp_path / "calls.jsonl"
    model = LookThenRefund([])
    agent = AgentCandidate(name="agent", version="1", model=model,
                           toolset=McpToolset([sys.executable, str(SERVER), str(record),
                                               "stdio"]),
                           allowlist=["get_customer"], prompt=prompt, model_name="crm:agent")
    events = [Event(event_id=ident, key=ident, occurred_at=NOW, payload={"customer_id": who})
              for ident, who in [("e1", "c1"), ("e2", "c1"), ("e3", "c2")]]
    with agent:
        predictions = agent.predict(events, NOW)
    with Store(tmp_path / "s.duckdb") as store:
        store.write(WriteBatch(predictions=predictions, events=[
            StoredEvent(event, "test", event.event_id) for event in events]))
        linked = {event: json.loads(request) for event, request in store.db.execute(
            "SELECT p.event_id, r.request FROM predictions p "
            "JOIN requests r USING (request_hash)").fetchall()}
        stored = store.count("requests")

    assert stored == len({json.dumps(seen, sort_keys=True) for seen in model.seen}) == 2
    for (ident, request), seen, offered in zip(sorted(linked.items()), model.seen,
                                               model.offered, strict=True):
        assert request["messages"] == seen, ident
        assert [message["role"] for message in seen] == ["system", "user", "assistant", "tool"]
        assert [tool["name"] for tool in request["tools"]] == offered
        assert (request["model"], request["allow"]) == ("crm:agent", ["get_customer"])
    assert linked["e1"] == linked["e2"] != linked["e3"]
    assert [json.loads(line) for line in record.read_text().splitlines()] == [
        {"tool": "get_customer", "arguments": {"customer_id": who}} for who in ["c1", "c1", "c2"]]

    with Store(tmp_path / "s.duckdb", read_only=True) as store:
        shown = event_record(store.db, "e3", "agent")
    (prediction,) = shown["predictions"]
    assert prediction["request"] == linked["e3"]
    assert [(call["tool"], call["arguments"], call["result"]) for call in
            prediction["tool_calls"]] == [
        ("get_customer", {"customer_id": "c2"}, CUSTOMERS["c2"])]
