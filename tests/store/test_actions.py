"""Actions stored beside their prediction or outcome, on real temporary DuckDB files."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from shadow.core.models import Outcome, Prediction, PredictionError
from shadow.store.database import Store
from shadow.store.migrations import MIGRATIONS, migrate
from shadow.store.writes import WriteBatch, with_action_violations
from tests.store.old_stores import migrate_up_to

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)

PREDICTION_ROWS = """
SELECT event_id, candidate, version, ordinal, tool, arguments, action_id, confidence,
       valid, problem
FROM actions WHERE side = 'prediction' ORDER BY event_id, candidate, version, ordinal
"""
OUTCOME_ROWS = """
SELECT key, decided_at, ordinal, tool, arguments, valid, problem
FROM actions WHERE side = 'outcome' ORDER BY key, decided_at, ordinal
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "shadow.duckdb") as opened:
        yield opened


def prediction(event_id: str, output: Any, *, candidate: str = "agent", version: str = "v1",
               violations: tuple[str, ...] = ()) -> Prediction:
    return Prediction(event_id=event_id, candidate=candidate, version=version, output=output,
                      latency_ms=1.0, predicted_at=NOW, violations=violations)


def rows(store: Store, sql: str) -> list[tuple[Any, ...]]:
    """The rows of ``sql``, with the JSON text of ``arguments`` read back."""
    arguments = 5 if sql is PREDICTION_ROWS else 4
    return [tuple(orjson.loads(v) if i == arguments and v is not None else v
                  for i, v in enumerate(row))
            for row in store.db.execute(sql).fetchall()]


def violations(store: Store, event_id: str) -> list[str] | None:
    ((found,),) = store.db.execute("SELECT violations FROM predictions WHERE event_id = ?",
                                   [event_id]).fetchall()
    return None if found is None else [str(v) for v in found]


def test_a_predictions_actions_are_stored_in_their_order(store: Store) -> None:
    output = {"label": "refund", "actions": [
        {"tool": "lookup_order", "arguments": {"order": "A-1"}, "id": "call_1"},
        {"tool": "issue_refund", "arguments": {"amount": 20, "currency": "EUR"},
         "confidence": 0.75},
        {"tool": "send_reply"},
    ]}

    store.write(WriteBatch(predictions=[prediction("e1", output)]))

    assert rows(store, PREDICTION_ROWS) == [
        ("e1", "agent", "v1", 0, "lookup_order", {"order": "A-1"}, "call_1", None, True, None),
        ("e1", "agent", "v1", 1, "issue_refund", {"amount": 20, "currency": "EUR"}, None, 0.75,
         True, None),
        ("e1", "agent", "v1", 2, "send_reply", {}, None, None, True, None),
    ]
    assert violations(store, "e1") is None


def test_outputs_without_actions_and_errors_store_no_action(store: Store) -> None:
    failed = Prediction(event_id="e3", candidate="agent", version="v1", latency_ms=1.0,
                        predicted_at=NOW, error=PredictionError("Boom", "boom"))

    store.write(WriteBatch(predictions=[prediction("e1", "refund"),
                                        prediction("e2", {"label": "refund"}), failed]))

    assert store.count("actions") == 0
    assert store.count("predictions") == 3


def test_a_malformed_action_is_a_violation_and_the_valid_ones_are_stored(store: Store) -> None:
    output = {"actions": [{"tool": "issue_refund", "arguments": {"amount": 20}},
                          {"tool": None, "arguments": {}},
                          {"tool": "send_reply", "arguments": "hello"}]}
    # The pipeline adds the violations before routing; the store adds them if it was not.
    checked = with_action_violations([prediction("e1", output)])

    store.write(WriteBatch(predictions=checked))

    expected = ["actions:malformed actions[1]: tool: expected a non-empty string, got null",
                "actions:malformed actions[2]: arguments: expected an object, got str"]
    assert list(checked[0].violations) == expected
    assert violations(store, "e1") == expected
    assert rows(store, PREDICTION_ROWS) == [
        ("e1", "agent", "v1", 0, "issue_refund", {"amount": 20}, None, None, True, None),
        ("e1", "agent", "v1", 1, None, None, None, None, False,
         "actions[1]: tool: expected a non-empty string, got null"),
        ("e1", "agent", "v1", 2, None, None, None, None, False,
         "actions[2]: arguments: expected an object, got str"),
    ]


