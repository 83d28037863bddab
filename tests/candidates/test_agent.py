"""The agent candidate against a real MCP server (tests/candidates/mcp_server.py).

What ran is read from the server's own record of the calls it received, never from
what the client says it did.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shadow.candidates import build_candidate
from shadow.candidates.agent import AgentCandidate, Budget, Message, ToolCall, Turn
from shadow.candidates.mcp_tools import McpToolset, Tool, ToolsetError
from shadow.config.file import parse_config
from shadow.core.actions import actions_of
from shadow.core.errors import ConfigError
from shadow.core.models import Event, Prediction
from tests.candidates.mcp_server import CUSTOMERS, ORDERS
from tests.waiting import wait_until

SERVER = Path(__file__).with_name("mcp_server.py")
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
READS = ["get_customer", "get_orders"]


def received(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


@dataclass
class Servers:
    http_url: str
    http_record: Path
    directory: Path

    def toolset(self, transport: str) -> tuple[McpToolset, Path]:
        if transport == "http":
            self.http_record.write_text("")
            return McpToolset(self.http_url), self.http_record
        record = self.directory / f"stdio-{len(list(self.directory.iterdir()))}.jsonl"
        return McpToolset([sys.executable, str(SERVER), str(record), "stdio"]), record


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    directory = tmp_path_factory.mktemp("mcp")
    record = directory / "http.jsonl"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, str(SERVER), str(record), "http", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def listening() -> bool:
            assert process.poll() is None, "the MCP server exited"
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True

        wait_until(listening, timeout_s=30, what="the MCP server to listen",
                   ignoring=(OSError,))
        yield Servers(f"http://127.0.0.1:{port}/mcp", record, directory / "stdio")
    finally:
        process.terminate()
        process.communicate(timeout=10)


@pytest.fixture(autouse=True)
def stdio_directory(servers: Servers) -> None:
    servers.directory.mkdir(exist_ok=True)


@dataclass
class Scripted:
    """A model that plays its steps in order, each a function of the conversation so far."""

    steps: list[Any]
    seen: list[list[Message]] = field(default_factory=list)
    offered: list[list[str]] = field(default_factory=list)

    def __call__(self, messages: Sequence[Message], tools: Sequence[Tool]) -> Turn:
        self.seen.append([dict(message) for message in messages])
        self.offered.append([tool.name for tool in tools])
        step = self.steps[min(len(self.seen), len(self.steps)) - 1]
        result = step(messages) if callable(step) else step
        assert isinstance(result, Turn)
        return result


def calls(*pairs: tuple[str, dict[str, Any]]) -> Turn:
    return Turn(None, tuple(ToolCall(tool, arguments) for tool, arguments in pairs))


def fed_back(messages: Sequence[Message]) -> Any:
    """The last tool result in the conversation, as the model reads it."""
    last = [message for message in messages if message["role"] == "tool"][-1]
    return json.loads(last["content"])


def prompt(event: Event) -> list[Message]:
    return [{"role": "system", "content": "You handle refund requests."},
            {"role": "user", "content": json.dumps(event.payload)}]


def event(customer: str = "c1") -> Event:
    return Event(event_id="e1", key="t1", occurred_at=NOW,
                 payload={"customer_id": customer, "ticket_id": "t1"})


def run(toolset: McpToolset, model: Scripted, allowlist: Sequence[str],
        **options: Any) -> tuple[Prediction, AgentCandidate]:
    candidate = AgentCandidate(name="agent", version="1", model=model, toolset=toolset,
                               allowlist=allowlist, prompt=prompt, **options)
    with candidate:
        [prediction] = candidate.predict([event()], NOW)
    return prediction, candidate


def refund_agent() -> Scripted:
    """Lookup, decide from what came back, then write."""

    def decide(messages: Sequence[Message]) -> Turn:
        order = fed_back(messages)
        return Turn("Refunding the damaged order.", (
            ToolCall("issue_refund", {"order_id": order["order_id"], "amount": order["amount"]},
                     "r1"),
            ToolCall("update_ticket", {"ticket_id": "t1", "priority": "low"}, "u1")))

    return Scripted([
        calls(("get_customer", {"customer_id": "c1"})),
        lambda messages: calls(("get_orders", {"order_id": fed_back(messages)["last_order"]})),
        decide,
    ])


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_only_allowlisted_reads_run_and_the_write_is_proposed(servers: Servers,
                                                             transport: str) -> None:
    toolset, record = servers.toolset(transport)
    model = refund_agent()
    prediction, _ = run(toolset, model, READS)

    assert prediction.error is None
    assert received(record) == [
        {"tool": "get_customer", "arguments": {"customer_id": "c1"}},
        {"tool": "get_orders", "arguments": {"order_id": "o9"}},
    ]
    output = prediction.output
    assert output["stop"] == "proposed"
    assert output["steps"] == 3
    assert output["reply"] == "Refunding the damaged order."
    found = actions_of(output)
    assert found.problems == ()
    assert [action.as_dict() for action in found.actions] == [
        {"tool": "issue_refund", "arguments": {"order_id": "o9", "amount": 40.0}, "id": "r1"},
        {"tool": "update_ticket", "arguments": {"ticket_id": "t1", "priority": "low"},
         "id": "u1"},
    ]
    executed = output["tool_calls"]
    assert [(call["step"], call["order"], call["tool"], call["output"], call["error"])
            for call in executed] == [(1, 0, "get_customer", CUSTOMERS["c1"], None),
                                      (2, 1, "get_orders", ORDERS["o9"], None)]
    assert all(call["latency_ms"] > 0 for call in executed)
    # every tool is offered to the model, the writes too, so it can propose them
    assert {"issue_refund", "update_ticket"} <= set(model.offered[0])
    assert fed_back(model.seen[2]) == ORDERS["o9"]


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_a_listed_tool_the_server_marks_as_writing_is_refused(servers: Servers,
                                                              transport: str) -> None:
    toolset, record = servers.toolset(transport)
    model = Scripted([calls(("get_customer", {"customer_id": "c1"})),
                      calls(("archive_customer", {"customer_id": "c1"}))])
    prediction, candidate = run(toolset, model,
                                [*READS, "archive_customer", "no_such_tool"])

    assert candidate.refused == {
        "archive_customer": "the server marks it as not read-only (readOnlyHint: false)",
        "no_such_tool": "the server does not offer it",
    }
    assert [call["tool"] for call in received(record)] == ["get_customer"]
    assert prediction.output["stop"] == "proposed"
    assert prediction.output["actions"] == [
        {"tool": "archive_customer", "arguments": {"customer_id": "c1"}, "id": "call_2_0"}]


def test_a_tool_without_a_read_only_annotation_runs_when_listed(servers: Servers) -> None:
    toolset, record = servers.toolset("http")
    model = Scripted([calls(("plain_lookup", {"customer_id": "c2"})), Turn("done")])
    prediction, candidate = run(toolset, model, ["plain_lookup"])

    assert candidate.refused == {}
    assert received(record) == [{"tool": "plain_lookup", "arguments": {"customer_id": "c2"}}]
    assert prediction.output["stop"] == "answered"
    assert prediction.output["actions"] == []


def test_the_executor_has_no_way_to_run_a_tool_outside_it(servers: Servers) -> None:
    toolset, record = servers.toolset("http")
    with toolset:
        executor = toolset.executor(["get_customer", "issue_refund"], timeout=5)
        assert executor.allowed == {"get_customer"}
        with pytest.raises(ToolsetError, match="'issue_refund' is not allowed"):
            executor.run("issue_refund", {"order_id": "o9", "amount": 1})
    assert received(record) == []


def test_max_steps_ends_a_run(servers: Servers) -> None:
    toolset, record = servers.toolset("http")
    model = Scripted([calls(("get_customer", {"customer_id": "c2"}))])
    prediction, _ = run(toolset, model, READS, budget=Budget(max_steps=3))

    assert prediction.output["stop"] == "max_steps"
    assert prediction.output["steps"] == 3
    assert prediction.output["actions"] == []
    assert len(model.seen) == 3
    assert len(received(record)) == 3
    assert len(prediction.output["tool_calls"]) == 3


def test_the_call_budget_ends_a_run(servers: Servers) -> None:
    toolset, record = servers.toolset("http")
    three = calls(*[("get_customer", {"customer_id": f"c{i}"}) for i in (1, 2, 1)])
    model = Scripted([three])
    prediction, _ = run(toolset, model, READS, budget=Budget(max_steps=5, max_calls=4))

    assert prediction.output["stop"] == "max_calls"
    assert prediction.output["steps"] == 2
    assert [call["arguments"]["customer_id"] for call in received(record)] == [
        "c1", "c2", "c1", "c1"]
    assert len(prediction.output["tool_calls"]) == 4


def test_a_tool_error_is_recorded_and_fed_back(servers: Servers) -> None:
    toolset, record = servers.toolset("http")
    model = Scripted([calls(("broken_lookup", {"customer_id": "c1"})), Turn("cannot tell")])
    prediction, _ = run(toolset, model, ["broken_lookup"])

    [call] = prediction.output["tool_calls"]
    assert call["output"] is None
    assert "the CRM is down" in call["error"]
    assert "the CRM is down" in fed_back(model.seen[1])["error"]
    assert prediction.output["stop"] == "answered"
    assert [call["tool"] for call in received(record)] == ["broken_lookup"]


def test_a_timeout_is_recorded_and_the_session_still_serves(servers: Servers) -> None:
    toolset, record = servers.toolset("http")
    model = Scripted([calls(("slow_lookup", {"seconds": 3}),
                            ("get_customer", {"customer_id": "c2"})), Turn("ok")])
    prediction, _ = run(toolset, model, ["slow_lookup", "get_customer"], call_timeout=0.5)

    slow, lookup = prediction.output["tool_calls"]
    assert slow["error"] == "timeout: no answer within 0.5 s"
    assert 500 <= slow["latency_ms"] < 3000
    assert lookup["output"] == CUSTOMERS["c2"]
    assert [call["tool"] for call in received(record)] == ["slow_lookup", "get_customer"]


def test_a_failing_model_keeps_the_calls_executed_before_it(servers: Servers) -> None:
    toolset, _ = servers.toolset("http")

    def broken(messages: Sequence[Message]) -> Turn:
        raise RuntimeError("model overloaded")

    model = Scripted([calls(("get_customer", {"customer_id": "c1"})), broken])
    prediction, _ = run(toolset, model, READS)

    assert prediction.error is not None
    assert prediction.error.message == "RuntimeError: model overloaded"
    assert prediction.error.body is not None
    kept = json.loads(prediction.error.body)
    assert [call["tool"] for call in kept["tool_calls"]] == ["get_customer"]


def test_a_server_that_does_not_answer_fails_to_open(tmp_path: Path) -> None:
    with socket.socket() as placeholder:  # a port nothing listens on
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        toolset = McpToolset(f"http://127.0.0.1:{port}/mcp", connect_timeout=5)
        with pytest.raises(ToolsetError, match="cannot list its tools"):
            toolset.open()


@pytest.mark.parametrize(("options", "message"), [
    ({"max_steps": 0}, "max_steps: expected a positive whole number, got 0"),
    ({"max_calls": 1.5}, "max_calls: expected a positive whole number, got 1.5"),
])
def test_a_bad_budget_names_its_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Budget(**options)


def test_a_server_that_is_neither_url_nor_command_names_the_key() -> None:
    with pytest.raises(ConfigError, match="server: expected an http"):
        McpToolset("crm.example.com")
    with pytest.raises(ConfigError, match="server: expected a non-empty command"):
        McpToolset([])


def test_a_configured_agent_runs_over_stdio(servers: Servers) -> None:
    record = servers.directory / "configured.jsonl"
    config = parse_config({"version": 1, "candidate": {
        "kind": "agent", "model": "tests.candidates.agent_model:refund",
        "tools": {"command": [sys.executable, str(SERVER), str(record), "stdio"]},
        "allow": ["get_customer", "get_orders", "issue_refund"],
        "system": "You handle refund requests.",
        "user": '{"customer_id": "{{ payload.customer_id }}"}',
        "max_steps": 4, "call_timeout_s": 5,
    }})
    [spec] = config.all_candidates()
    candidate = build_candidate(spec)
    assert candidate.name == "tests.candidates.agent_model:refund"
    assert candidate.version is not None and candidate.version.startswith("fp-")
    with candidate:
        predictions = candidate.predict([event("c2")], NOW)
    assert isinstance(candidate, AgentCandidate)
    assert candidate.refused == {
        "issue_refund": "the server marks it as not read-only (readOnlyHint: false)"}

    [prediction] = predictions
    assert received(record) == [
        {"tool": "get_customer", "arguments": {"customer_id": "c2"}},
        {"tool": "get_orders", "arguments": {"order_id": "o7"}},
    ]
    assert prediction.output["actions"] == [
        {"tool": "issue_refund", "arguments": {"order_id": "o7", "amount": 12.5},
         "id": "call_3_0"}]


@pytest.mark.parametrize(("tools", "message"), [
    ({"command": ["x"], "url": "http://127.0.0.1:1/mcp"},
     "candidate.agent.tools: give exactly one of command"),
    ({}, "candidate.agent.tools: give exactly one of command"),
    ({"url": "crm.internal"}, r"candidate.agent.tools.url"),
])
def test_a_bad_agent_configuration_names_the_key(tools: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"version": 1, "candidate": {
            "kind": "agent", "model": "tests.candidates.agent_model:refund", "tools": tools,
            "user": "{{ payload.customer_id }}"}})


def test_a_malformed_turn_is_a_model_error_and_runs_nothing(servers: Servers) -> None:
    toolset, record = servers.toolset("http")
    model = Scripted([Turn(None, (ToolCall("get_customer", ["c1"]),))])  # type: ignore[arg-type]
    prediction, _ = run(toolset, model, READS)

    assert prediction.error is not None
    assert "tool_calls[0] is not a call of a named tool" in prediction.error.message
    assert received(record) == []
