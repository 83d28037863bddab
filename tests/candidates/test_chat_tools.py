"""The chat candidate with tools, against a real OpenAI-compatible server on 127.0.0.1
that answers with tool_calls: the tools go out with the request, the calls come back as
proposed actions, and every call that is not a valid one is a violation with its reason."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shadow.candidates import ChatCandidate, build_candidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.config.file import parse_config
from shadow.core.errors import ConfigError
from shadow.core.models import ErrorKind, Event, Prediction
from shadow.pipeline.runner import Pipeline
from shadow.store.database import Store
from shadow.testing import ListSource
from tests.clock import SteppingClock
from tests.http_server import Reply, Request, TestServer

NOW = datetime(2024, 5, 1, tzinfo=UTC)
REFUND_PARAMETERS = {
    "type": "object",
    "properties": {"amount": {"type": "number", "minimum": 0},
                   "reason": {"type": "string", "enum": ["late", "damaged"]}},
    "required": ["amount"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "issue_refund", "description": "Refund an order",
                                      "parameters": REFUND_PARAMETERS}},
    {"type": "function", "function": {
        "name": "send_reply", "parameters": {
            "type": "object", "properties": {"body": {"type": "string"}}, "required": ["body"]}}},
    {"type": "function", "function": {"name": "lookup_order"}},
]


def call(ident: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": ident, "type": "function", "function": {"name": name, "arguments": arguments}}


# What the server answers, by the subject of the ticket: (content, tool_calls).
SCRIPT: dict[str, tuple[str | None, list[Any] | None]] = {
    "single": (None, [call("call_1", "issue_refund", '{"amount": 20, "reason": "late"}')]),
    "parallel": (None, [call("call_1", "issue_refund", '{"amount": 35.5}'),
                        call("call_2", "send_reply", '{"body": "Refunded"}'),
                        call("call_3", "lookup_order", "")]),
    "malformed": (None, [call("call_1", "issue_refund", '{"amount": 20,'),
                         call("call_2", "send_reply", '["Refunded"]')]),
    "unknown": (None, [call("call_1", "delete_account", '{"customer": "c7"}'),
                       call("call_2", "send_reply", '{"body": "Done"}'),
                       {"id": "call_3", "type": "function", "function": {"arguments": "{}"}}]),
    "offschema": (None, [call("call_1", "issue_refund", '{"amount": "twenty"}'),
                         call("call_2", "issue_refund", '{"amount": 5, "reason": "bored"}'),
                         call("call_3", "issue_refund", '{"amount": 5}')]),
    "talkative": ("I have refunded you.",
                  [call("call_1", "issue_refund", '{"amount": 12}')]),
    "structured": (json.dumps({"category": "billing", "confidence": 0.9}),
                   [call("call_1", "issue_refund", '{"amount": 12}')]),
    "chatty": ("Could you send the order number?", None),
    "silent": (None, None),
}


def chat_server(request: Request) -> Reply:
    user = request.json()["messages"][-1]["content"]
    content, calls = SCRIPT[user.removeprefix("Ticket: ")]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls is not None:
        message["tool_calls"] = calls
    return Reply(body={
        "id": "chatcmpl-1", "object": "chat.completion", "model": "agent-model",
        "choices": [{"index": 0, "message": message,
                     "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
    })


@pytest.fixture
def server() -> Iterator[TestServer]:
    with TestServer(chat_server) as running:
        yield running


def settings(server: TestServer, **overrides: Any) -> dict[str, Any]:
    return {"kind": "chat", "base_url": server.url + "/v1", "model": "gpt-test",
            "user": "Ticket: {{ payload.subject }}", "api_key_env": None,
            "output": "text", "tools": TOOLS, "retry": {"max_attempts": 1}, **overrides}


def candidate(server: TestServer, **overrides: Any) -> ChatCandidate:
    config = parse_config({"candidate": settings(server, **overrides)})
    built = build_candidate(config.candidate)  # type: ignore[arg-type]
    assert isinstance(built, ChatCandidate)
    return built


def event(subject: str) -> Event:
    return Event(event_id=subject, key=subject, occurred_at=NOW, payload={"subject": subject})


def answer(server: TestServer, subject: str, **overrides: Any) -> Prediction:
    with candidate(server, **overrides) as chat:
        (prediction,) = chat.predict([event(subject)], NOW)
    return prediction


# -- the request -----------------------------------------------------------------------


def test_the_request_carries_the_tools_the_choice_and_parallel_calls(server: TestServer) -> None:
    answer(server, "single", tool_choice="required", parallel_tool_calls=False)

    body = server.requests[0].json()
    assert body["tools"] == [
        {"type": "function", "function": {"name": "issue_refund",
                                          "description": "Refund an order",
                                          "parameters": REFUND_PARAMETERS}},
        TOOLS[1],
        {"type": "function", "function": {"name": "lookup_order",
                                          "parameters": {"type": "object"}}},
    ]
    assert body["tool_choice"] == "required"
    assert body["parallel_tool_calls"] is False


@pytest.mark.parametrize("choice", ["send_reply",
                                    {"type": "function", "function": {"name": "send_reply"}}])
def test_a_named_tool_choice_is_sent_in_the_api_object_form(
    server: TestServer, choice: Any
) -> None:
    answer(server, "single", tool_choice=choice)

    assert server.requests[0].json()["tool_choice"] == {
        "type": "function", "function": {"name": "send_reply"}}


def test_without_tools_nothing_about_tools_is_sent(server: TestServer) -> None:
    answer(server, "chatty", tools=[])

    body = server.requests[0].json()
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(body)


# -- the answer ------------------------------------------------------------------------


def test_a_single_tool_call_is_a_proposed_action(server: TestServer) -> None:
    p = answer(server, "single")

    assert p.error is None and p.violations == ()
    assert p.output == {"actions": [
        {"tool": "issue_refund", "arguments": {"amount": 20, "reason": "late"}, "id": "call_1"}]}
    assert (p.prompt_tokens, p.completion_tokens, p.model) == (50, 10, "agent-model")


def test_parallel_tool_calls_are_actions_in_their_order(server: TestServer) -> None:
    p = answer(server, "parallel")

    assert p.violations == ()
    assert p.output == {"actions": [
        {"tool": "issue_refund", "arguments": {"amount": 35.5}, "id": "call_1"},
        {"tool": "send_reply", "arguments": {"body": "Refunded"}, "id": "call_2"},
        {"tool": "lookup_order", "arguments": {}, "id": "call_3"},
    ]}


def test_malformed_arguments_are_violations_and_the_calls_are_kept(server: TestServer) -> None:
    p = answer(server, "malformed")

    assert p.error is None
    assert p.output["actions"] == []
    assert p.output["invalid_tool_calls"] == SCRIPT["malformed"][1]
    first, second = p.violations
    assert first.startswith("tool_call:invalid_arguments issue_refund (call_1): "
                            "the arguments are not JSON: ")
    assert first.endswith(" (tool_calls[0])")
    assert second == ("tool_call:invalid_arguments send_reply (call_2): the arguments are a "
                      "JSON list, not an object (tool_calls[1])")


def test_an_unknown_tool_is_a_violation_and_the_valid_calls_stay(server: TestServer) -> None:
    p = answer(server, "unknown")

    assert p.output["actions"] == [
        {"tool": "send_reply", "arguments": {"body": "Done"}, "id": "call_2"}]
    calls = SCRIPT["unknown"][1]
    assert calls is not None
    assert p.output["invalid_tool_calls"] == [calls[0], calls[2]]
    assert p.violations == (
        "tool_call:unknown_tool delete_account (call_1) is not among the tools offered "
        "(tool_calls[0])",
        "tool_call:unknown_tool a call (call_3) names no function (tool_calls[2])",
    )


def test_arguments_off_the_tool_schema_are_violations(server: TestServer) -> None:
    p = answer(server, "offschema")

    assert p.output["actions"] == [
        {"tool": "issue_refund", "arguments": {"amount": 5}, "id": "call_3"}]
    assert p.violations == (
        "tool_call:invalid_arguments issue_refund (call_1): invalid at amount: "
        "'twenty' is not of type 'number' (tool_calls[0])",
        "tool_call:invalid_arguments issue_refund (call_2): invalid at reason: "
        "'bored' is not one of ['late', 'damaged'] (tool_calls[1])",
    )


def test_content_and_tool_calls_together(server: TestServer) -> None:
    text = answer(server, "talkative")
    structured = answer(server, "structured", output="json")

    refund = {"tool": "issue_refund", "arguments": {"amount": 12}, "id": "call_1"}
    assert text.output == {"reply": "I have refunded you.", "actions": [refund]}
    assert structured.output == {"category": "billing", "confidence": 0.9, "actions": [refund]}
    assert structured.confidence == 0.9


def test_content_alone_proposes_no_action_and_an_empty_message_is_an_error(
    server: TestServer
) -> None:
    chatty = answer(server, "chatty")
    silent = answer(server, "silent")

    assert chatty.output == {"reply": "Could you send the order number?", "actions": []}
    assert silent.output is None and silent.error is not None
    assert silent.error.kind is ErrorKind.MALFORMED_RESPONSE
    assert silent.error.type == "NoContent"


def test_tool_calls_nobody_offered_are_violations_too(server: TestServer) -> None:
    p = answer(server, "single", tools=[])

    assert p.output["actions"] == []
    assert p.violations == ("tool_call:unknown_tool issue_refund (call_1) is not among the "
                            "tools offered (tool_calls[0])",)


# -- stored, with the configured checks --------------------------------------------------


def test_violations_of_calls_and_of_action_checks_are_stored_together(
    server: TestServer, tmp_path: Path
) -> None:
    subjects = ["single", "parallel", "unknown", "offschema"]
    clock = SteppingClock(NOW, timedelta(seconds=1))
    chat = candidate(server, name="agent", version="1", checks=[
        {"kind": "action", "name": "refund_cap", "tool": "issue_refund", "argument": "amount",
         "max": 30}])
    with Store(tmp_path / "s.duckdb") as store, chat:
        Pipeline(store, chat, build_comparator(ExactSpec()), now=clock).run([ListSource([
            {"event_id": s, "key": s, "occurred_at": NOW.isoformat(), "payload": {"subject": s}}
            for s in subjects])])
        rows = dict(store.db.execute(
            "SELECT event_id, violations FROM predictions ORDER BY event_id").fetchall())

    assert rows == {
        "single": None,
        "parallel": ["refund_cap:max issue_refund.amount=35.5 is more than 30 (actions[0])"],
        "unknown": [
            "tool_call:unknown_tool delete_account (call_1) is not among the tools offered "
            "(tool_calls[0])",
            "tool_call:unknown_tool a call (call_3) names no function (tool_calls[2])"],
        "offschema": [
            "tool_call:invalid_arguments issue_refund (call_1): invalid at amount: "
            "'twenty' is not of type 'number' (tool_calls[0])",
            "tool_call:invalid_arguments issue_refund (call_2): invalid at reason: "
            "'bored' is not one of ['late', 'damaged'] (tool_calls[1])"],
    }


# -- configuration errors ----------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    ({"tools": [{"type": "function", "function": {"parameters": {}}}]},
     "candidate.tools.0.function.name: required setting is missing"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]},
     "candidate.tools.0.function.name: expected a match of"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
     "candidate.tools.0.function.parameters: not a valid JSON schema"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]},
     "candidate.tools.0.type: input should be 'function'"),
    ({"tools": [TOOLS[1], TOOLS[1]]},
     "candidate.tools: tool names must be unique; repeated: send_reply"),
    ({"tool_choice": "wipe_disk"},
     "candidate.tool_choice: names the tool 'wipe_disk', which is not among the tools"),
    ({"tool_choice": {"type": "function", "function": {"name": "wipe_disk"}}},
     "candidate.tool_choice: names the tool 'wipe_disk'"),
    ({"tools": [], "tool_choice": "auto"},
     "candidate.tool_choice: tool_choice needs tools to choose from"),
    ({"tools": [], "parallel_tool_calls": True},
     "candidate.parallel_tool_calls: parallel_tool_calls needs tools"),
])
def test_config_errors_name_the_key(
    server: TestServer, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"candidate": settings(server, **overrides)})
    assert message in str(caught.value)


def test_the_tools_are_part_of_the_fingerprint(server: TestServer) -> None:
    changes: list[dict[str, Any]] = [
        {}, {"tools": TOOLS[:2]}, {"tool_choice": "required"}, {"parallel_tool_calls": False}]
    versions = {candidate(server, **change).version for change in changes}
    assert len(versions) == 4
    assert candidate(server).version == candidate(server).version
