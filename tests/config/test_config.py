"""The configuration file: parsing, validation messages, paths, named comparators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shadow.config.candidates import CallableCandidateSpec, HttpCandidateSpec
from shadow.config.comparators import (
    CustomSpec,
    ExactSpec,
    FieldsSpec,
    NormalizedSpec,
    NumericSpec,
    SetSpec,
)
from shadow.config.file import Config, load_config, parse_config
from shadow.core.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
KINDS = "exact, normalized, set, numeric, fields, custom, similarity, semantic, judge, actions"

FULL = """\
version: 1
candidate:
  callable: my_triage.model:classify
  name: ticket-triage
  version: "2024-05"
  batch_size: 32
comparator:
  kind: fields
  fields:
    category: {kind: normalized}
    tags: {kind: set, threshold: 0.5}
    priority:
      kind: fields
      fields:
        level: {kind: numeric, abs_tol: 1}
comparators:
  strict: {kind: exact, prediction_path: category, outcome_path: resolution.category}
  mine: {kind: custom, function: my_triage.compare:same_category}
mapping:
  events:
    event_id: ticket.id
    key: ticket.id
    occurred_at: ticket.created_at
    routing_key: ticket.requester.organization.id
    segment: {channel: ticket.via.channel, language: ticket.custom_fields.language}
    payload: ticket
  outcomes:
    key: ticket_id
    outcome: resolution
    decided_at: solved_at
    actor: null
store:
  path: /var/lib/shadow/triage.duckdb
  batch_size: 1000
