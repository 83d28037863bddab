"""A multi-step agent in shadow: lookups run, the first write becomes a proposed action.

Each step asks a model (a :class:`ModelStep`) for its next turn. The tool calls of a
turn are handled in order: a call to a tool of the :class:`ShadowExecutor` (the
allowlist, less what the server marks as writing) is run and its result fed back; the
first call to any other tool ends the run, and it (with every later call of that turn to
a tool outside the executor) is the run's proposed action. A turn without tool calls is
the agent's answer. The run also ends after ``max_steps`` turns, or when a call would
pass ``max_calls`` executed calls; each executed call has the executor's timeout.

What an :class:`AgentCandidate` stores as a prediction's output::

    {"reply": "...", "actions": [{"tool": "issue_refund", "arguments": {...}, "id": "c2"}],
     "tool_calls": [{"step": 1, "order": 0, "tool": "get_customer", "arguments": {...},
                     "output": {...}, "error": null, "latency_ms": 12.5}],
     "stop": "proposed", "steps": 2}

``actions`` is the shape of :mod:`shadow.core.actions`; ``tool_calls`` is every executed
call, in order, its output cut to :data:`~shadow.candidates.mcp_tools.MAX_RESULT`
characters of JSON, also stored one row each in the table ``tool_calls``
(:mod:`shadow.store.tool_calls`). Nothing outside the executor is ever run: the loop holds no other
way to call a tool.
"""

from __future__ import annotations

import enum
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson
import structlog

from shadow.candidates.base import MAX_BODY, Candidate, truncate
from shadow.candidates.fingerprint import DIGITS, PREFIX, source_of
from shadow.candidates.http import canonical
from shadow.candidates.mcp_tools import McpToolset, ShadowExecutor, Tool, ToolResult
from shadow.config.candidates import AgentCandidateSpec
from shadow.core.actions import ACTIONS_KEY, Action
from shadow.core.errors import ConfigError
from shadow.core.loading import load_callable
from shadow.core.models import ErrorKind, Event, Prediction, PredictionError
from shadow.core.templates import render
from shadow.store.tool_calls import TOOL_CALLS_KEY

log = structlog.get_logger(__name__)


Message = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call of a tool the model asks for."""

    tool: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Turn:
    """What the model said in one step: text, tool calls, or both."""

    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


class ModelStep(Protocol):
    """The model behind the agent: the next turn for the conversation so far.

    ``messages`` are OpenAI chat messages: the prompt, then per step the assistant's
    turn (with ``tool_calls``) and one ``role: tool`` message per executed call.
    ``tools`` are every tool the server offers, writes included, so the model can
    propose them. It may raise; the run then ends with the error recorded.
    """

    def __call__(self, messages: Sequence[Message], tools: Sequence[Tool]) -> Turn: ...


class Stop(enum.StrEnum):
    """Why a run ended."""

    ANSWERED = "answered"
    """The model replied without calling a tool."""
    PROPOSED = "proposed"
    """The model called a tool outside the executor: that call is the proposed action."""
    MAX_STEPS = "max_steps"
    MAX_CALLS = "max_calls"
    MODEL_ERROR = "model_error"


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """How far one run may go: model turns, and executed tool calls."""

    max_steps: int = 8
    max_calls: int = 16

    def __post_init__(self) -> None:
        for key in ("max_steps", "max_calls"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}: expected a positive whole number, got {value!r}")


@dataclass(frozen=True, slots=True)
class ExecutedCall:
    """One tool call the run executed, with what came back."""

    step: int
    order: int
    """Its place among the run's executed calls, from 0."""
    tool: str
    arguments: Mapping[str, Any]
    output: Any
    error: str | None
    latency_ms: float
    id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "order": self.order, "id": self.id, "tool": self.tool,
                "arguments": dict(self.arguments), "output": self.output, "error": self.error,
                "latency_ms": self.latency_ms}


@dataclass(frozen=True, slots=True)
class AgentRun:
    """How one run went."""

    stop: Stop
    steps: int
    reply: str | None = None
    actions: tuple[Action, ...] = ()
    executed: tuple[ExecutedCall, ...] = ()
    error: str | None = None
    """Why the model failed, when ``stop`` is ``model_error``."""

    def as_output(self) -> dict[str, Any]:
        return {"reply": self.reply, ACTIONS_KEY: [action.as_dict() for action in self.actions],
                TOOL_CALLS_KEY: [call.as_dict() for call in self.executed],
                "stop": self.stop.value, "steps": self.steps}


