"""An agent's model step as a chat-completions endpoint (``model: {base_url, model}``).

Each step POSTs the conversation so far with every tool of the MCP server offered as a
function (``{type: function, function: {name, description, parameters}}``, the
server's input schema as the parameters), and reads the reply's ``content`` and
``tool_calls``. A call whose arguments are not a JSON object is kept as a call with a
``problem``: the agent never runs it, and it ends the run as an invalid proposal
(:mod:`shadow.candidates.agent`). Tokens and the model that answered come back with the
turn, so a run's cost is the sum over its steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from shadow.candidates.base import truncate
from shadow.candidates.mcp_tools import Tool
from shadow.candidates.remote import expand
from shadow.candidates.turns import Message, ToolCall, Turn
from shadow.config.candidates import ChatModelSpec
from shadow.core.models import utc_now
from shadow.core.paths import MISSING, get_path
from shadow.core.posting import PostError, post_json
from shadow.core.retry import RetryPolicy, Uniform

__all__ = ["ChatModelStep", "ModelError", "functions"]

_BACKOFF_S, _MAX_BACKOFF_S, _MAX_RETRY_AFTER_S = 0.5, 8.0, 60.0
_MAX_PROBLEM = 200


class ModelError(Exception):
    """The model could not be asked, or its reply is not a turn."""


def functions(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """The tools as chat-completions function definitions, in the server's order."""
    out = []
    for tool in tools:
        function: dict[str, Any] = {"name": tool.name, "parameters": dict(tool.input_schema)}
        if tool.description:
            function["description"] = tool.description
        out.append({"type": "function", "function": function})
    return out


class ChatModelStep:
    """``(messages, tools) -> Turn`` against an OpenAI-compatible endpoint.

    ``parameters`` is what every request carries besides messages and tools (the model,
    temperature, ...), kept with each prediction's request. ``sleep``, ``now`` and
    ``uniform`` are for tests.
    """

    def __init__(self, spec: ChatModelSpec, *, sleep: Callable[[float], None] = time.sleep,
                 now: Callable[[], datetime] = utc_now, uniform: Uniform | None = None) -> None:
        self._spec = spec
        self.url = spec.base_url.rstrip("/") + "/chat/completions"
        self._retry = RetryPolicy(max_attempts=spec.max_attempts, base_s=_BACKOFF_S,
                                  max_backoff_s=_MAX_BACKOFF_S,
                                  max_retry_after_s=_MAX_RETRY_AFTER_S)
        self._sleep, self._now, self._uniform = sleep, now, uniform
        parameters: dict[str, Any] = {"model": spec.model}
        if spec.temperature is not None:
            parameters["temperature"] = spec.temperature
        if spec.max_tokens is not None:
            parameters["max_tokens"] = spec.max_tokens
        if spec.parallel_tool_calls is not None:
            parameters["parallel_tool_calls"] = spec.parallel_tool_calls
        self.parameters: Mapping[str, Any] = parameters

    def body(self, messages: Sequence[Message], tools: Sequence[Tool]) -> dict[str, Any]:
        """The request for one step."""
        body = {**self.parameters, "messages": [dict(message) for message in messages]}
        if tools:
            body["tools"] = functions(tools)
        return body

    def __call__(self, messages: Sequence[Message], tools: Sequence[Tool]) -> Turn:
        """The model's next turn.

        Raises:
            ModelError: the call failed after its retries, or the reply has neither
                content nor tool calls.
            ConfigError: ``api_key_env`` names a variable that is not set.
        """
        headers = {}
        if self._spec.api_key_env is not None:
            key = expand("${" + self._spec.api_key_env + "}", "api_key_env")
            headers["authorization"] = f"Bearer {key}"
        try:
            answer = post_json(self.url, self.body(messages, tools), headers=headers,
                               timeout_s=self._spec.timeout_s, retry=self._retry,
                               sleep=self._sleep, now=self._now, uniform=self._uniform,
                               refused_hint="refused: check base_url, model and api_key_env")
        except PostError as exc:
            raise ModelError(str(exc)) from exc
        return self._turn(answer)

    def _turn(self, answer: Any) -> Turn:
        content = get_path(answer, "choices.0.message.content")
        raw_calls = get_path(answer, "choices.0.message.tool_calls")
        if content is MISSING:
            content = None
        if raw_calls in (MISSING, None):
            raw_calls = []
        if (content is not None and not isinstance(content, str)) or not isinstance(
                raw_calls, list) or (not raw_calls and not content):
            raise ModelError("the reply has neither choices[0].message.content text nor a "
                             "list of tool_calls")
        calls = tuple(_call(raw, index) for index, raw in enumerate(raw_calls))
        prompt, completion = (_count(get_path(answer, f"usage.{side}_tokens"))
                              for side in ("prompt", "completion"))
        cost = None
        prices = self._spec.prices
        if prices is not None and prompt is not None and completion is not None:
            cost = (prompt * prices.prompt_per_1k + completion * prices.completion_per_1k) / 1000
        model = get_path(answer, "model")
        return Turn(content or None, calls, prompt_tokens=prompt, completion_tokens=completion,
                    cost=cost, model=model if isinstance(model, str) else None)


def _call(raw: Any, index: int) -> ToolCall:
    """One of the reply's tool calls; what cannot be read is a call with a problem."""
    ident = get_path(raw, "id")
    ident = ident if isinstance(ident, str) and ident else None
    name = get_path(raw, "function.name")
    if not isinstance(name, str) or not name:
        return ToolCall("", {}, ident, problem=f"tool_calls[{index}] names no function")
    arguments = get_path(raw, "function.arguments")
    if isinstance(arguments, dict):
        return ToolCall(name, arguments, ident)
    if arguments in (MISSING, None, ""):
        return ToolCall(name, {}, ident)
    if not isinstance(arguments, str):
        return ToolCall(name, {}, ident, problem=f"the arguments are a "
                                                 f"{type(arguments).__name__}, not JSON text")
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError as exc:
        return ToolCall(name, {}, ident, problem="the arguments are not JSON: "
                                                 f"{truncate(str(exc), _MAX_PROBLEM)}")
    if not isinstance(parsed, dict):
        return ToolCall(name, {}, ident, problem=f"the arguments are a JSON "
                                                 f"{type(parsed).__name__}, not an object")
    return ToolCall(name, parsed, ident)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value