"""


def write(tmp_path: Path, text: str, name: str = "shadow.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as failure:
        parse_config(raw, origin="shadow.yaml")
    message = str(failure.value)
    assert message.startswith("invalid configuration in shadow.yaml:\n  ")
    return message


def lines_of(raw: dict[str, Any]) -> list[str]:
    return [line.strip() for line in error_of(raw).splitlines()[1:]]


# -- valid files ---------------------------------------------------------------


def test_full_config_parses(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))

    assert isinstance(config.candidate, CallableCandidateSpec)
    assert config.candidate.callable == "my_triage.model:classify"
    assert (config.candidate.name, config.candidate.version) == ("ticket-triage", "2024-05")
    assert config.candidate.batch_size == 32
    assert isinstance(config.comparator, FieldsSpec)
    assert isinstance(config.comparator.fields["category"], NormalizedSpec)
    tags = config.comparator.fields["tags"]
    assert isinstance(tags, SetSpec) and tags.threshold == 0.5
    priority = config.comparator.fields["priority"]
    assert isinstance(priority, FieldsSpec)
    assert isinstance(priority.fields["level"], NumericSpec)
    assert isinstance(config.comparators["strict"], ExactSpec)
    assert config.comparators["strict"].outcome_path == "resolution.category"
    assert isinstance(config.comparators["mine"], CustomSpec)
    assert config.mapping.events.segment == {
        "channel": "ticket.via.channel", "language": "ticket.custom_fields.language",
    }
    assert config.mapping.outcomes.actor is None
    assert config.store.path == "/var/lib/shadow/triage.duckdb"
    assert config.store.batch_size == 1000


def test_no_file_gives_the_defaults() -> None:
    config = load_config(None)

    assert config == Config()
    assert isinstance(config.comparator, ExactSpec)
    assert config.candidate is None
    assert config.mapping.events.event_id == "event_id"
    assert config.store.batch_size == 20_000


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_gives_the_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text)) == Config()


def test_segment_may_be_a_single_path() -> None:
    config = parse_config({"mapping": {"events": {"segment": "ticket.attributes"}}})

    assert config.mapping.events.segment == "ticket.attributes"


def test_config_is_frozen() -> None:
    config = parse_config({"store": {"batch_size": 10}})

    with pytest.raises(ValueError, match="frozen"):
        config.store.batch_size = 20  # type: ignore[misc]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads(path: Path) -> None:
    config = load_config(path)

    assert config.version == 1


# -- files that are not configurations ----------------------------------------


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path)


def test_non_yaml_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "comparator: {kind: exact\nstore: [\n")

    with pytest.raises(ConfigError, match=r"shadow\.yaml is not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("text", ["- exact\n- normalized\n", "just a sentence\n", "42\n"])
def test_non_mapping_file_is_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as failure:
        load_config(path)

    assert str(failure.value) == f"{path}: expected a mapping of settings at the top level"


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "store: {batch_size: many}\n")

    with pytest.raises(ConfigError, match=f"invalid configuration in {path}:"):
        load_config(path)


# -- validation messages -------------------------------------------------------


def test_unknown_top_level_key() -> None:
    assert lines_of({"comparater": {"kind": "exact"}}) == ["comparater: unknown setting"]


def test_unknown_nested_key() -> None:
    raw = {"mapping": {"events": {"event_id": "id", "segments": {"a": "b"}}}}

    assert lines_of(raw) == ["mapping.events.segments: unknown setting"]


def test_unknown_key_inside_a_comparator() -> None:
    raw = {"comparator": {"kind": "set", "treshold": 0.5}}

    assert lines_of(raw) == ["comparator.treshold: unknown setting"]


def test_wrong_type_names_path_expectation_and_value() -> None:
    assert lines_of({"store": {"batch_size": "many"}}) == [
        "store.batch_size: input should be a valid integer, unable to parse string as an "
        "integer, got 'many'"
    ]


def test_out_of_range_number() -> None:
    assert lines_of({"comparator": {"kind": "set", "threshold": 2}}) == [
        "comparator.threshold: input should be less than or equal to 1, got 2"
    ]


def test_wrong_type_of_a_whole_section() -> None:
    assert lines_of({"store": ["path"]}) == ["store: expected a mapping of settings, got a list"]


def test_a_section_written_as_a_string_names_no_internal_class() -> None:
    assert lines_of({"candidate": "a:b"}) == [
        "candidate: expected a mapping of settings, got 'a:b'"
    ]


def test_unsupported_version() -> None:
    assert lines_of({"version": 2}) == ["version: input should be 1, got 2"]


def test_missing_required_setting() -> None:
    assert lines_of({"candidate": {"name": "triage"}}) == [
        "candidate.callable: required setting is missing"
    ]


def test_missing_function_of_a_custom_comparator() -> None:
    assert lines_of({"comparator": {"kind": "custom"}}) == [
        "comparator.function: required setting is missing"
    ]


def test_missing_fields_of_a_fields_comparator() -> None:
    assert lines_of({"comparator": {"kind": "fields"}}) == [
        "comparator.fields: required setting is missing"
    ]


def test_missing_fields_of_a_named_fields_comparator() -> None:
    assert lines_of({"comparators": {"per_field": {"kind": "fields"}}}) == [
        "comparators.per_field.fields: required setting is missing"
    ]


def test_empty_fields_of_a_fields_comparator() -> None:
    (line,) = lines_of({"comparator": {"kind": "fields", "fields": {}}})

    assert line.startswith("comparator.fields: ")
    assert "at least 1 item" in line


def test_bad_comparator_kind() -> None:
    assert lines_of({"comparator": {"kind": "fuzzy"}}) == [
        f"comparator.kind: expected one of {KINDS}, got 'fuzzy'"
    ]


def test_missing_comparator_kind() -> None:
    assert lines_of({"comparator": {"prediction_path": "category"}}) == [
        f"comparator.kind: required; expected one of {KINDS}"
    ]


def test_missing_kind_in_a_nested_fields_comparator() -> None:
    raw = {"comparator": {"kind": "fields", "fields": {"category": {"prediction_path": "c"}}}}

    assert lines_of(raw) == [f"comparator.fields.category.kind: required; expected one of {KINDS}"]


def test_bad_kind_in_a_nested_fields_comparator() -> None:
    raw = {"comparator": {"kind": "fields", "fields": {"category": {"kind": "bogus"}}}}

    assert lines_of(raw) == [
        f"comparator.fields.category.kind: expected one of {KINDS}, got 'bogus'"
    ]


def test_error_deep_inside_named_nested_comparators() -> None:
    raw = {"comparators": {"strict": {"kind": "fields", "fields": {
        "outer": {"kind": "fields", "fields": {"tags": {"kind": "set", "threshold": -1}}},
    }}}}

    assert lines_of(raw) == [
        "comparators.strict.fields.outer.fields.tags.threshold: "
        "input should be greater than or equal to 0, got -1"
    ]


@pytest.mark.parametrize("value", ["classify", "my_triage.classify", "my-triage:classify",
                                   "my_triage:", ":classify", "a:b:c"])
def test_bad_module_function_form_of_a_candidate(value: str) -> None:
    assert lines_of({"candidate": {"callable": value}}) == [
        f"candidate.callable: expected the form module:function, got {value!r}"
    ]


def test_bad_module_function_form_of_a_custom_comparator() -> None:
    assert lines_of({"comparator": {"kind": "custom", "function": "compare.py"}}) == [
        "comparator.function: expected the form module:function, got 'compare.py'"
    ]


def test_named_comparator_may_not_shadow_a_kind() -> None:
    (line,) = lines_of({"comparators": {"exact": {"kind": "normalized"}}})

    assert line.startswith("comparators: ")
    assert "['exact'] are built-in comparator kinds" in line


def test_segment_of_wrong_type_names_the_path() -> None:
    lines = lines_of({"mapping": {"events": {"segment": 5}}})

    assert lines and all(line.startswith("mapping.events.segment: ") for line in lines)


def test_segment_table_entry_of_wrong_type_names_the_entry() -> None:
    # `tier:` left empty in YAML is a null, not a path
    lines = lines_of({"mapping": {"events": {"segment": {"channel": "via.channel", "tier": None}}}})

    assert lines == ["mapping.events.segment.tier: input should be a valid string, got None"]


def test_every_error_is_reported_at_once() -> None:
    raw = {
        "colour": "blue",
        "candidate": {"callable": "nope"},
        "comparator": {"kind": "fuzzy"},
        "store": {"batch_size": 0},
    }

    assert lines_of(raw) == [
        "candidate.callable: expected the form module:function, got 'nope'",
        f"comparator.kind: expected one of {KINDS}, got 'fuzzy'",
        "store.batch_size: input should be greater than or equal to 1, got 0",
        "colour: unknown setting",
    ]


# -- store.path ----------------------------------------------------------------


def test_relative_store_path_is_resolved_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf", "store: {path: data/shadow.duckdb}\n")

    config = load_config(path)

    assert config.store.path == str(tmp_path / "conf" / "data" / "shadow.duckdb")


def test_relative_store_path_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", "store: {path: shadow.duckdb}\n")
    monkeypatch.chdir(tmp_path)

    config = load_config(Path("conf/shadow.yaml"))

    assert Path(config.store.path or "").resolve() == tmp_path / "conf" / "shadow.duckdb"


def test_absolute_store_path_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "s.duckdb"
    path = write(tmp_path, f"store: {{path: {target}}}\n")

    assert load_config(path).store.path == str(target)


def test_store_path_is_not_resolved_by_parse_config() -> None:
    assert parse_config({"store": {"path": "s.duckdb"}}).store.path == "s.duckdb"


# -- comparator_named ----------------------------------------------------------

NAMED = {
    "comparator": {"kind": "normalized", "prediction_path": "category"},
    "comparators": {
        "strict": {"kind": "exact", "prediction_path": "category"},
        "loose_tags": {"kind": "set", "threshold": 0.5},
    },
}


def test_comparator_named_none_is_the_default_comparator() -> None:
    config = parse_config(NAMED)

    assert config.comparator_named(None) == config.comparator


def test_comparator_named_picks_a_named_comparator() -> None:
    config = parse_config(NAMED)

    assert config.comparator_named("strict") == config.comparators["strict"]
    loose = config.comparator_named("loose_tags")
    assert isinstance(loose, SetSpec) and loose.threshold == 0.5


@pytest.mark.parametrize(
    ("kind", "spec_type"),
    [("exact", ExactSpec), ("normalized", NormalizedSpec), ("set", SetSpec),
     ("numeric", NumericSpec)],
)
def test_comparator_named_builtin_kind_has_defaults(kind: str, spec_type: type) -> None:
    spec = parse_config(NAMED).comparator_named(kind)

    assert type(spec) is spec_type
    assert spec.prediction_path is None and spec.outcome_path is None


def test_comparator_named_kind_with_parameters_is_the_configured_one() -> None:
    config = parse_config(
        {"comparator": {"kind": "custom", "function": "my_triage.compare:same_category"}}
    )

    assert config.comparator_named("custom") == config.comparator


@pytest.mark.parametrize("kind", ["fields", "custom"])
def test_comparator_named_kind_with_parameters_needs_a_definition(kind: str) -> None:
    config = parse_config(NAMED)

    with pytest.raises(ConfigError, match=f"--compare {kind}: this kind needs parameters"):
        config.comparator_named(kind)


def test_comparator_named_unknown_name_lists_the_choices() -> None:
    config = parse_config(NAMED)

    with pytest.raises(ConfigError) as failure:
        config.comparator_named("fuzzy")

    assert str(failure.value) == (
        "--compare fuzzy: no such comparator; expected one of "
        "['exact', 'loose_tags', 'normalized', 'numeric', 'set', 'strict']"
    )


def test_a_secret_written_into_a_header_is_refused() -> None:
    (line,) = lines_of({"candidate": {"kind": "http", "url": "http://127.0.0.1:1/p",
                                      "headers": {"X-Api-Key": "abc123"}}})

    assert line.startswith("candidate.headers: header 'X-Api-Key' carries a secret")
    assert "abc123" not in line


def test_a_secret_header_naming_an_environment_variable_is_accepted() -> None:
    config = parse_config({"candidate": {"kind": "http", "url": "http://127.0.0.1:1/p",
                                         "headers": {"Authorization": "Bearer ${TOKEN}",
                                                     "X-Team": "support"}}})

    assert isinstance(config.candidate, HttpCandidateSpec)
    assert config.candidate.headers["Authorization"] == "Bearer ${TOKEN}"