def run_agent(messages: Sequence[Message], *, model: ModelStep, executor: ShadowExecutor,
              tools: Sequence[Tool], budget: Budget) -> AgentRun:
    """Run the agent from ``messages`` until it answers, proposes an action or runs out.

    Never raises for what the model or a tool does: a failing model is
    ``Stop.MODEL_ERROR`` with the calls executed before it.
    """
    conversation = list(messages)
    executed: list[ExecutedCall] = []
    reply: str | None = None
    for step in range(1, budget.max_steps + 1):
        try:
            turn = model(conversation, tools)
        except Exception as exc:  # noqa: BLE001 - the model is the system under test
            return AgentRun(Stop.MODEL_ERROR, step, reply, (), tuple(executed),
                            f"{type(exc).__name__}: {truncate(str(exc))}")
        if not isinstance(turn, Turn):
            return AgentRun(Stop.MODEL_ERROR, step, reply, (), tuple(executed),
                            f"the model step returned {type(turn).__name__}, not a Turn")
        malformed = _malformed(turn)
        if malformed is not None:
            return AgentRun(Stop.MODEL_ERROR, step, reply, (), tuple(executed), malformed)
        reply = turn.content
        if not turn.tool_calls:
            return AgentRun(Stop.ANSWERED, step, reply, (), tuple(executed))
        calls = [call if call.id is not None else ToolCall(call.tool, call.arguments,
                                                           f"call_{step}_{index}")
                 for index, call in enumerate(turn.tool_calls)]
        first_write = next((index for index, call in enumerate(calls)
                            if call.tool not in executor), None)
        if first_write is not None:
            # The reads before the write run (their results are never fed back: the
            # run ends here); the write and every later one are the proposed actions.
            if not _execute(calls[:first_write], step, executor, executed, budget, None):
                return AgentRun(Stop.MAX_CALLS, step, reply, (), tuple(executed))
            actions = tuple(Action(call.tool, dict(call.arguments), call.id)
                            for call in calls[first_write:] if call.tool not in executor)
            return AgentRun(Stop.PROPOSED, step, reply, actions, tuple(executed))
        conversation.append(_assistant(turn.content, calls))
        if not _execute(calls, step, executor, executed, budget, conversation):
            return AgentRun(Stop.MAX_CALLS, step, reply, (), tuple(executed))
    return AgentRun(Stop.MAX_STEPS, budget.max_steps, reply, (), tuple(executed))


def _execute(calls: Sequence[ToolCall], step: int, executor: ShadowExecutor,
             executed: list[ExecutedCall], budget: Budget,
             conversation: list[Message] | None) -> bool:
    """Run the calls in order; False when the budget stopped one from running."""
    for call in calls:
        if len(executed) >= budget.max_calls:
            return False
        try:
            result = executor.run(call.tool, call.arguments)
        except Exception as exc:  # noqa: BLE001 - a failing call is recorded, never a crash
            result = ToolResult(error=f"{type(exc).__name__}: {truncate(str(exc))}")
        executed.append(ExecutedCall(step, len(executed), call.tool, dict(call.arguments),
                                     result.output, result.error, result.latency_ms, call.id))
        if conversation is not None:
            fed = {"error": result.error} if result.error is not None else result.output
            conversation.append({"role": "tool", "tool_call_id": call.id,
                                 "content": orjson.dumps(fed, default=str).decode()})
    return True


def _malformed(turn: Turn) -> str | None:
    if turn.content is not None and not isinstance(turn.content, str):
        return f"the model's content is {type(turn.content).__name__}, not text"
    for index, call in enumerate(turn.tool_calls):
        if (not isinstance(call, ToolCall) or not isinstance(call.tool, str) or not call.tool
                or not isinstance(call.arguments, Mapping)
                or not isinstance(call.id, str | None)):
            return (f"the model's tool_calls[{index}] is not a call of a named tool with an "
                    f"object of arguments: {truncate(repr(call), 200)}")
    return None


def _assistant(content: str | None, calls: Sequence[ToolCall]) -> Message:
    return {"role": "assistant", "content": content, "tool_calls": [
        {"id": call.id, "type": "function",
         "function": {"name": call.tool,
                      "arguments": orjson.dumps(dict(call.arguments), default=str).decode()}}
        for call in calls]}


