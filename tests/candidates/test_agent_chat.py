"""An agent's model step as a chat-completions endpoint, and a chat candidate offered an MCP
server's tools: a real OpenAI-compatible server on 127.0.0.1 that answers with tool calls,
and the real MCP server (tests/candidates/mcp_server.py) that records every call it gets."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shadow.candidates import AgentCandidate, ChatCandidate, build_candidate
from shadow.candidates.agent_chat import ChatModelStep, ModelError
from shadow.candidates.mcp_tools import McpToolset
from shadow.config.candidates import ChatModelSpec
from shadow.config.file import parse_config
from shadow.core.errors import ConfigError
from shadow.core.models import Event
from tests.candidates.mcp_server import ORDERS
from tests.candidates.test_agent import SERVER, received
from tests.http_server import Reply, Request, TestServer

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def completion(message: dict[str, Any], **usage: int) -> Reply:
    return Reply(body={"model": "served-model", "choices": [{"index": 0, "message": message}],
                       **({"usage": usage} if usage else {})})


def calling(*calls: tuple[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for i, (name, arguments) in enumerate(calls)]}


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "mcp.jsonl"


def stdio(record: Path) -> list[str]:
    return [sys.executable, str(SERVER), str(record), "stdio"]


def agent(url: str, record: Path, **model: Any) -> AgentCandidate:
    config = parse_config({"version": 1, "candidate": {
        "kind": "agent", "name": "agent",
        "model": {"base_url": url + "/v1", "model": "m", "api_key_env": None, **model},
        "tools": {"command": stdio(record)}, "allow": ["get_customer", "get_orders"],
        "user": '{"customer_id": "{{ payload.customer_id }}"}', "max_steps": 4}})
    built = build_candidate(config.candidate)  # type: ignore[arg-type]
    assert isinstance(built, AgentCandidate)
    return built


def predict(candidate: AgentCandidate | ChatCandidate, customer: str = "c1") -> Any:
    with candidate:
        (prediction,) = candidate.predict(
            [Event(event_id="e1", key="e1", occurred_at=NOW,
                   payload={"customer_id": customer})], NOW)
    return prediction


def scripted(*turns: Callable[[list[dict[str, Any]]], Reply]) -> Callable[[Request], Reply]:
    """Answers the n-th request of a run with the n-th turn (runs counted by their tool
    results, so one script serves every event)."""

    def answer(request: Request) -> Reply:
        messages = request.json()["messages"]
        step = sum(message["role"] == "tool" for message in messages)
        reply: Reply = turns[step](messages)
        return reply

    return answer


def test_the_agent_looks_up_over_the_chat_api_and_proposes_the_write(record: Path) -> None:
    def decide(messages: list[dict[str, Any]]) -> Reply:
        order = json.loads(messages[-1]["content"])
        return completion(calling(("issue_refund", json.dumps(
            {"order_id": order["order_id"], "amount": order["amount"]}))),
            prompt_tokens=30, completion_tokens=5)

    model = scripted(
        lambda _: completion(calling(("get_customer", '{"customer_id": "c1"}')),
                             prompt_tokens=10, completion_tokens=3),
        lambda m: completion(calling(("get_orders", json.dumps(
            {"order_id": json.loads(m[-1]["content"])["last_order"]}))),
            prompt_tokens=20, completion_tokens=4),
        decide)
    with TestServer(model) as server:
        prediction = predict(agent(server.url, record, temperature=0.3, max_tokens=200))
        bodies = [request.json() for request in server.requests]

    assert prediction.error is None
    assert prediction.output["actions"] == [
        {"tool": "issue_refund", "arguments": {"order_id": "o9", "amount": ORDERS["o9"]["amount"]},
         "id": "c0"}]
    assert received(record) == [{"tool": "get_customer", "arguments": {"customer_id": "c1"}},
                                {"tool": "get_orders", "arguments": {"order_id": "o9"}}]
    assert (prediction.prompt_tokens, prediction.completion_tokens) == (60, 12)
    assert prediction.model == "served-model"
    # Every step is asked with every tool, writes included, and the conversation so far.
    assert [len(body["messages"]) for body in bodies] == [1, 3, 5]
    assert all((b["model"], b["temperature"], b["max_tokens"]) == ("m", 0.3, 200) for b in bodies)
    names = {tool["function"]["name"] for tool in bodies[0]["tools"]}
    assert {"get_customer", "issue_refund", "archive_customer"} <= names
    assert bodies[2]["messages"][3] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c0", "type": "function",
         "function": {"name": "get_orders", "arguments": '{"order_id":"o9"}'}}]}


@pytest.mark.parametrize(("arguments", "violation"), [
    ('{"order_id": ', "tool_call:invalid_arguments issue_refund (c0): the arguments are not JSON"),
    ('["o9"]', "tool_call:invalid_arguments issue_refund (c0): the arguments are a JSON list, "
               "not an object"),
    ('{"order_id": "o9"}', "tool_call:invalid_arguments issue_refund (c0): invalid at (root): "
                           "'amount' is a required property"),
])
def test_a_proposal_that_is_not_a_valid_call_is_a_violation_and_never_runs(
    record: Path, arguments: str, violation: str
) -> None:
    with TestServer(lambda _: completion(calling(("issue_refund", arguments)))) as server:
        prediction = predict(agent(server.url, record))

    assert prediction.error is None
    assert prediction.output["actions"] == []
    (found,) = prediction.violations
    assert found.startswith(violation) and found.endswith("(step 1)")
    assert prediction.output["invalid_tool_calls"][0]["violation"] == found.removesuffix(
        " (step 1)")
    assert received(record) == []


def test_an_allowlisted_read_with_unreadable_arguments_is_not_run(record: Path) -> None:
    with TestServer(lambda _: completion(calling(("get_customer", "{oops")))) as server:
        prediction = predict(agent(server.url, record))

    assert prediction.output["stop"] == "proposed"
    assert prediction.violations[0].startswith(
        "tool_call:invalid_arguments get_customer (c0): the arguments are not JSON")
    assert received(record) == []


def test_a_tool_the_server_does_not_offer_is_an_unknown_tool(record: Path) -> None:
    with TestServer(lambda _: completion(calling(("wire_money", "{}")))) as server:
        prediction = predict(agent(server.url, record))

    assert prediction.violations == ("tool_call:unknown_tool wire_money (c0) is not among the "
                                     "tools offered (step 1)",)


def test_server_errors_are_retried_and_a_refusal_is_not(record: Path) -> None:
    answers = iter([Reply(status=503), completion({"role": "assistant", "content": "Done."}),
                    Reply(status=401)])
    waits: list[float] = []
    with TestServer(lambda _: next(answers)) as server:
        spec = ChatModelSpec(base_url=server.url + "/v1", model="m", api_key_env=None)
        step = ChatModelStep(spec, sleep=waits.append, uniform=lambda low, high: high)
        turn = step([{"role": "user", "content": "hi"}], [])
        with pytest.raises(ModelError, match=r"answered 401 \(refused: check base_url, model "
                                             r"and api_key_env\) \(after 1 attempt\(s\)\)"):
            step([{"role": "user", "content": "hi"}], [])
        asked = len(server.requests)

    assert (turn.content, turn.tool_calls) == ("Done.", ())
    assert waits == [0.5] and asked == 3


def test_a_reply_with_nothing_in_it_fails_the_run_with_the_calls_made_before(
    record: Path,
) -> None:
    model = scripted(lambda _: completion(calling(("get_customer", '{"customer_id": "c2"}'))),
                     lambda _: completion({"role": "assistant", "content": None}))
    with TestServer(model) as server:
        prediction = predict(agent(server.url, record), "c2")

    assert prediction.error is not None
    assert "neither choices[0].message.content text nor a list of tool_calls" in (
        prediction.error.message)
    assert json.loads(prediction.error.body)["tool_calls"][0]["tool"] == "get_customer"


def test_an_unset_api_key_variable_names_the_key(record: Path, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with TestServer(lambda _: completion({"role": "assistant", "content": "x"})) as server:
        prediction = predict(agent(server.url, record, api_key_env="NO_SUCH_KEY"))

    assert prediction.error is not None
    assert "api_key_env names the environment variable NO_SUCH_KEY" in prediction.error.message


@pytest.mark.parametrize(("model", "message"), [
    ({"base_url": "ftp://x", "model": "m"}, r"candidate.agent.model.ChatModelSpec.base_url"),
    ({"base_url": "http://x", "model": "m", "timeout_s": 0}, r"model.ChatModelSpec.timeout_s"),
    ({"base_url": "http://x"}, r"candidate.agent.model.ChatModelSpec.model"),
])
def test_a_bad_chat_model_names_its_key(model: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"version": 1, "candidate": {
            "kind": "agent", "model": model, "tools": {"url": "http://127.0.0.1:1/mcp"},
            "user": "x"}})


# -- a chat candidate offered an MCP server's tools -----------------------------------


def chat(url: str, record: Path, **overrides: Any) -> ChatCandidate:
    config = parse_config({"candidate": {
        "kind": "chat", "base_url": url + "/v1", "model": "m", "api_key_env": None,
        "user": '{"customer_id": "{{ payload.customer_id }}"}', "output": "text",
        "tools": {"command": stdio(record)}, "retry": {"max_attempts": 1}, **overrides}})
    built = build_candidate(config.candidate)  # type: ignore[arg-type]
    assert isinstance(built, ChatCandidate)
    return built


def test_a_chat_candidate_offers_the_servers_tools_and_runs_none(record: Path) -> None:
    with McpToolset(stdio(record.with_name("listing.jsonl"))) as toolset:
        listed = {tool.name: tool.input_schema for tool in toolset.tools}
    reply = calling(("get_customer", '{"customer_id": "c1"}'),
                    ("issue_refund", '{"order_id": "o9", "amount": "all"}'))
    with TestServer(lambda _: completion(reply)) as server:
        prediction = predict(chat(server.url, record, tool_choice="required"))
        body = server.requests[0].json()

    assert {t["function"]["name"]: t["function"]["parameters"] for t in body["tools"]} == listed
    assert body["tool_choice"] == "required"
    assert prediction.output["actions"] == [
        {"tool": "get_customer", "arguments": {"customer_id": "c1"}, "id": "c0"}]
    (violation,) = prediction.violations
    assert violation.startswith("tool_call:invalid_arguments issue_refund (c1): invalid at "
                                "amount:")
    assert received(record) == []  # not even the read-only lookup ran


def test_a_tool_choice_the_server_does_not_offer_fails_at_open(record: Path) -> None:
    candidate = chat("http://127.0.0.1:1", record, tool_choice="wire_money")
    with pytest.raises(ConfigError, match="tool_choice: names the tool 'wire_money', which "
                                          "the MCP server does not offer"):
        candidate.open()
    candidate.close()
