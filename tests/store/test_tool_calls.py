"""Executed tool calls stored beside their prediction, on real temporary DuckDB files."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from shadow.core.models import Prediction, PredictionError
from shadow.store.database import Store
from shadow.store.tool_calls import MAX_RESULT
from shadow.store.writes import WriteBatch

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
ROWS = """
SELECT event_id, candidate, version, ordinal, step, call_id, tool, arguments, result,
       latency_ms, error, problem
FROM tool_calls ORDER BY event_id, candidate, version, ordinal
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "shadow.duckdb") as opened:
        yield opened


def prediction(event_id: str, output: Any = None, *, version: str = "v1",
               error: PredictionError | None = None) -> Prediction:
    return Prediction(event_id=event_id, candidate="agent", version=version, output=output,
                      latency_ms=1.0, predicted_at=NOW, error=error)


def call(order: int, tool: str, output: Any, error: str | None = None) -> dict[str, Any]:
    return {"step": order + 1, "order": order, "id": f"call_{order}", "tool": tool,
            "arguments": {"customer_id": "c1"}, "output": output, "error": error,
            "latency_ms": 2.5}


def rows(store: Store) -> list[tuple[Any, ...]]:
    """The rows, with the JSON text of ``arguments`` and ``result`` read back."""
    return [tuple(orjson.loads(v) if i in (7, 8) and v is not None else v
                  for i, v in enumerate(row))
            for row in store.db.execute(ROWS).fetchall()]


def test_executed_calls_are_stored_in_their_order(store: Store) -> None:
    output = {"actions": [], "tool_calls": [call(0, "get_customer", {"plan": "pro"}),
                                            call(1, "broken_lookup", None, "the CRM is down")]}
    store.write(WriteBatch(predictions=[prediction("e1", output)]))

    assert rows(store) == [
        ("e1", "agent", "v1", 0, 1, "call_0", "get_customer", {"customer_id": "c1"},
         {"plan": "pro"}, 2.5, None, None),
        ("e1", "agent", "v1", 1, 2, "call_1", "broken_lookup", {"customer_id": "c1"},
         None, 2.5, "the CRM is down", None),
    ]


def test_outputs_without_tool_calls_and_errors_store_none(store: Store) -> None:
    store.write(WriteBatch(predictions=[
        prediction("e1", {"label": "x"}), prediction("e2", "text"),
        prediction("e3", error=PredictionError("AgentError", "model overloaded"))]))
    assert rows(store) == []


def test_a_malformed_element_is_a_row_with_its_problem(store: Store) -> None:
    output = {"tool_calls": [call(0, "get_customer", 1), "not a call"]}
    store.write(WriteBatch(predictions=[prediction("e1", output),
                                        prediction("e2", {"tool_calls": {"tool": "x"}})]))

    found = rows(store)
    assert found[1][3:] == (1, None, None, None, None, None, None, None,
                            "expected an object with a tool")
    assert found[2][:4] == ("e2", "agent", "v1", None)
    assert found[2][-1] == "tool_calls: expected a list"


def test_a_long_result_is_cut_to_the_bound(store: Store) -> None:
    long = {"notes": "x" * (2 * MAX_RESULT)}
    store.write(WriteBatch(predictions=[prediction("e1", {"tool_calls": [
        call(0, "get_customer", long)]})]))

    [row] = rows(store)
    stored = row[8]
    assert isinstance(stored, str)
    assert stored == orjson.dumps(long).decode()[:MAX_RESULT] + "…"


def test_a_replaced_prediction_replaces_its_calls(store: Store) -> None:
    store.write(WriteBatch(predictions=[
        prediction("e1", {"tool_calls": [call(0, "a", 1), call(1, "b", 2)]}),
        prediction("e2", {"tool_calls": [call(0, "c", 3)]})]))
    store.replace_predictions([prediction("e1", {"tool_calls": [call(0, "d", 4)]})])

    assert [(row[0], row[6], row[8]) for row in rows(store)] == [
        ("e1", "d", 4), ("e2", "c", 3)]
