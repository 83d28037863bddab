from __future__ import annotations

import math
from typing import Any

import pytest

from shadow.compare.comparators import Comparator, Judgement, build_comparator
from shadow.config.file import parse_config
from shadow.core.errors import ConfigError


def comparator(**spec: Any) -> Comparator:
    return build_comparator(parse_config({"comparator": spec}).comparator)


def agree(spec: dict[str, Any], output: Any, outcome: Any) -> bool:
    return comparator(**spec).compare(output, outcome).agree


# custom comparator functions, referred to as tests.compare.test_comparators:NAME


def same_label(output: Any, outcome: Any) -> bool:
    return bool(output["label"] == outcome["label"])


def explodes(output: Any, outcome: Any) -> bool:
    raise ValueError("no label here")


def says_yes(output: Any, outcome: Any) -> str:
    return "yes"


def says_one(output: Any, outcome: Any) -> int:
    return 1


def says_nothing(output: Any, outcome: Any) -> None:
    return None


NOT_CALLABLE = 42

EXACT = {"kind": "exact"}
NORMALIZED = {"kind": "normalized"}


# -- exact -------------------------------------------------------------------


def test_exact_agrees_on_equal_strings() -> None:
    assert comparator(**EXACT).compare("billing", "billing") == Judgement(True, {})


def test_exact_disagrees_on_different_strings() -> None:
    assert comparator(**EXACT).compare("billing", "Billing") == Judgement(False, {})


def test_exact_is_the_default_comparator() -> None:
    assert parse_config({}).comparator.kind == "exact"


def test_exact_keeps_true_apart_from_one() -> None:
    assert not agree(EXACT, True, 1)


def test_exact_keeps_false_apart_from_zero() -> None:
    assert not agree(EXACT, False, 0)


def test_exact_keeps_numeric_text_apart_from_number() -> None:
    assert not agree(EXACT, "1", 1)


def test_exact_treats_one_and_one_point_zero_as_equal() -> None:
    assert agree(EXACT, 1, 1.0)


def test_exact_keeps_booleans_apart_from_numbers_inside_lists() -> None:
    assert not agree(EXACT, [True, 0], [1, False])


