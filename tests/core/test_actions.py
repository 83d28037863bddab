"""Reading actions from an output or an outcome: what is an action, and what is a problem."""

from __future__ import annotations

from typing import Any

import pytest

from shadow.core.actions import Action, Actions, actions_of


def test_an_output_without_actions_proposes_none() -> None:
    for value in (None, "billing", 3, [1, 2], {"label": "billing"}):
        assert actions_of(value) == Actions()


def test_actions_keep_their_order_arguments_id_and_confidence() -> None:
    value = {"reply": "done", "actions": [
        {"tool": "update_ticket", "arguments": {"priority": "high"}, "id": "call_1"},
        {"tool": "send_reply", "arguments": {"body": "hi"}, "confidence": 0.75},
        {"tool": "close_ticket"},
    ]}
    assert actions_of(value) == Actions((
        Action("update_ticket", {"priority": "high"}, "call_1"),
        Action("send_reply", {"body": "hi"}, None, 0.75),
        Action("close_ticket", {}),
    ), at=(0, 1, 2))


def test_an_action_serialises_to_the_shape_it_was_read_from() -> None:
    item = {"tool": "issue_refund", "arguments": {"amount": 20}, "id": "c", "confidence": 1.0}
    (action,) = actions_of({"actions": [item]}).actions
    assert action.as_dict() == item
    assert Action("t").as_dict() == {"tool": "t", "arguments": {}}


@pytest.mark.parametrize(("item", "problem"), [
    ("refund", "actions[1]: expected an object with tool and arguments, got str"),
    ({"arguments": {}}, "actions[1]: tool: expected a non-empty string, got null"),
    ({"tool": ""}, "actions[1]: tool: expected a non-empty string, got str"),
    ({"tool": "t", "arguments": [1]}, "actions[1]: arguments: expected an object, got list"),
    ({"tool": "t", "id": 7}, "actions[1]: id: expected a string, got int"),
    ({"tool": "t", "confidence": 1.5},
     "actions[1]: confidence: expected a number between 0 and 1, got 1.5"),
    ({"tool": "t", "confidence": True},
     "actions[1]: confidence: expected a number between 0 and 1, got True"),
    ({"tool": "t", "args": {}}, "actions[1]: unknown keys ['args']"),
])
def test_an_element_that_is_not_an_action_is_named_never_dropped_silently(
        item: Any, problem: str) -> None:
    read = actions_of({"actions": [{"tool": "ok"}, item, {"tool": "also_ok"}]})
    assert read.actions == (Action("ok"), Action("also_ok"))
    assert read.problems == (problem,)
    assert read.indexed() == [(0, Action("ok")), (2, Action("also_ok"))]


def test_actions_that_are_not_a_list_are_one_problem() -> None:
    assert actions_of({"actions": {"tool": "t"}}) == Actions(
        problems=("actions: expected a list, got dict",))
