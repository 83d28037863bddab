"""The condition language of ``mapping.*.when``: each form on records written here,
the answers written by hand, and the configuration errors naming the key."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.base import RawRecord
from connectors.conditions import Condition, compile_condition
from connectors.mapping import EventMapper, OutcomeMapper, map_records
from connectors.specs import EventMapping, OutcomeMapping
from shadow.config.file import parse_config
from shadow.core.errors import ConfigError
from shadow.core.models import RecordKind

DEAL = {"payload": {
    "op": "u",
    "before": {"id": 7, "stage": "qualified", "owner": "ana", "amount": 1200, "won": False},
    "after": {"id": 7, "stage": "proposal", "owner": "ana", "amount": 1200.0, "won": False,
              "tags": ["emea"]},
}}


def holds(condition: dict[str, Any], record: dict[str, Any] = DEAL) -> bool:
    return compile_condition(Condition.model_validate(condition))(record)


@pytest.mark.parametrize(("condition", "expected"), [
    ({"path": "payload.op", "equals": "u"}, True),
    ({"path": "payload.op", "equals": "c"}, False),
    ({"path": "payload.after.amount", "equals": 1200}, True),       # 1200.0 is the number 1200
    ({"path": "payload.after.amount", "equals": "1200"}, False),    # a string is not a number
    ({"path": "payload.after.won", "equals": False}, True),
    ({"path": "payload.after.won", "equals": 0}, False),            # false is not 0
    ({"path": "payload.after.tags", "equals": ["emea"]}, True),
    ({"path": "payload.after.tags.0", "equals": "emea"}, True),
    ({"path": "payload.nothing", "equals": None}, False),           # a missing path equals nothing
    ({"path": "payload.op", "not_equals": "d"}, True),
    ({"path": "payload.op", "not_equals": "u"}, False),
    ({"path": "payload.nothing", "not_equals": "d"}, True),
])
def test_equals_and_not_equals_compare_json_values(
    condition: dict[str, Any], expected: bool
) -> None:
    assert holds(condition) is expected


@pytest.mark.parametrize(("condition", "expected"), [
    ({"path": "payload.op", "in": ["c", "r"]}, False),
    ({"path": "payload.op", "in": ["u", "d"]}, True),
    ({"path": "payload.after.won", "in": [0, 1]}, False),
    ({"path": "payload.after.won", "in": [False]}, True),
    ({"path": "payload.after.amount", "in": [1200, 1300]}, True),
    ({"path": "payload.after.tags", "in": [["emea"], ["amer"]]}, True),
    ({"path": "payload.after.tags", "in": ["emea"]}, False),
    ({"path": "payload.nothing", "in": [None]}, False),
])
def test_in_holds_when_the_value_is_one_of_the_list(
    condition: dict[str, Any], expected: bool
) -> None:
    assert holds(condition) is expected


@pytest.mark.parametrize(("record", "present"), [
    ({"a": 1}, True),
    ({"a": 0}, True),
    ({"a": ""}, True),
    ({"a": None}, False),
    ({}, False),
    ({"b": 1}, False),
])
def test_present_means_there_and_not_null(record: dict[str, Any], present: bool) -> None:
    assert holds({"path": "a", "present": True}, record) is present
    assert holds({"path": "a", "present": False}, record) is not present


@pytest.mark.parametrize(("value", "gt", "ge", "lt", "le"), [
    (5, False, True, False, True),
    (4.5, False, False, True, True),
    (6, True, True, False, False),
    ("6", False, False, False, False),     # a string never compares as a number
    (True, False, False, False, False),    # nor does a boolean
    (None, False, False, False, False),
])
def test_numeric_bounds_hold_for_numbers_only(
    value: Any, gt: bool, ge: bool, lt: bool, le: bool
) -> None:
    record = {"n": value}

    assert [holds({"path": "n", test: 5}, record) for test in ("gt", "ge", "lt", "le")] == [
        gt, ge, lt, le]


def test_a_numeric_bound_on_a_missing_path_does_not_hold() -> None:
    assert holds({"path": "n", "lt": 5}, {}) is False


@pytest.mark.parametrize(("fields", "expected"), [
    (["stage"], True),
    (["owner"], False),
    (["stage", "owner"], True),
    (["amount"], False),          # 1200 and 1200.0 are the same number
    (["tags"], True),             # absent before, set after
    (["nothing"], False),         # absent on both sides
])
def test_changed_holds_when_a_listed_field_differs(fields: list[str], expected: bool) -> None:
    condition = {"changed": fields, "before": "payload.before", "after": "payload.after"}

    assert holds(condition) is expected


def test_changed_counts_absent_and_null_as_the_same() -> None:
    condition = {"changed": ["owner"], "before": "b", "after": "a"}

    assert holds(condition, {"b": {"owner": None}, "a": {}}) is False
    assert holds(condition, {"b": None, "a": {"owner": "ana"}}) is True
    assert holds(condition, {"b": {"owner": "ana"}, "a": None}) is True


def test_changed_reads_nested_fields() -> None:
    condition = {"changed": ["owner.team"], "before": "b", "after": "a"}

    assert holds(condition, {"b": {"owner": {"team": "x"}}, "a": {"owner": {"team": "y"}}})
    assert not holds(condition, {"b": {"owner": {"team": "x"}}, "a": {"owner": {"team": "x"}}})


@pytest.mark.parametrize(("condition", "expected"), [
    ({"and": [{"path": "payload.op", "equals": "u"},
              {"path": "payload.after.stage", "equals": "proposal"}]}, True),
    ({"and": [{"path": "payload.op", "equals": "u"},
              {"path": "payload.after.stage", "equals": "won"}]}, False),
    ({"or": [{"path": "payload.op", "equals": "c"},
             {"path": "payload.op", "equals": "u"}]}, True),
    ({"or": [{"path": "payload.op", "equals": "c"},
             {"path": "payload.op", "equals": "r"}]}, False),
    ({"not": {"path": "payload.op", "equals": "d"}}, True),
    ({"not": {"not": {"path": "payload.op", "equals": "d"}}}, False),
    ({"and": [{"path": "payload.op", "equals": "u"},
              {"not": {"or": [{"path": "payload.after.owner", "equals": "ana"},
                              {"path": "payload.after.amount", "lt": 100}]}}]}, False),
])
def test_and_or_not_combine_conditions(condition: dict[str, Any], expected: bool) -> None:
    assert holds(condition) is expected


def test_a_condition_on_a_record_of_another_shape_is_false_not_an_error() -> None:
    condition = {"changed": ["stage"], "before": "payload.before", "after": "payload.after"}

    assert holds({"path": "payload.op.kind", "equals": "u"}) is False
    assert holds(condition, {"payload": "not an object"}) is False


def config_error(when: Any, kind: str = "outcomes") -> str:
    raw = {"version": 1, "candidate": {"callable": "app:predict"},
           "mapping": {kind: {"when": when}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, origin="crm.yaml")
    return str(caught.value)


@pytest.mark.parametrize(("when", "line"), [
    ({"and": [{"path": "a", "equals": 1}, {"path": "b", "equal": 2}]},
     "mapping.outcomes.when.and.1.equal: unknown setting"),
    ({"and": [{"path": "a", "equals": 1}, {"path": "b"}]},
     "mapping.outcomes.when.and.1: path 'b': expected exactly one test of equals, not_equals, "
     "in, present, gt, ge, lt, le; got none"),
    ({"path": "a", "equals": 1, "in": [1]},
     "mapping.outcomes.when: path 'a': expected exactly one test of equals, not_equals, "
     "in, present, gt, ge, lt, le; got equals, in"),
    ({"not": {"path": "amount", "gt": "ten"}},
     "mapping.outcomes.when.not.gt: expected a number, got 'ten'"),
    ({"or": [{"path": "a", "present": "yes"}]},
     "mapping.outcomes.when.or.0.present: input should be a valid boolean, got 'yes'"),
    ({"changed": ["stage"], "before": "payload.before"},
     "mapping.outcomes.when: changed: needs both before and after, the paths of the two "
     "objects to compare"),
    ({"path": "a", "in": [1], "after": "b"},
     "mapping.outcomes.when: after: applies to changed only"),
    ({"equals": "c"}, "mapping.outcomes.when: equals: needs a path"),
    ({}, "mapping.outcomes.when: expected exactly one of path, changed, and, or, not; got none"),
    ({"path": "a", "equals": 1, "or": [{"path": "b", "equals": 2}]},
     "mapping.outcomes.when: expected exactly one of path, changed, and, or, not; "
     "got path, or"),
    ({"or": []}, "mapping.outcomes.when.or: list should have at least 1 item after validation, "
                 "not 0, got a list"),
    ({"and": [{"or": [{"not": None}]}]},
     "mapping.outcomes.when.and.0.or.0: not: expected a value, got None"),
    ("payload.op == 'c'",
     "mapping.outcomes.when: expected a mapping of settings, got \"payload.op == 'c'\""),
])
def test_a_malformed_condition_is_refused_at_load_naming_the_key(when: Any, line: str) -> None:
    assert config_error(when) == f"invalid configuration in crm.yaml:\n  {line}"


def test_the_events_condition_is_checked_as_well() -> None:
    assert config_error({"path": "op", "lt": None}, kind="events") == (
        "invalid configuration in crm.yaml:\n  mapping.events.when: lt: expected a value, got None")


NOW = datetime(2024, 6, 3, tzinfo=UTC)


def raw(position: int, value: dict[str, Any] | None) -> RawRecord:
    return RawRecord("deals.jsonl", f"line {position}", value, "{}",
                     None if value is not None else "not valid JSON")


def test_records_the_condition_leaves_out_are_neither_mapped_nor_dead_letters() -> None:
    mapper = EventMapper(EventMapping(
        event_id="id", key="id", occurred_at="at", payload="$",
        when=Condition.model_validate({"path": "op", "in": ["c", "r"]})))
    records = [
        raw(1, {"op": "c", "id": "D-1", "at": "2024-06-03T09:00:00Z"}),
        raw(2, {"op": "u", "id": "D-1", "at": "2024-06-03T10:00:00Z"}),
        raw(3, {"op": "r", "id": "D-2"}),                 # passes, but has no time: dead
        raw(4, None),                                     # undecodable: dead whatever `when`
        raw(5, {"op": "d"}),                              # left out before any mapping
    ]

    mapped, dead = map_records(records, mapper, RecordKind.EVENT, NOW)

    assert [(event.event_id, record.position) for event, record in mapped] == [("D-1", "line 1")]
    assert [(d.position, d.reason) for d in dead] == [
        ("line 3", "missing field 'occurred_at' (path 'at')"),
        ("line 4", "not valid JSON"),
    ]


def test_a_condition_keeps_the_mapping_of_canonical_records_as_it_was() -> None:
    when = Condition.model_validate({"path": "outcome", "present": True})
    mapper = OutcomeMapper(OutcomeMapping(when=when))
    record = {"key": "k1", "outcome": "billing", "decided_at": "2024-06-03T09:00:00Z"}

    outcome = mapper(record)

    assert (outcome.key, outcome.outcome, outcome.actor) == ("k1", "billing", None)
    assert mapper.when is not None and mapper.when(record)
    assert not mapper.when({**record, "outcome": None})