def test_exact_ignores_object_key_order() -> None:
    assert agree(EXACT, {"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1})


def test_exact_respects_list_order() -> None:
    assert not agree(EXACT, [1, 2], [2, 1])


def test_exact_agrees_on_two_nulls() -> None:
    assert agree(EXACT, None, None)


def test_exact_disagrees_on_null_and_empty_string() -> None:
    assert not agree(EXACT, None, "")


def test_exact_disagrees_on_extra_object_key() -> None:
    assert not agree(EXACT, {"a": 1}, {"a": 1, "b": None})


def test_exact_compares_nested_values_deeply() -> None:
    assert agree(EXACT, {"a": [{"b": 1.0}]}, {"a": [{"b": 1}]})


# -- paths -------------------------------------------------------------------


def test_prediction_and_outcome_paths_select_the_compared_values() -> None:
    spec = {**EXACT, "prediction_path": "label", "outcome_path": "ticket.category"}
    assert agree(spec, {"label": "billing", "score": 0.9}, {"ticket": {"category": "billing"}})


def test_path_can_index_a_list() -> None:
    assert agree(
        {**EXACT, "prediction_path": "tags.0", "outcome_path": "tag"},
        {"tags": ["urgent", "vip"]},
        {"tag": "urgent"},
    )


def test_missing_prediction_path_disagrees_with_a_note() -> None:
    judgement = comparator(**EXACT, prediction_path="category").compare({}, "billing")
    assert judgement == Judgement(False, {}, "prediction has no value at 'category'")


def test_missing_outcome_path_disagrees_with_a_note() -> None:
    judgement = comparator(**EXACT, outcome_path="category").compare("billing", {})
    assert judgement == Judgement(False, {}, "outcome has no value at 'category'")


def test_missing_path_on_both_sides_agrees() -> None:
    assert agree({**EXACT, "prediction_path": "x", "outcome_path": "x"}, {}, {})


def test_null_at_path_is_a_value_not_missing() -> None:
    judgement = comparator(**EXACT, prediction_path="x", outcome_path="x").compare({"x": None}, {})
    assert judgement.note == "outcome has no value at 'x'"


def test_paths_apply_to_every_kind() -> None:
    spec = {"kind": "numeric", "abs_tol": 1, "prediction_path": "amount", "outcome_path": "paid"}
    assert agree(spec, {"amount": 10}, {"paid": "10.5"})


# -- normalized --------------------------------------------------------------


def test_normalized_ignores_case() -> None:
    assert agree(NORMALIZED, "Billing", "BILLING")


def test_normalized_casefolds_beyond_lowercase() -> None:
    assert agree(NORMALIZED, "Straße", "STRASSE")


def test_normalized_applies_nfkc() -> None:
    assert agree(NORMALIZED, "ｆｕｌｌｗｉｄｔｈ ﬁle №1", "fullwidth file no1")


def test_normalized_strips_and_collapses_white_space() -> None:
    assert agree(NORMALIZED, "  refund\t\n requested  ", "refund requested")


def test_normalized_treats_non_breaking_space_as_white_space() -> None:
    assert agree(NORMALIZED, "refund\u00a0requested", "refund requested")


def test_normalized_does_not_remove_inner_white_space() -> None:
    assert not agree(NORMALIZED, "refund requested", "refundrequested")


def test_normalized_normalizes_strings_inside_lists_and_objects() -> None:
    assert agree(NORMALIZED, {"tags": [" VIP ", "Urgent"]}, {"tags": ["vip", "urgent"]})


def test_normalized_leaves_object_keys_alone() -> None:
    assert not agree(NORMALIZED, {"Label": "a"}, {"label": "a"})


def test_normalized_still_keeps_types_apart() -> None:
    assert not agree(NORMALIZED, "1", 1)


# -- set ---------------------------------------------------------------------


def test_set_requires_identical_sets_by_default() -> None:
    assert agree({"kind": "set"}, ["a", "b"], ["b", "a"])


def test_set_disagrees_on_any_difference_by_default() -> None:
    assert not agree({"kind": "set"}, ["a", "b"], ["a"])


def test_set_ignores_duplicates() -> None:
    assert agree({"kind": "set"}, ["a", "a", "b"], ["b", "a"])


def test_set_agrees_at_exactly_the_threshold() -> None:
    a, b = {"a", "b", "c"}, {"b", "c", "d"}
    jaccard = len(a & b) / len(a | b)
    assert agree({"kind": "set", "threshold": jaccard}, ["a", "b", "c"], ["b", "c", "d"])


def test_set_disagrees_just_below_the_threshold() -> None:
    a, b = {"a", "b", "c"}, {"b", "c", "d"}
    threshold = math.nextafter(len(a & b) / len(a | b), 1.0)
    assert not agree({"kind": "set", "threshold": threshold}, ["a", "b", "c"], ["b", "c", "d"])


def test_set_agrees_on_two_empty_lists() -> None:
    assert agree({"kind": "set"}, [], [])


def test_set_treats_null_as_empty_list() -> None:
    assert agree({"kind": "set"}, None, [])


def test_set_disagrees_on_empty_and_non_empty() -> None:
    assert not agree({"kind": "set", "threshold": 0.5}, [], ["a"])


def test_set_treats_a_scalar_as_one_element_list() -> None:
    assert agree({"kind": "set"}, "vip", ["vip"])


def test_set_compares_elements_with_json_equality() -> None:
    assert agree({"kind": "set"}, [1, {"a": 1, "b": 2}], [{"b": 2, "a": 1.0}, 1.0])


def test_set_keeps_true_apart_from_one() -> None:
    assert not agree({"kind": "set"}, [True], [1])


def test_set_with_zero_threshold_agrees_on_disjoint_lists() -> None:
    assert agree({"kind": "set", "threshold": 0.0}, ["a"], ["b"])


# -- numeric -----------------------------------------------------------------


def test_numeric_agrees_on_equal_numbers_by_default() -> None:
    assert agree({"kind": "numeric"}, 3, 3.0)


def test_numeric_disagrees_on_different_numbers_by_default() -> None:
    assert not agree({"kind": "numeric"}, 3, 3.5)


def test_numeric_agrees_at_the_absolute_tolerance() -> None:
    assert agree({"kind": "numeric", "abs_tol": 0.5}, 1.0, 1.5)


def test_numeric_disagrees_just_beyond_the_absolute_tolerance() -> None:
    assert not agree({"kind": "numeric", "abs_tol": 0.5}, 1.0, math.nextafter(1.5, 2.0))


def test_numeric_relative_tolerance_scales_with_the_larger_value() -> None:
    assert agree({"kind": "numeric", "rel_tol": 0.25}, 75, 100)


def test_numeric_disagrees_just_beyond_the_relative_tolerance() -> None:
    assert not agree({"kind": "numeric", "rel_tol": 0.25}, 74, 100)


def test_numeric_uses_the_larger_of_the_two_tolerances() -> None:
    spec = {"kind": "numeric", "abs_tol": 2, "rel_tol": 0.01}
    assert agree(spec, 10, 12) and agree(spec, 1000, 1010) and not agree(spec, 1000, 1011)


def test_numeric_accepts_numeric_text() -> None:
    assert agree({"kind": "numeric"}, " 12.50 ", 12.5)


def test_numeric_accepts_exponent_text() -> None:
    assert agree({"kind": "numeric"}, "1e3", 1000)


def test_numeric_rejects_non_numeric_text_with_a_note() -> None:
    judgement = comparator(kind="numeric").compare("twelve", 12)
    assert judgement == Judgement(False, {}, "prediction is not a finite number: 'twelve'")


def test_numeric_rejects_booleans() -> None:
    judgement = comparator(kind="numeric").compare(1, True)
    assert judgement == Judgement(False, {}, "outcome is not a finite number: True")


def test_numeric_rejects_nan() -> None:
    judgement = comparator(kind="numeric", abs_tol=1e9).compare(math.nan, math.nan)
    assert not judgement.agree and judgement.note is not None


def test_numeric_rejects_nan_text() -> None:
    assert not agree({"kind": "numeric", "abs_tol": 1e9}, "nan", 1)


def test_numeric_rejects_infinity() -> None:
    assert not agree({"kind": "numeric"}, math.inf, math.inf)


def test_numeric_rejects_null() -> None:
    assert comparator(kind="numeric").compare(None, 1).note == (
        "prediction is not a finite number: None"
    )


def test_numeric_rejects_an_integer_too_large_for_a_float() -> None:
    assert not agree({"kind": "numeric"}, 10**400, 10**400)


# -- fields ------------------------------------------------------------------

FIELDS = {
    "kind": "fields",
    "fields": {
        "category": {"kind": "normalized"},
        "priority": {"kind": "exact"},
        "amount": {"kind": "numeric", "abs_tol": 1},
    },
}


def test_fields_agree_when_every_field_agrees() -> None:
    judgement = comparator(**FIELDS).compare(
        {"category": "Billing", "priority": "high", "amount": 10, "extra": 1},
        {"category": "billing", "priority": "high", "amount": 10.5},
    )
    assert judgement == Judgement(True, {"category": True, "priority": True, "amount": True})


def test_fields_report_a_verdict_per_field() -> None:
    judgement = comparator(**FIELDS).compare(
        {"category": "billing", "priority": "low", "amount": 10},
        {"category": "billing", "priority": "high", "amount": 20},
    )
    assert judgement == Judgement(False, {"category": True, "priority": False, "amount": False})


def test_fields_missing_on_one_side_disagrees_with_a_note() -> None:
    judgement = comparator(**FIELDS).compare(
        {"category": "billing", "amount": 10},
        {"category": "billing", "priority": "high", "amount": 10},
    )
    assert judgement.fields["priority"] is False
    assert judgement.note == "priority: prediction has no value at 'priority'"


def test_fields_missing_on_both_sides_agrees() -> None:
    judgement = comparator(**FIELDS).compare(
        {"category": "a", "amount": 1}, {"category": "a", "amount": 1}
    )
    assert judgement == Judgement(True, {"category": True, "priority": True, "amount": True})


def test_fields_null_field_is_compared_as_a_value() -> None:
    assert (
        comparator(**FIELDS)
        .compare(
            {"category": None, "priority": None, "amount": 1},
            {"category": None, "priority": None, "amount": 1},
        )
        .agree
    )


def test_fields_carry_sub_comparator_notes() -> None:
    judgement = comparator(**FIELDS).compare(
        {"category": "a", "priority": "p", "amount": "lots"},
        {"category": "a", "priority": "p", "amount": 1},
    )
    assert judgement.note == "amount: prediction is not a finite number: 'lots'"


def test_fields_disagree_on_every_field_when_a_side_is_not_an_object() -> None:
    judgement = comparator(**FIELDS).compare("billing", {"category": "billing"})
    assert judgement == Judgement(
        False,
        {"category": False, "priority": False, "amount": False},
        "prediction is not an object",
    )


def test_fields_name_both_sides_when_neither_is_an_object() -> None:
    judgement = comparator(**FIELDS).compare([1], None)
    assert judgement.note == "prediction is not an object; outcome is not an object"


def test_fields_accept_dotted_paths() -> None:
    spec = {
        "kind": "fields",
        "fields": {"customer.tier": {"kind": "exact"}, "tags.0": {"kind": "exact"}},
    }
    judgement = comparator(**spec).compare(
        {"customer": {"tier": "gold", "id": 1}, "tags": ["vip"]},
        {"customer": {"tier": "gold", "id": 2}, "tags": ["new"]},
    )
    assert judgement == Judgement(False, {"customer.tier": True, "tags.0": False})


def test_nested_fields_report_inner_verdicts_under_the_outer_name() -> None:
    spec = {
        "kind": "fields",
        "fields": {
            "label": {"kind": "exact"},
            "customer": {
                "kind": "fields",
                "fields": {"tier": {"kind": "exact"}, "region": {"kind": "normalized"}},
            },
        },
    }
    judgement = comparator(**spec).compare(
        {"label": "x", "customer": {"tier": "gold", "region": " EU "}},
        {"label": "x", "customer": {"tier": "silver", "region": "eu"}},
    )
    assert judgement == Judgement(
        False,
        {"label": True, "customer": False, "customer.tier": False, "customer.region": True},
    )


def test_field_comparator_applies_its_own_paths() -> None:
    spec = {
        "kind": "fields",
        "fields": {"ticket": {"kind": "exact", "prediction_path": "queue", "outcome_path": "team"}},
    }
    assert agree(spec, {"ticket": {"queue": "billing"}}, {"ticket": {"team": "billing"}})


def test_fields_comparator_applies_its_paths_before_the_fields() -> None:
    spec = {**FIELDS, "prediction_path": "result"}
    output = {"result": {"category": "a", "priority": "p", "amount": 1}}
    assert agree(spec, output, {"category": "a", "priority": "p", "amount": 1})


# -- custom ------------------------------------------------------------------


def test_custom_function_decides_agreement() -> None:
    custom = comparator(kind="custom", function="tests.compare.test_comparators:same_label")
    assert custom.compare({"label": "a", "x": 1}, {"label": "a"}) == Judgement(True, {})
    assert custom.compare({"label": "a"}, {"label": "b"}) == Judgement(False, {})


def test_custom_function_that_raises_disagrees_with_a_note() -> None:
    judgement = comparator(kind="custom",
                           function="tests.compare.test_comparators:explodes").compare(1, 1)
    assert judgement == Judgement(False, {}, "custom comparator raised ValueError: no label here")


def test_custom_function_that_fails_on_unexpected_input_disagrees() -> None:
    judgement = comparator(kind="custom",
                           function="tests.compare.test_comparators:same_label").compare(
        "not an object", {"label": "a"}
    )
    assert not judgement.agree and judgement.note is not None
    assert judgement.note.startswith("custom comparator raised TypeError")


@pytest.mark.parametrize(
    ("function", "returned"),
    [("says_yes", "str"), ("says_one", "int"), ("says_nothing", "NoneType")],
)
def test_custom_function_returning_a_non_bool_disagrees_with_a_note(
    function: str, returned: str
) -> None:
    path = f"tests.compare.test_comparators:{function}"
    judgement = comparator(kind="custom", function=path).compare(1, 1)
    assert judgement == Judgement(
        False, {}, f"custom comparator {path} returned {returned}, not a bool"
    )


def test_custom_module_that_does_not_import_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no_such_module_xyz:fn"):
        comparator(kind="custom", function="no_such_module_xyz:fn")


def test_custom_function_that_does_not_exist_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="tests.compare.test_comparators:no_such_function"):
        comparator(kind="custom", function="tests.compare.test_comparators:no_such_function")


def test_custom_attribute_that_is_not_callable_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="NOT_CALLABLE is not callable"):
        comparator(kind="custom", function="tests.compare.test_comparators:NOT_CALLABLE")


