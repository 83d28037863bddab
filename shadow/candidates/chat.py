"""The chat candidate: a prompt against an OpenAI-compatible chat-completions API.

OpenAI, Azure OpenAI, vLLM, Ollama, LiteLLM and most gateways speak this
protocol. The system and user prompts are templates filled from the event;
with a JSON schema the server is asked for structured output, and the reply is
checked against the schema here too, since not every server enforces it.
Tokens come from the response's ``usage``, the cost from the configured prices,
and the model is the one the server says answered.

With ``tools`` the functions are offered to the model (with ``tool_choice`` and
``parallel_tool_calls`` when set), and its ``tool_calls`` become proposed actions
(:mod:`shadow.core.actions`), never executed. The output is then an object::

    {"actions": [{"tool": "issue_refund", "arguments": {"amount": 20}, "id": "call_1"}],
     "reply": "I have refunded you."}

``reply`` holding the message content when there is one (with ``output: json``, the
keys of a JSON object reply are kept at the top instead, unless it has its own
``actions``). A call is an action when it names an offered tool and its arguments
parse as a JSON object valid against the tool's ``parameters``; every other call is
left out of ``actions``, kept under ``invalid_tool_calls`` as it came, and named in
the prediction's violations: ``tool_call:unknown_tool …`` or
``tool_call:invalid_arguments …``, so it is counted, reported and never published.
"""

from __future__ import annotations

from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from shadow.candidates.agent_chat import functions
from shadow.candidates.calls import arguments_of, validators, violation
from shadow.candidates.http import canonical
from shadow.candidates.mcp_tools import McpToolset
from shadow.candidates.remote import Attempt, RemoteCandidate, expand, failure
from shadow.config.candidates import ChatCandidateSpec, McpServerSpec, chosen_tool
from shadow.core.actions import ACTIONS_KEY
from shadow.core.errors import ConfigError
from shadow.core.models import ErrorKind, Event
from shadow.core.paths import MISSING, get_path
from shadow.core.templates import render


class ChatCandidate(RemoteCandidate):
    spec: ChatCandidateSpec
    keeps_request = True

    def __init__(self, spec: ChatCandidateSpec, **options: Any) -> None:
        super().__init__(spec, **options)
        self.url = spec.base_url.rstrip("/") + "/chat/completions"
        self._validator = (
            Draft202012Validator(spec.json_schema) if spec.json_schema is not None else None
        )
        self._functions: list[dict[str, Any]] = []
        if not isinstance(spec.tools, McpServerSpec):
            self._offer([tool.model_dump(exclude_none=True) for tool in spec.tools])

    def _offer(self, functions: list[dict[str, Any]]) -> None:
        self._functions = functions
        self._tools = validators({tool["function"]["name"]:
                                  tool["function"].get("parameters", {"type": "object"})
                                  for tool in functions})

    def open(self) -> None:
        """Read the MCP server's tools when they come from one (never to run them: the
        session ends once they are listed), then open the connection pool.

        Raises:
            ToolsetError: the server cannot be started, reached or listed.
            ConfigError: ``tool_choice`` names a tool the server does not offer.
        """
        tools = self.spec.tools
        if isinstance(tools, McpServerSpec):
            toolset = McpToolset(tools.url if tools.url is not None else tools.command or [],
                                 connect_timeout=_MCP_CONNECT_S)
            try:
                self._offer(functions(toolset.open()))
            finally:
                toolset.close()
            named = None if self.spec.tool_choice is None else chosen_tool(self.spec.tool_choice)
            if named is not None and named not in self._tools:
                raise ConfigError(f"tool_choice: names the tool {named!r}, which the MCP "
                                  f"server does not offer ({', '.join(self._tools)})")
        super().open()

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
        if self._functions:
            body["tools"] = self._functions
        choice = self.spec.tool_choice
        if choice is not None:
            named = chosen_tool(choice)
            body["tool_choice"] = (
                choice if named is None else {"type": "function", "function": {"name": named}})
        if self.spec.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = self.spec.parallel_tool_calls
        return body

    def read(self, answer: Any, status: int, ttfb: float, raw: bytes) -> Attempt:
        usage = self._usage(answer)
        content = get_path(answer, "choices.0.message.content")
        calls = get_path(answer, "choices.0.message.tool_calls")
        if self.spec.tools or calls not in (MISSING, None):
            return self._read_tool_calls(content, calls, status, ttfb, raw, usage)
        if not isinstance(content, str):
            return _with(failure(ErrorKind.MALFORMED_RESPONSE, "NoContent",
                                 "response has no choices[0].message.content text",
                                 status=status, ttfb=ttfb, raw=raw), usage)
        return self._read_content(content, status, ttfb, usage)

    def _read_content(self, content: str, status: int, ttfb: float,
                      usage: dict[str, Any]) -> Attempt:
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

    def _read_tool_calls(self, content: Any, calls: Any, status: int, ttfb: float,
                         raw: bytes, usage: dict[str, Any]) -> Attempt:
        """The output of a message that may call tools: its content and its actions."""
        if calls in (MISSING, None):
            calls = []
        has_content = isinstance(content, str) and content != ""
        if not isinstance(calls, list) or (not calls and not has_content):
            return _with(failure(ErrorKind.MALFORMED_RESPONSE, "NoContent",
                                 "response has neither choices[0].message.content text nor "
                                 "a list of tool_calls", status=status, ttfb=ttfb, raw=raw),
                         usage)
        output: dict[str, Any] = {}
        if has_content:
            read = self._read_content(content, status, ttfb, usage)
            if read.error is not None:
                # The whole response is kept, its tool calls with it.
                return _with(failure(read.error.kind, read.error.type, read.error.message,
                                     status=status, ttfb=ttfb, raw=raw), usage)
            if isinstance(read.output, dict) and ACTIONS_KEY not in read.output:
                output.update(read.output)
            else:
                output["reply"] = read.output
        actions, invalid, violations = [], [], []
        for index, call in enumerate(calls):
            action = self._action(call)
            if isinstance(action, dict):
                actions.append(action)
            else:
                invalid.append(call)
                violations.append(f"{action} (tool_calls[{index}])")
        output[ACTIONS_KEY] = actions
        if invalid:
            output["invalid_tool_calls"] = invalid
        return Attempt(output=output, violations=tuple(violations), status=status,
                       ttfb_ms=ttfb, **usage)

    def _action(self, call: Any) -> dict[str, Any] | str:
        """The action a tool call proposes, or the violation it is."""
        ident = call.get("id") if isinstance(call, dict) else None
        name = get_path(call, "function.name")
        arguments = arguments_of(get_path(call, "function.arguments"))
        problem = violation(name, ident, arguments, self._tools)
        if problem is not None:
            return problem
        assert isinstance(arguments, dict)  # a violation otherwise
        action: dict[str, Any] = {"tool": name, "arguments": arguments}
        if isinstance(ident, str):
            action["id"] = ident
        return action

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


_MCP_CONNECT_S = 30.0
"""How long the MCP server may take to start and list its tools."""


def _count(value: Any) -> int | None:
    if value is MISSING or isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _with(attempt: Attempt, usage: dict[str, Any]) -> Attempt:
    # A reply that cannot be used still cost its tokens: keep them with the error.
    return Attempt(error=attempt.error, status=attempt.status, ttfb_ms=attempt.ttfb_ms,
                   **usage)
