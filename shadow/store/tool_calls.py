"""The tool calls an agent executed in shadow, one row each (table ``tool_calls``).

An agent candidate (:mod:`shadow.candidates.agent`) lists the calls it executed under
the key ``tool_calls`` of its output, in order; each is stored beside its prediction
(event id, candidate, version) with its place (``ordinal``), step, call id, tool,
arguments, result (JSON, cut to :data:`MAX_RESULT` characters), latency and error. The
output keeps the list too. An element that is not an object naming a tool is stored
with ``problem`` saying why, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pyarrow as pa

from shadow.core.models import Prediction

TOOL_CALLS_KEY = "tool_calls"
MAX_RESULT = 8_192
"""How many characters of a call's result, as JSON, are stored."""

_COLUMNS: dict[str, pa.DataType] = {
    "event_id": pa.string(), "candidate": pa.string(), "version": pa.string(),
    "ordinal": pa.int32(), "step": pa.int32(), "call_id": pa.string(), "tool": pa.string(),
    "arguments": pa.string(), "result": pa.string(), "latency_ms": pa.float64(),
    "error": pa.string(), "problem": pa.string(),
}


def tool_calls_table(predictions: list[Prediction]) -> pa.Table:
    """The rows of every executed tool call the predictions' outputs list."""
    rows = [row for p in predictions for row in _rows(p)]
    return pa.table({name: pa.array([row[name] for row in rows], kind)
                     for name, kind in _COLUMNS.items()})


def _rows(prediction: Prediction) -> Iterator[dict[str, Any]]:
    output = prediction.output
    if prediction.error is not None or not isinstance(output, dict):
        return
    listed = output.get(TOOL_CALLS_KEY)
    if listed is None:
        return
    link = {"event_id": prediction.event_id, "candidate": prediction.candidate,
            "version": prediction.version}
    if not isinstance(listed, list):
        yield _row(link, None, {}, f"{TOOL_CALLS_KEY}: expected a list")
        return
    for ordinal, call in enumerate(listed):
        if not isinstance(call, dict) or not isinstance(call.get("tool"), str):
            yield _row(link, ordinal, {}, "expected an object with a tool")
        else:
            yield _row(link, ordinal, call, None)


def _row(link: dict[str, Any], ordinal: int | None, call: dict[str, Any],
         problem: str | None) -> dict[str, Any]:
    latency, step = call.get("latency_ms"), call.get("step")
    return {
        **link, "ordinal": ordinal, "problem": problem,
        "step": step if isinstance(step, int) and not isinstance(step, bool) else None,
        "call_id": _text(call.get("id")), "tool": _text(call.get("tool")),
        "arguments": _json(call["arguments"]) if "arguments" in call else None,
        "result": _json(call["output"], MAX_RESULT) if call.get("output") is not None else None,
        "latency_ms": (float(latency) if isinstance(latency, int | float)
                       and not isinstance(latency, bool) else None),
        "error": _text(call.get("error")),
    }


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _json(value: Any, limit: int | None = None) -> str:
    text = orjson.dumps(value, default=str).decode()
    if limit is None or len(text) <= limit:
        return text
    # Cut short, it is no longer JSON: stored as a JSON string of the start.
    return orjson.dumps(text[:limit] + "…").decode()