def test_a_prediction_written_without_the_pipeline_still_gets_its_violations(
    store: Store,
) -> None:
    store.write(WriteBatch(predictions=[prediction("e1", {"actions": [{"tool": ""}]})]))

    assert violations(store, "e1") == [
        "actions:malformed actions[0]: tool: expected a non-empty string, got str"]


def test_actions_that_are_not_a_list_are_one_violation_and_one_row(store: Store) -> None:
    store.write(WriteBatch(predictions=with_action_violations(
        [prediction("e1", {"actions": "refund"})])))

    assert violations(store, "e1") == ["actions:malformed actions: expected a list, got str"]
    assert rows(store, PREDICTION_ROWS) == [
        ("e1", "agent", "v1", None, None, None, None, None, False,
         "actions: expected a list, got str")]


def test_a_check_naming_an_action_makes_it_invalid(store: Store) -> None:
    output = {"actions": [{"tool": "lookup_order", "arguments": {}},
                          {"tool": "issue_refund", "arguments": {"amount": 250}}]}
    named = "refund_cap:max issue_refund.amount=250 is more than 100 (actions[1])"

    store.write(WriteBatch(predictions=[prediction("e1", output, violations=(named,))]))

    assert [(r[3], r[8], r[9]) for r in rows(store, PREDICTION_ROWS)] == [
        (0, True, None), (1, False, named)]
    assert violations(store, "e1") == [named]


def test_a_violation_already_named_by_a_check_is_not_added_again(store: Store) -> None:
    malformed = "actions:malformed actions[0]: expected an object with tool and arguments, got int"
    checked = with_action_violations(
        [prediction("e1", {"actions": [7]}, violations=(malformed,))])

    store.write(WriteBatch(predictions=checked))

    assert violations(store, "e1") == [malformed]


def test_outcome_actions_are_stored_once_however_often_written(store: Store) -> None:
    changed = Outcome(key="L-1", decided_at=NOW, actor="maria", outcome={"actions": [
        {"tool": "update_record", "arguments": {"owner": "emea", "priority": "high"}}]})
    later = Outcome(key="L-1", decided_at=NOW + timedelta(hours=1), outcome={"actions": [
        {"tool": "update_record", "arguments": {"stage": "won"}}, {"tool": 3}]})
    copy = Outcome(key="L-1", decided_at=NOW, outcome={"actions": [
        {"tool": "delete_record", "arguments": {}}]})

    first = store.write(WriteBatch(outcomes=[(changed, "crm.jsonl", "line 1"),
                                             (copy, "crm.jsonl", "line 9")]))
    again = store.write(WriteBatch(outcomes=[(changed, "crm.jsonl", "line 1"),
                                             (later, "crm.jsonl", "line 2")]))

    assert (first.outcomes, again.outcomes) == (1, 1)
    assert rows(store, OUTCOME_ROWS) == [
        ("L-1", NOW, 0, "update_record", {"owner": "emea", "priority": "high"}, True, None),
        ("L-1", NOW + timedelta(hours=1), 0, "update_record", {"stage": "won"}, True, None),
        ("L-1", NOW + timedelta(hours=1), 1, None, None, False,
         "actions[1]: tool: expected a non-empty string, got int"),
    ]


def test_retried_predictions_replace_their_actions(store: Store) -> None:
    old = {"actions": [{"tool": "a", "arguments": {}}, {"tool": "b", "arguments": {}}]}
    store.write(WriteBatch(predictions=[prediction("e1", old), prediction("e1", old, version="v2"),
                                        prediction("e2", old)]))

    store.replace_predictions([prediction("e1", {"actions": [{"tool": "c", "arguments": {}}]})])

    assert [(r[0], r[2], r[4]) for r in rows(store, PREDICTION_ROWS)] == [
        ("e1", "v1", "c"), ("e1", "v2", "a"), ("e1", "v2", "b"), ("e2", "v1", "a"),
        ("e2", "v1", "b")]


def test_a_store_of_the_previous_version_gets_an_empty_actions_table(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as db:
        migrate_up_to(db, 10)
        assert migrate(db) == max(version for version, _ in MIGRATIONS)

    with Store(path, read_only=True) as store:
        assert store.count("actions") == 0
