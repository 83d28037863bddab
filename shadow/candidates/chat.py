"""The chat candidate: a prompt against an OpenAI-compatible chat-completions API.

OpenAI, Azure OpenAI, vLLM, Ollama, LiteLLM and most gateways speak this
protocol. The system and user prompts are templates filled from the event;
with a JSON schema the server is asked for structured output, and the reply is
checked against the schema here too, since not every server enforces it.
Tokens come from the response's ``usage``, the cost from the configured prices,
and the model is the one the server says answered.
"""

from __future__ import annotations

from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from shadow.candidates.http import canonical
from shadow.candidates.remote import Attempt, RemoteCandidate, expand, failure
from shadow.config.candidates import ChatCandidateSpec
from shadow.core.models import ErrorKind, Event
from shadow.core.paths import MISSING, get_path
from shadow.core.templates import render


class ChatCandidate(RemoteCandidate):
    spec: ChatCandidateSpec

    def __init__(self, spec: ChatCandidateSpec, **options: Any) -> None:
        super().__init__(spec, **options)
        self.url = spec.base_url.rstrip("/") + "/chat/completions"
        self._validator = (
            Draft202012Validator(spec.json_schema) if spec.json_schema is not None else None
        )

    @classmethod
    def from_spec(cls, spec: ChatCandidateSpec) -> ChatCandidate:
        return cls(spec)

    def extra_headers(self) -> dict[str, str]:
        if self.spec.api_key_env is None:
            return {}
        key = expand("${" + self.spec.api_key_env + "}", "api_key_env")
        return {"authorization": f"Bearer {key}"}

    def request(self, event: Event) -> Any:
        context = canonical(event)
        messages = []
        if self.spec.system is not None:
            messages.append({"role": "system", "content": render(self.spec.system, context)})
        messages.append({"role": "user", "content": render(self.spec.user, context)})
        body: dict[str, Any] = {"model": self.spec.model, "messages": messages}
        if self.spec.temperature is not None:
            body["temperature"] = self.spec.temperature
        if self.spec.max_tokens is not None:
            body["max_tokens"] = self.spec.max_tokens
        if self.spec.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": self.spec.json_schema, "strict": True},
            }
        return body

    def read(self, answer: Any, status: int, ttfb: float, raw: bytes) -> Attempt:
        usage = self._usage(answer)
        content = get_path(answer, "choices.0.message.content")
        if not isinstance(content, str):
            return _with(failure(ErrorKind.MALFORMED_RESPONSE, "NoContent",
                                 "response has no choices[0].message.content text",
                                 status=status, ttfb=ttfb, raw=raw), usage)
        if self.spec.output == "text":
            return Attempt(output=content, status=status, ttfb_ms=ttfb, **usage)
        try:
            output = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            return _with(failure(ErrorKind.MALFORMED_RESPONSE, "NotJSON",
                                 f"the reply is not JSON: {exc}",
                                 status=status, ttfb=ttfb, raw=content.encode()), usage)
        if self._validator is not None:
            error = best_match(self._validator.iter_errors(output))
            if error is not None:
                where = "/".join(str(part) for part in error.absolute_path) or "(root)"
                return _with(failure(ErrorKind.SCHEMA_MISMATCH, "SchemaMismatch",
                                     f"the reply does not fit the schema at {where}: "
                                     f"{error.message}",
                                     status=status, ttfb=ttfb, raw=content.encode()), usage)
        return Attempt(output=output, status=status, ttfb_ms=ttfb, **usage)

    def _usage(self, answer: Any) -> dict[str, Any]:
        prompt = _count(get_path(answer, "usage.prompt_tokens"))
        completion = _count(get_path(answer, "usage.completion_tokens"))
        model = get_path(answer, "model")
        cost = None
        prices = self.spec.prices
        if prices is not None and prompt is not None and completion is not None:
            cost = (prompt * prices.prompt_per_1k + completion * prices.completion_per_1k) / 1000
        return {"prompt_tokens": prompt, "completion_tokens": completion, "cost": cost,
                "model": model if isinstance(model, str) else None}


def _count(value: Any) -> int | None:
    if value is MISSING or isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _with(attempt: Attempt, usage: dict[str, Any]) -> Attempt:
    # A reply that cannot be used still cost its tokens: keep them with the error.
    return Attempt(error=attempt.error, status=attempt.status, ttfb_ms=attempt.ttfb_ms,
                   **usage)
