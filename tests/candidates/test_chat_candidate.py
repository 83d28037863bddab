"""The chat candidate against a minimal OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from shadow.candidates import ChatCandidate
from shadow.config.candidates import ChatCandidateSpec, PricesSpec, RetrySpec
from shadow.core.errors import ConfigError
from shadow.core.models import ErrorKind, Event
from tests.http_server import Reply, Request, TestServer

NOW = datetime(2024, 5, 1, tzinfo=UTC)
SERVED_MODEL = "triage-model-2024-05-01"
SCHEMA = {
    "type": "object",
    "properties": {"category": {"type": "string", "enum": ["billing", "login", "bug"]}},
    "required": ["category"],
    "additionalProperties": False,
}


def chat_server(request: Request) -> Reply:
    """Answers like the API: the reply depends on the subject, usage counts words."""
    body = request.json()
    user = body["messages"][-1]["content"]
    prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
    if "gibberish" in user:
        content = "I think it is billing"
    elif "offschema" in user:
        content = json.dumps({"category": "refunds"})
    else:
        content = json.dumps({"category": "login" if "password" in user else "billing"})
    return Reply(body={
        "id": "chatcmpl-1", "object": "chat.completion", "model": SERVED_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content),
                  "total_tokens": prompt_tokens + len(content)},
    })


@pytest.fixture
def server() -> Iterator[TestServer]:
    with TestServer(chat_server) as running:
        yield running


def event(i: int, subject: str) -> Event:
    return Event(event_id=f"e{i}", key=f"t{i}", occurred_at=NOW,
                 segment={"lang": "en"}, payload={"subject": subject, "body": "Hello"})


def spec(server: TestServer, **overrides: Any) -> ChatCandidateSpec:
    settings: dict[str, Any] = {
        "kind": "chat", "base_url": server.url + "/v1", "model": "gpt-test",
        "system": "You triage support tickets. Answer in JSON.",
        "user": "Subject: {{ payload.subject }} ({{ segment.lang }})",
        "json_schema": SCHEMA, "api_key_env": "TEST_CHAT_KEY",
        "prices": PricesSpec(prompt_per_1k=0.5, completion_per_1k=1.5),
        "retry": RetrySpec(max_attempts=1),
    }
    return ChatCandidateSpec(**{**settings, **overrides})


def predict(candidate: ChatCandidate, events: list[Event]) -> list[Any]:
    with candidate:
        return candidate.predict(events, NOW)


def test_prompts_are_filled_from_the_event_and_sent_with_the_schema(
    server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_CHAT_KEY", "sk-test-secret")

    predict(ChatCandidate(spec(server)), [event(1, "Cannot reset password")])

    (request,) = server.requests
    body = request.json()
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test-secret"
    assert body["model"] == "gpt-test"
    assert body["messages"] == [
        {"role": "system", "content": "You triage support tickets. Answer in JSON."},
        {"role": "user", "content": "Subject: Cannot reset password (en)"},
    ]
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA


def test_outputs_tokens_cost_and_served_model_are_recorded(
    server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_CHAT_KEY", "sk-test-secret")
    subjects = ["Cannot reset password", "Invoice twice", "Refund please", "password expired"]

    predictions = predict(ChatCandidate(spec(server)),
                          [event(i, s) for i, s in enumerate(subjects)])

    assert [p.output for p in predictions] == [
        {"category": "login" if "password" in s else "billing"} for s in subjects
    ]
    assert all(p.error is None and p.model == SERVED_MODEL for p in predictions)
    sent = {r.json()["messages"][1]["content"]: r for r in server.requests}
    for p, subject in zip(predictions, subjects, strict=True):
        messages = sent[f"Subject: {subject} (en)"].json()["messages"]
        prompt = sum(len(m["content"].split()) for m in messages)
        completion = len(json.dumps({"category": p.output["category"]}))
        assert (p.prompt_tokens, p.completion_tokens) == (prompt, completion)
        assert p.cost == pytest.approx((prompt * 0.5 + completion * 1.5) / 1000)


def test_a_reply_off_the_schema_is_a_schema_mismatch_with_the_reply_kept(
    server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_CHAT_KEY", "k")

    (prediction,) = predict(ChatCandidate(spec(server)), [event(1, "offschema")])

    assert prediction.error is not None
    assert prediction.error.kind is ErrorKind.SCHEMA_MISMATCH
    assert "category" in prediction.error.message
    assert prediction.error.body == json.dumps({"category": "refunds"})
    assert prediction.prompt_tokens is not None  # the tokens were spent all the same


def test_a_reply_that_is_not_json_is_malformed(
    server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_CHAT_KEY", "k")

    (prediction,) = predict(ChatCandidate(spec(server)), [event(1, "gibberish")])

    assert prediction.error is not None
    assert prediction.error.kind is ErrorKind.MALFORMED_RESPONSE
    assert prediction.error.body == "I think it is billing"
    assert prediction.attempts == 1


def test_text_output_keeps_the_reply_as_it_is(
    server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_CHAT_KEY", "k")

    (prediction,) = predict(ChatCandidate(spec(server, output="text", json_schema=None)),
                            [event(1, "gibberish")])

    assert prediction.output == "I think it is billing"
    assert "response_format" not in server.requests[0].json()


def test_the_api_key_appears_in_no_prediction(
    server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_CHAT_KEY", "sk-very-secret-value")

    predictions = predict(ChatCandidate(spec(server)),
                          [event(1, "password"), event(2, "offschema"), event(3, "gibberish")])

    assert "sk-very-secret-value" not in repr(predictions)


def test_a_missing_api_key_variable_is_a_configuration_error(
    server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_CHAT_KEY", raising=False)

    with pytest.raises(ConfigError, match="TEST_CHAT_KEY"):
        ChatCandidate(spec(server)).open()
