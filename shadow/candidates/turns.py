"""What an agent's model says in a step: its turn, with tool calls, and the protocol of
a model step (:mod:`shadow.candidates.agent` runs them, :mod:`shadow.candidates.agent_chat`
is one over a chat-completions endpoint)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shadow.candidates.mcp_tools import Tool

__all__ = ["Message", "ModelStep", "ToolCall", "Turn"]

Message = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call of a tool the model asks for."""

    tool: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None
    problem: str | None = None
    """Why the call could not be read (arguments that are not a JSON object): such a call
    is never run; it ends the run as an invalid proposal."""


@dataclass(frozen=True, slots=True)
class Turn:
    """What the model said in one step: text, tool calls, or both, and what it cost."""

    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    model: str | None = None
    """The model that answered, as the server names it."""


class ModelStep(Protocol):
    """The model behind the agent: the next turn for the conversation so far.

    ``messages`` are OpenAI chat messages: the prompt, then per step the assistant's
    turn (with ``tool_calls``) and one ``role: tool`` message per executed call.
    ``tools`` are every tool the server offers, writes included, so the model can
    propose them. It may raise; the run then ends with the error recorded.
    """

    def __call__(self, messages: Sequence[Message], tools: Sequence[Tool]) -> Turn: ...