def test_custom_path_without_a_function_is_rejected_by_the_config() -> None:
    with pytest.raises(ConfigError, match="module:function"):
        comparator(kind="custom", function="tests.compare.test_comparators")


def test_custom_function_inside_fields_is_imported_at_build_time() -> None:
    spec = {"kind": "fields", "fields": {"x": {"kind": "custom", "function": "nowhere_xyz:fn"}}}
    with pytest.raises(ConfigError, match="nowhere_xyz:fn"):
        comparator(**spec)


# -- names -------------------------------------------------------------------


def test_name_starts_with_the_kind() -> None:
    assert comparator(kind="set", threshold=0.5).name.startswith("set:")


def test_name_has_a_twelve_digit_fingerprint() -> None:
    fingerprint = comparator(kind="exact").name.removeprefix("exact:")
    assert len(fingerprint) == 12 and int(fingerprint, 16) >= 0


def test_name_is_stable_for_the_same_configuration() -> None:
    assert comparator(kind="set", threshold=0.5).name == comparator(kind="set", threshold=0.5).name


def test_name_ignores_spelling_out_a_default() -> None:
    assert comparator(kind="set").name == comparator(kind="set", threshold=1.0).name


def test_name_changes_when_a_parameter_changes() -> None:
    assert comparator(kind="set", threshold=0.5).name != comparator(kind="set", threshold=0.6).name


def test_name_changes_when_a_path_changes() -> None:
    assert comparator(kind="exact", prediction_path="a").name != comparator(kind="exact").name


def test_name_changes_when_a_nested_field_changes() -> None:
    loose = comparator(kind="fields", fields={"amount": {"kind": "numeric", "abs_tol": 1}})
    strict = comparator(kind="fields", fields={"amount": {"kind": "numeric", "abs_tol": 0}})
    assert loose.name != strict.name
