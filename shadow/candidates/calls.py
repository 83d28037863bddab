"""Reading a model's tool calls: their arguments, and why a call is not a valid action.

Shared by the chat candidate (whose calls are proposals) and the agent (whose calls
outside its executor are). A call is valid when it names an offered tool and its
arguments are a JSON object valid against that tool's schema; otherwise it is a
violation, ``tool_call:unknown_tool …`` or ``tool_call:invalid_arguments …``, which the
prediction keeps, so it is counted, reported and never published.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from shadow.candidates.base import truncate
from shadow.core.paths import MISSING

__all__ = ["MAX_REASON", "arguments_of", "validators", "violation"]

MAX_REASON = 200
"""Characters of a parser's or a schema's message kept in a violation."""


def validators(schemas: Mapping[str, Mapping[str, Any]]) -> dict[str, Draft202012Validator]:
    """A validator per tool name, from each tool's JSON schema of its arguments."""
    return {name: Draft202012Validator(dict(schema)) for name, schema in schemas.items()}


def arguments_of(raw: Any) -> dict[str, Any] | str:
    """A call's arguments, which the API sends as JSON text; or why they cannot be read.

    Some servers send an object instead of its text, and an empty text for a function
    without parameters: both are read as what they mean.
    """
    if isinstance(raw, dict):
        return raw
    if raw is MISSING or raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        return f"the arguments are a {type(raw).__name__}, not JSON text"
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"the arguments are not JSON: {truncate(str(exc), MAX_REASON)}"
    if not isinstance(parsed, dict):
        return f"the arguments are a JSON {type(parsed).__name__}, not an object"
    return parsed


def violation(name: Any, ident: Any, arguments: dict[str, Any] | str,
              offered: Mapping[str, Draft202012Validator]) -> str | None:
    """Why the call of ``name`` (with the model's id ``ident``) is not a valid action, or
    None when it is. ``arguments`` is what :func:`arguments_of` made of the call's."""
    label = f"{name}" if isinstance(name, str) and name else "a call"
    if isinstance(ident, str) and ident:
        label += f" ({ident})"
    if not isinstance(name, str) or name not in offered:
        named = "names no function" if not isinstance(name, str) or not name else (
            "is not among the tools offered")
        return f"tool_call:unknown_tool {label} {named}"
    if isinstance(arguments, str):
        return f"tool_call:invalid_arguments {label}: {arguments}"
    error = best_match(offered[name].iter_errors(arguments))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "(root)"
        return (f"tool_call:invalid_arguments {label}: invalid at {where}: "
                f"{truncate(error.message, MAX_REASON)}")
    return None
