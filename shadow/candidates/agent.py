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
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

import orjson
import structlog
from jsonschema import Draft202012Validator

from shadow.candidates.agent_chat import ChatModelStep
from shadow.candidates.base import MAX_BODY, Candidate, truncate
from shadow.candidates.calls import validators, violation
from shadow.candidates.fingerprint import DIGITS, PREFIX, source_of
from shadow.candidates.http import canonical
from shadow.candidates.mcp_tools import McpToolset, ShadowExecutor, Tool, ToolResult
from shadow.candidates.turns import Message, ModelStep, ToolCall, Turn
from shadow.config.candidates import AgentCandidateSpec, ChatModelSpec
from shadow.core.actions import ACTIONS_KEY, Action
from shadow.core.errors import ConfigError
from shadow.core.loading import load_callable
from shadow.core.models import ErrorKind, Event, Prediction, PredictionError
from shadow.core.templates import render
from shadow.store.tool_calls import TOOL_CALLS_KEY

__all__ = ["AgentCandidate", "AgentRun", "Budget", "ExecutedCall", "Message", "ModelStep",
           "Stop", "ToolCall", "Turn", "Usage", "run_agent"]

log = structlog.get_logger(__name__)


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
class Usage:
    """Tokens and cost summed over a run's steps; None where no step reported them."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    model: str | None = None
    """The model that answered the last step that named one."""

    def plus(self, turn: Turn) -> Usage:
        return Usage(_add(self.prompt_tokens, turn.prompt_tokens),
                     _add(self.completion_tokens, turn.completion_tokens),
                     _add(self.cost, turn.cost), turn.model or self.model)


_N = TypeVar("_N", int, float)


def _add(total: _N | None, more: _N | None) -> _N | None:
    if more is None:
        return total
    return more if total is None else total + more


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
    invalid: tuple[dict[str, Any], ...] = ()
    """Proposed calls that are not valid actions (unknown tool, unreadable or
    schema-violating arguments), each with the violation it is."""
    violations: tuple[str, ...] = ()
    conversation: tuple[Message, ...] = ()
    """The messages the model was given at its last step: the prompt, then every turn
    and tool result before it."""
    usage: Usage = Usage()

    def as_output(self) -> dict[str, Any]:
        output = {"reply": self.reply,
                  ACTIONS_KEY: [action.as_dict() for action in self.actions],
                  TOOL_CALLS_KEY: [call.as_dict() for call in self.executed],
                  "stop": self.stop.value, "steps": self.steps}
        if self.invalid:
            output["invalid_tool_calls"] = list(self.invalid)
        return output


def run_agent(messages: Sequence[Message], *, model: ModelStep, executor: ShadowExecutor,
              tools: Sequence[Tool], budget: Budget,
              offered: Mapping[str, Draft202012Validator] | None = None) -> AgentRun:
    """Run the agent from ``messages`` until it answers, proposes an action or runs out.

    ``offered`` are the validators of ``tools`` (built here when not given), against
    which a proposed call is checked. Never raises for what the model or a tool does: a
    failing model is ``Stop.MODEL_ERROR`` with the calls executed before it.
    """
    if offered is None:
        offered = validators({tool.name: tool.input_schema for tool in tools})
    conversation = list(messages)
    executed: list[ExecutedCall] = []
    reply: str | None = None
    usage = Usage()
    asked: tuple[Message, ...] = tuple(conversation)

    def ended(stop: Stop, step: int, error: str | None = None) -> AgentRun:
        return AgentRun(stop, step, reply, (), tuple(executed), error, conversation=asked,
                        usage=usage)

    for step in range(1, budget.max_steps + 1):
        asked = tuple(conversation)
        try:
            turn = model(conversation, tools)
        except Exception as exc:  # noqa: BLE001 - the model is the system under test
            return ended(Stop.MODEL_ERROR, step, f"{type(exc).__name__}: {truncate(str(exc))}")
        if not isinstance(turn, Turn):
            return ended(Stop.MODEL_ERROR, step,
                         f"the model step returned {type(turn).__name__}, not a Turn")
        malformed = _malformed(turn)
        if malformed is not None:
            return ended(Stop.MODEL_ERROR, step, malformed)
        usage = usage.plus(turn)
        reply = turn.content
        if not turn.tool_calls:
            return ended(Stop.ANSWERED, step)
        calls = [call if call.id is not None else replace(call, id=f"call_{step}_{index}")
                 for index, call in enumerate(turn.tool_calls)]
        runs = [call.problem is None and call.tool in executor for call in calls]
        if not all(runs):
            # The reads before the first other call run (their results are never fed
            # back: the run ends here); it and every later one are the proposals.
            first = runs.index(False)
            if not _execute(calls[:first], step, executor, executed, budget, None):
                return ended(Stop.MAX_CALLS, step)
            proposed = [call for call, run in zip(calls[first:], runs[first:], strict=True)
                        if not run]
            return _proposal(proposed, step, offered, AgentRun(
                Stop.PROPOSED, step, reply, (), tuple(executed), conversation=asked,
                usage=usage))
        conversation.append(_assistant(turn.content, calls))
        if not _execute(calls, step, executor, executed, budget, conversation):
            return ended(Stop.MAX_CALLS, step)
    return ended(Stop.MAX_STEPS, budget.max_steps)


def _proposal(calls: Sequence[ToolCall], step: int, offered: Mapping[str, Draft202012Validator],
              run: AgentRun) -> AgentRun:
    """The run with its proposed calls as actions, or as violations where they are not
    valid ones (checked like a chat candidate's, :mod:`shadow.candidates.calls`)."""
    actions: list[Action] = []
    invalid: list[dict[str, Any]] = []
    violations: list[str] = []
    for call in calls:
        arguments = call.problem if call.problem is not None else dict(call.arguments)
        problem = violation(call.tool, call.id, arguments, offered)
        if problem is None:
            actions.append(Action(call.tool, dict(call.arguments), call.id))
        else:
            invalid.append({"tool": call.tool, "arguments": dict(call.arguments),
                            "id": call.id, "violation": problem})
            violations.append(f"{problem} (step {step})")
    return replace(run, actions=tuple(actions), invalid=tuple(invalid),
                   violations=tuple(violations))


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
        if (not isinstance(call, ToolCall) or not isinstance(call.tool, str)
                or not (call.tool or call.problem) or not isinstance(call.arguments, Mapping)
                or not isinstance(call.id, str | None)
                or not isinstance(call.problem, str | None)):
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
                 call_timeout: float = 10.0, model_name: str | None = None,
                 parameters: Mapping[str, Any] | None = None) -> None:
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
        self._parameters = dict(parameters or {})
        self._executor: ShadowExecutor | None = None
        self._offered: Mapping[str, Draft202012Validator] = {}
        self._refused: Mapping[str, str] = {}

    @classmethod
    def from_spec(cls, spec: AgentCandidateSpec) -> AgentCandidate:
        """The agent a ``kind: agent`` configuration describes; no I/O until it is opened.

        Raises:
            ConfigError: the model step cannot be loaded.
        """
        model: ModelStep
        if isinstance(spec.model, ChatModelSpec):
            model = ChatModelStep(spec.model)
            model_name, parameters = spec.model.base_url, model.parameters
        else:
            model = load_callable(spec.model, what="agent model")
            model_name, parameters = spec.model, {}
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
                   call_timeout=spec.call_timeout_s, model_name=model_name,
                   parameters=parameters)

    @property
    def refused(self) -> Mapping[str, str]:
        """Allowlisted tools that will not run, with the reason; empty before ``open``."""
        return self._refused

    def open(self) -> None:
        self._toolset.open()
        self._executor = self._toolset.executor(self._allowlist, timeout=self._call_timeout)
        self._offered = validators({tool.name: tool.input_schema for tool in self._toolset.tools})
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
        run = run_agent(messages, model=self._model, executor=executor,
                        tools=self._toolset.tools, budget=self._budget, offered=self._offered)
        request = self._request(run.conversation)
        usage = run.usage
        if run.error is not None:
            # The calls executed before the model failed are kept with the error.
            return replace(self._failed(
                event, now, started, run.error,
                body=truncate(orjson.dumps(run.as_output(), default=str).decode(), MAX_BODY),
                request=request), prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens, cost=usage.cost, model=usage.model)
        return Prediction(event_id=event.event_id, candidate=self.name, version=self.version,
                          output=run.as_output(), latency_ms=_since(started), predicted_at=now,
                          request=request, violations=run.violations,
                          prompt_tokens=usage.prompt_tokens,
                          completion_tokens=usage.completion_tokens, cost=usage.cost,
                          model=usage.model)

    def _request(self, messages: Sequence[Message]) -> dict[str, Any]:
        """What the run asked (``Prediction.request``): the model step and its parameters,
        the messages of its last step (the prompt after templating, then every turn and
        tool result: step k was asked with those before the k-th assistant turn), every
        tool offered, the allowlist and the budget."""
        return {
            "model": self._model_name,
            **({"parameters": self._parameters} if self._parameters else {}),
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


def _fingerprint(spec: AgentCandidateSpec, model: ModelStep) -> str:
    # What determines the answers: the spec less names, timeouts and where the key is, and
    # a model step's source.
    data = spec.model_dump(mode="json", exclude={"name", "version", "call_timeout_s",
                                                 "connect_timeout_s"})
    if isinstance(spec.model, ChatModelSpec):
        for key in ("timeout_s", "max_attempts", "api_key_env", "prices"):
            data["model"].pop(key, None)
    else:
        data["model_source"] = source_of(model)
    digest = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return PREFIX + digest[:DIGITS]
