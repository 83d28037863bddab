"""The template language of request bodies and prompts: paths only, no code."""

from __future__ import annotations

import pytest

from shadow.core.templates import TemplateError, render

CONTEXT = {
    "event_id": "e-1",
    "payload": {"subject": "Refund", "lines": [{"sku": "A"}, {"sku": "B"}], "n": 3},
    "segment": {"tier": "pro"},
}


def test_a_whole_placeholder_keeps_the_value_type() -> None:
    assert render({"a": "{{ payload.n }}", "b": "{{segment}}"}, CONTEXT) == {
        "a": 3, "b": {"tier": "pro"},
    }


def test_a_placeholder_inside_text_is_interpolated() -> None:
    assert render("Subject: {{ payload.subject }} ({{ payload.n }})", CONTEXT) == (
        "Subject: Refund (3)"
    )


def test_objects_inside_text_become_json() -> None:
    assert render("tier={{ segment }}", CONTEXT) == 'tier={"tier":"pro"}'


def test_list_indices_and_nested_templates() -> None:
    assert render(["{{ payload.lines.1.sku }}", {"id": "{{ event_id }}"}, 7], CONTEXT) == [
        "B", {"id": "e-1"}, 7,
    ]


def test_a_missing_path_is_an_error_naming_it() -> None:
    with pytest.raises(TemplateError, match="payload.body"):
        render("{{ payload.body }}", CONTEXT)


@pytest.mark.parametrize("text", ["{{ payload.subject.upper() }}", "{{ __import__('os') }}",
                                  "{% for x in y %}"])
def test_anything_but_a_path_is_left_as_plain_text(text: str) -> None:
    assert render(text, CONTEXT) == text
