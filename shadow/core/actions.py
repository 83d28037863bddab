"""Actions: what an agent proposes to do, and what a person did, in one shape.

An action is a tool and its arguments, ``{"tool": "update_ticket", "arguments":
{"priority": "high"}}``, with an optional ``id`` (the model's tool-call id) and
``confidence``. Any candidate proposes actions by returning them under the key
``actions`` of its output, an object::

    {"actions": [{"tool": "issue_refund", "arguments": {"amount": 20}}], "reply": "..."}

and an outcome says what the person did in the same shape, under the same key. The
output keeps its other keys; its actions are also stored one row each (table
``actions``) in their order. Nothing here runs a tool: an action is data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ACTIONS_KEY = "actions"


@dataclass(frozen=True, slots=True)
class Action:
    """One proposed (or taken) call of a tool."""

    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    confidence: float | None = None

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"tool": self.tool, "arguments": self.arguments}
        if self.id is not None:
            found["id"] = self.id
        if self.confidence is not None:
            found["confidence"] = self.confidence
        return found


@dataclass(frozen=True, slots=True)
class Actions:
    """The actions read from a value, and why any element could not be read as one."""

    actions: tuple[Action, ...] = ()
    problems: tuple[str, ...] = ()
    """One reason per element that is not an action, naming its index."""
    at: tuple[int, ...] = ()
    """Where each action stands in the list it was read from (malformed ones skipped)."""

    def indexed(self) -> list[tuple[int, Action]]:
        """Each action with its index in the list it was read from."""
        return list(zip(self.at or range(len(self.actions)), self.actions, strict=True))


def actions_of(value: Any) -> Actions:
    """The actions under ``actions`` of an output or outcome value; none when it has none.

    A value that is not an object, or an object without the key, proposes nothing. An
    element that is not ``{"tool": <non-empty string>, "arguments": <object>}`` (with
    optional ``id``, a string, and ``confidence``, a number in [0, 1]) is left out and
    named in ``problems``, never silently dropped.
    """
    if not isinstance(value, dict) or ACTIONS_KEY not in value:
        return Actions()
    listed = value[ACTIONS_KEY]
    if not isinstance(listed, list):
        return Actions(problems=(f"actions: expected a list, got {_kind(listed)}",))
    found: list[Action] = []
    problems: list[str] = []
    at: list[int] = []
    for index, item in enumerate(listed):
        action = _action(item)
        if isinstance(action, str):
            problems.append(f"actions[{index}]: {action}")
        else:
            found.append(action)
            at.append(index)
    return Actions(tuple(found), tuple(problems), tuple(at))


def _action(item: Any) -> Action | str:
    if not isinstance(item, dict):
        return f"expected an object with tool and arguments, got {_kind(item)}"
    unknown = sorted(set(item) - {"tool", "arguments", "id", "confidence"})
    if unknown:
        return f"unknown keys {unknown}"
    tool, arguments = item.get("tool"), item.get("arguments", {})
    if not isinstance(tool, str) or not tool:
        return f"tool: expected a non-empty string, got {_kind(tool)}"
    if not isinstance(arguments, dict):
        return f"arguments: expected an object, got {_kind(arguments)}"
    ident, confidence = item.get("id"), item.get("confidence")
    if ident is not None and not isinstance(ident, str):
        return f"id: expected a string, got {_kind(ident)}"
    if confidence is not None and (isinstance(confidence, bool)
                                   or not isinstance(confidence, int | float)
                                   or not 0.0 <= confidence <= 1.0):
        return f"confidence: expected a number between 0 and 1, got {confidence!r}"
    return Action(tool, arguments, ident, None if confidence is None else float(confidence))


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
