"""The outcome mapping's ``actions``: what a person did, made into actions from a record."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.base import RawRecord
from connectors.mapping import MappingFailed, OutcomeMapper, map_records
from connectors.specs import ActionTemplate, OutcomeMapping
from shadow.config.file import parse_config
from shadow.core.errors import ConfigError
from shadow.core.models import RecordKind

CHANGES = OutcomeMapping(key="record_id", decided_at="changed_at", actor="changed_by",
                         actions=ActionTemplate(tool="update_record", arguments="changes"))
LISTED = OutcomeMapping(key="record_id", decided_at="changed_at", actions="done")


def change(**fields: Any) -> dict[str, Any]:
    return {"record_id": "L-1", "changed_at": "2024-05-06T15:31:09Z", "changed_by": "maria",
            **fields}


def reason(mapper: OutcomeMapper, record: dict[str, Any]) -> str:
    with pytest.raises(MappingFailed) as failure:
        mapper(record)
    return str(failure.value)


def test_a_records_changes_become_the_arguments_of_one_action() -> None:
    outcome = OutcomeMapper(CHANGES)(change(changes={"priority": "high", "owner": "emea"}))

    assert outcome.outcome == {"actions": [
        {"tool": "update_record", "arguments": {"priority": "high", "owner": "emea"}}]}
    assert (outcome.key, outcome.actor) == ("L-1", "maria")


def test_a_list_already_in_the_shape_is_taken_as_it_is() -> None:
    done = [{"tool": "update_record", "arguments": {"stage": "won"}},
            {"tool": "create_task", "arguments": {"title": "call back"}, "id": "t-1"}]

    assert OutcomeMapper(LISTED)(change(done=done)).outcome == {"actions": done}


def test_the_actions_join_the_other_keys_of_an_outcome_object() -> None:
    mapping = CHANGES.model_copy(update={"outcome": "decision"})

    outcome = OutcomeMapper(mapping)(change(decision={"label": "qualified", "actions": "old"},
                                            changes={"stage": "won"}))

    assert outcome.outcome == {"label": "qualified", "actions": [
        {"tool": "update_record", "arguments": {"stage": "won"}}]}


def test_an_outcome_that_cannot_hold_actions_names_its_field_and_path() -> None:
    mapping = CHANGES.model_copy(update={"outcome": "decision"})

    assert reason(OutcomeMapper(mapping), change(decision="qualified", changes={})) == (
        "field 'outcome' (path 'decision'): expected an object to hold the actions, "
        "got 'qualified'")


def test_missing_arguments_name_the_field_and_path() -> None:
    assert reason(OutcomeMapper(CHANGES), change()) == (
        "missing field 'actions.arguments' (path 'changes')")
    assert reason(OutcomeMapper(CHANGES), change(changes=None)) == (
        "missing field 'actions.arguments' (path 'changes')")


def test_arguments_that_are_not_an_object_name_what_they_are() -> None:
    assert reason(OutcomeMapper(CHANGES), change(changes=["stage"])) == (
        "field 'actions.arguments' (path 'changes'): expected an object, got list")


def test_actions_that_are_not_a_list_name_what_they_are() -> None:
    assert reason(OutcomeMapper(LISTED), change(done="won")) == (
        "field 'actions' (path 'done'): expected a list of actions, got 'won'")
    assert reason(OutcomeMapper(LISTED), change()) == "missing field 'actions' (path 'done')"


def test_the_other_fields_fail_as_before() -> None:
    record = change(changes={"stage": "won"})
    del record["changed_at"]

    assert reason(OutcomeMapper(CHANGES), record) == (
        "missing field 'decided_at' (path 'changed_at')")


def test_without_actions_an_outcome_is_as_the_record_has_it() -> None:
    record = {"key": "L-1", "decided_at": "2024-05-06T15:31:09Z",
              "outcome": {"actions": "not a list", "label": "won"}}

    assert OutcomeMapper()(record).outcome == {"actions": "not a list", "label": "won"}
    assert reason(OutcomeMapper(), {"key": "L-1", "decided_at": "2024-05-06T15:31:09Z"}) == (
        "missing field 'outcome'")


def test_a_record_that_cannot_be_mapped_is_a_dead_letter_with_its_reason() -> None:
    now = datetime(2024, 5, 11, tzinfo=UTC)
    good = RawRecord("changes.jsonl", "line 1", change(changes={"stage": "won"}), b"{...}\n")
    bad = RawRecord("changes.jsonl", "line 2", change(changes=7), b"{...}\n")

    mapped, dead = map_records([good, bad], OutcomeMapper(CHANGES), RecordKind.OUTCOME, now)

    assert [record.position for _, record in mapped] == ["line 1"]
    assert [(d.position, d.reason) for d in dead] == [
        ("line 2", "field 'actions.arguments' (path 'changes'): expected an object, got 7")]


@pytest.mark.parametrize(("actions", "problem"), [
    ({"tool": ""}, "mapping.outcomes.actions.tool: string should have at least 1 character, "
                   "got ''"),
    ({"arguments": "changes"}, "mapping.outcomes.actions.tool: required setting is missing"),
    ({"tool": "t", "args": "x"}, "mapping.outcomes.actions.args: unknown setting"),
    (5, "mapping.outcomes.actions: expected a mapping of settings, got 5"),
])
def test_configuration_errors_name_the_key(actions: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as failure:
        parse_config({"mapping": {"outcomes": {"actions": actions}}}, origin="shadow.yaml")

    assert str(failure.value) == f"invalid configuration in shadow.yaml:\n  {problem}"


def test_both_forms_are_read_from_the_configuration() -> None:
    config = parse_config({"mapping": {"outcomes": {
        "actions": {"tool": "update_record", "arguments": "changes"}}}})
    listed = parse_config({"mapping": {"outcomes": {"actions": "$.actions"}}})

    assert config.mapping.outcomes.actions == ActionTemplate(tool="update_record",
                                                             arguments="changes")
    assert listed.mapping.outcomes.actions == "$.actions"