class AgentCandidate(Candidate):
    """An agent run per event against an MCP server's tools, only the allowlisted ones executed.

    ``prompt`` turns an event into the first messages. The toolset is opened with the
    candidate; a listed tool the server marks as writing, or does not offer, is refused
    then (logged, and kept in ``refused``) and never runs.
    """

    def __init__(self, *, name: str, model: ModelStep, toolset: McpToolset,
                 allowlist: Sequence[str], prompt: Callable[[Event], Sequence[Message]],
                 version: str | None = None, budget: Budget | None = None,
                 call_timeout: float = 10.0, model_name: str | None = None) -> None:
        if not call_timeout > 0:
            raise ConfigError(f"call_timeout: expected a positive number of seconds, "
                              f"got {call_timeout!r}")
        self.name = name
        self.version = version
        self._model = model
        self._toolset = toolset
        self._allowlist = tuple(allowlist)
        self._prompt = prompt
        self._budget = budget or Budget()
        self._call_timeout = call_timeout
        self._model_name = model_name or (
            f"{getattr(model, '__module__', '?')}:"
            f"{getattr(model, '__qualname__', type(model).__qualname__)}")
        self._executor: ShadowExecutor | None = None
        self._refused: Mapping[str, str] = {}

    @classmethod
    def from_spec(cls, spec: AgentCandidateSpec) -> AgentCandidate:
        """The agent a ``kind: agent`` configuration describes; no I/O until it is opened.

        Raises:
            ConfigError: the model step cannot be loaded.
        """
        model = load_callable(spec.model, what="agent model")
        server = spec.tools.url if spec.tools.url is not None else spec.tools.command
        assert server is not None  # the spec holds exactly one of them
        toolset = McpToolset(server, connect_timeout=spec.connect_timeout_s)

        def prompt(event: Event) -> list[Message]:
            context = canonical(event)
            messages: list[Message] = []
            if spec.system is not None:
                messages.append({"role": "system", "content": render(spec.system, context)})
            messages.append({"role": "user", "content": render(spec.user, context)})
            return messages

        return cls(name=spec.resolved_name, version=spec.version or _fingerprint(spec, model),
                   model=model, toolset=toolset, allowlist=spec.allow, prompt=prompt,
                   budget=Budget(max_steps=spec.max_steps, max_calls=spec.max_calls),
                   call_timeout=spec.call_timeout_s, model_name=spec.model)

    @property
    def refused(self) -> Mapping[str, str]:
        """Allowlisted tools that will not run, with the reason; empty before ``open``."""
        return self._refused

    def open(self) -> None:
        self._toolset.open()
        self._executor = self._toolset.executor(self._allowlist, timeout=self._call_timeout)
        self._refused = self._executor.refused
        for tool, reason in self._refused.items():
            log.warning("agent tool refused", candidate=self.name, tool=tool, reason=reason)

    def close(self) -> None:
        self._executor = None
        self._toolset.close()

    def predict(self, events: Sequence[Event], now: datetime) -> list[Prediction]:
        return [self._one(event, now) for event in events]

    def _one(self, event: Event, now: datetime) -> Prediction:
        started = time.perf_counter()
        executor = self._executor
        if executor is None:
            return self._failed(event, now, started, "the agent candidate is not open")
        try:
            messages = list(self._prompt(event))
        except Exception as exc:  # noqa: BLE001 - user code may raise anything
            return self._failed(event, now, started,
                                f"prompt: {type(exc).__name__}: {truncate(str(exc))}")
        request = self._request(messages)
        run = run_agent(messages, model=self._model, executor=executor,
                        tools=self._toolset.tools, budget=self._budget)
        if run.error is not None:
            # The calls executed before the model failed are kept with the error.
            return self._failed(event, now, started, run.error,
                                body=truncate(orjson.dumps(run.as_output(), default=str).decode(),
                                              MAX_BODY), request=request)
        return Prediction(event_id=event.event_id, candidate=self.name, version=self.version,
                          output=run.as_output(), latency_ms=_since(started), predicted_at=now,
                          request=request)

    def _request(self, messages: Sequence[Message]) -> dict[str, Any]:
        """What the run started from (``Prediction.request``): the model step, the prompt
        after templating, every tool offered, the allowlist and the budget. What later steps
        were given is the executed calls, kept under ``tool_calls``."""
        return {
            "model": self._model_name,
            "messages": [dict(message) for message in messages],
            "tools": [{"name": tool.name, "description": tool.description,
                       "input_schema": dict(tool.input_schema), "read_only": tool.read_only}
                      for tool in self._toolset.tools],
            "allow": list(self._allowlist),
            "max_steps": self._budget.max_steps, "max_calls": self._budget.max_calls,
        }

    def _failed(self, event: Event, now: datetime, started: float, message: str,
                body: str | None = None, request: Any = None) -> Prediction:
        return Prediction(event_id=event.event_id, candidate=self.name, version=self.version,
                          latency_ms=_since(started), predicted_at=now, request=request,
                          error=PredictionError("AgentError", message, ErrorKind.EXCEPTION,
                                                body))


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _fingerprint(spec: AgentCandidateSpec, model: Callable[..., Any]) -> str:
    # What determines the answers: the spec less names and timeouts, and the model's source.
    data = spec.model_dump(mode="json", exclude={"name", "version", "call_timeout_s",
                                                 "connect_timeout_s"})
    data["model_source"] = source_of(model)
    digest = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return PREFIX + digest[:DIGITS]
