"""Hard checks on proposed actions: forbidden tools, numeric bounds, patterns and schemas
on arguments, each violation naming the rule, the tool, the argument and the action;
and a violating live action is never published."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rollout.controller import Controller
from rollout.runtime import LiveRollout
from rollout.state import Action
from shadow.candidates import CallableCandidate
from shadow.candidates.constraints import check_label
from shadow.compare.comparators import build_comparator
from shadow.compare.step import compare
from shadow.config.comparators import ExactSpec
from shadow.config.file import parse_config
from shadow.config.rollout import RolloutSpec
from shadow.core.errors import ConfigError
from shadow.core.models import Event, Prediction
from shadow.pipeline.runner import Pipeline
from shadow.store.database import Store
from shadow.testing import ListSource, RecordingSink
from tests.candidates.test_constraints import checks
from tests.clock import SteppingClock

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def proposing(*actions: Any, **rest: Any) -> dict[str, Any]:
    return {"actions": list(actions), **rest}


def refund(amount: Any, **more: Any) -> dict[str, Any]:
    return {"tool": "issue_refund", "arguments": {"amount": amount, **more}}


REPLY = {"tool": "send_reply", "arguments": {"body": "Sorry for the trouble"}}


# -- each rule on constructed outputs ------------------------------------------------


def test_a_forbidden_tool_is_a_violation_at_every_call_of_it() -> None:
    no_deletes = checks({"kind": "action", "tool": "delete_account", "forbidden": True})
    delete = {"tool": "delete_account", "arguments": {"customer": "c1"}}

    assert no_deletes.violations(proposing(REPLY, delete, delete)) == (
        "action:forbidden delete_account is a forbidden tool (actions[1])",
        "action:forbidden delete_account is a forbidden tool (actions[2])",
    )
    assert no_deletes.violations(proposing(REPLY)) == ()
    assert no_deletes.violations({"reply": "no actions at all"}) == ()


def test_a_maximum_refund_amount() -> None:
    cap = checks({"kind": "action", "name": "refund_cap", "tool": "issue_refund",
                  "argument": "amount", "max": 100})

    assert cap.violations(proposing(refund(100), refund(20.5), REPLY)) == ()
    assert cap.violations(proposing(refund(40), refund(250))) == (
        "refund_cap:max issue_refund.amount=250 is more than 100 (actions[1])",)
    assert cap.violations(proposing(refund("a lot"))) == (
        "refund_cap:max issue_refund.amount is not a number (str) (actions[0])",)
    # A call without the argument is not the bound's business (a schema can require it).
    assert cap.violations(proposing({"tool": "issue_refund", "arguments": {}})) == ()
    assert check_label("refund_cap:max issue_refund.amount=250 is more than 100") == (
        "refund_cap:max")


def test_minimum_and_maximum_together_on_a_nested_argument() -> None:
    window = checks({"kind": "action", "tool": "schedule_call", "argument": "slot.hours",
                     "min": 0.5, "max": 4})

    def call(hours: Any) -> dict[str, Any]:
        return {"tool": "schedule_call", "arguments": {"slot": {"hours": hours}}}

    assert window.violations(proposing(call(0.5), call(4), call(2))) == ()
    assert window.violations(proposing(call(0.25), call(True), call(5))) == (
        "action:min schedule_call.slot.hours=0.25 is less than 0.5 (actions[0])",
        "action:min schedule_call.slot.hours is not a number (bool) (actions[1])",
        "action:max schedule_call.slot.hours is not a number (bool) (actions[1])",
        "action:max schedule_call.slot.hours=5 is more than 4 (actions[2])",
    )


def test_an_argument_that_must_match_a_pattern() -> None:
    priority = checks({"kind": "action", "tool": "update_ticket", "argument": "priority",
                       "pattern": "^(low|normal|high)$"})

    def update(value: Any) -> dict[str, Any]:
        return {"tool": "update_ticket", "arguments": {"priority": value}}

    assert priority.violations(proposing(update("high"), update("low"))) == ()
    assert priority.violations(proposing(update("urgent!!"), update("high"))) == (
        "action:pattern update_ticket.priority does not match ^(low|normal|high)$ "
        "(actions[0])",)


def test_an_argument_or_all_arguments_must_fit_a_schema() -> None:
    reply_schema = {"type": "string", "maxLength": 20}
    args_schema = {"type": "object", "required": ["amount", "reason"],
                   "properties": {"reason": {"enum": ["damaged", "late"]}}}
    both = checks(
        {"kind": "action", "name": "short_reply", "tool": "send_reply", "argument": "body",
         "schema": reply_schema},
        {"kind": "action", "name": "refund_args", "tool": "issue_refund", "schema": args_schema},
    )

    fine = proposing(refund(10, reason="late"), {"tool": "send_reply", "arguments": {"body": "ok"}})
    assert both.violations(fine) == ()
    found = both.violations(proposing(refund(10), refund(5, reason="bored"), REPLY))
    assert found == (
        "short_reply:schema send_reply.body invalid at (root): "
        "'Sorry for the trouble' is too long (actions[2])",
        "refund_args:schema issue_refund arguments invalid at (root): "
        "'reason' is a required property (actions[0])",
        "refund_args:schema issue_refund arguments invalid at reason: "
        "'bored' is not one of ['damaged', 'late'] (actions[1])",
    )


def test_malformed_actions_are_violations_where_actions_are_checked() -> None:
    cap = checks({"kind": "action", "tool": "issue_refund", "argument": "amount", "max": 100})
    # A refund whose arguments cannot be read would slip past the bound: it is held back.
    unreadable = proposing(refund(10), {"tool": "issue_refund", "arguments": "amount=900"})

    assert cap.violations(unreadable) == (
        "actions:malformed actions[1]: arguments: expected an object, got str",)
    assert cap.violations({"actions": "refund 900"}) == (
        "actions:malformed actions: expected a list, got str",)
    without_action_checks = checks({"kind": "max_length", "max": 10_000})
    assert without_action_checks.violations(unreadable) == ()


def test_a_violation_names_the_actions_place_in_the_list_malformed_ones_counted() -> None:
    cap = checks({"kind": "action", "name": "refund_cap", "tool": "issue_refund",
                  "argument": "amount", "max": 100})
    # The third element of the list breaks the cap: it is actions[2], whatever came before.
    listed = proposing({"tool": ""}, refund(10), refund(500))
    assert set(cap.violations(listed)) == {
        "actions:malformed actions[0]: tool: expected a non-empty string, got str",
        "refund_cap:max issue_refund.amount=500 is more than 100 (actions[2])",
    }


def test_check_violations_add_to_those_the_candidate_found() -> None:
    cap = checks({"kind": "action", "tool": "issue_refund", "argument": "amount", "max": 100})
    found = Prediction(event_id="e1", candidate="agent", output=proposing(refund(500)),
                       latency_ms=1.0, predicted_at=START,
                       violations=("tool_call:unknown_tool call_9 names wipe_disk",))
    clean = replace(found, event_id="e2", output=proposing(refund(5)))

    checked = cap.apply([found, clean])

    assert checked[0].violations == (
        "tool_call:unknown_tool call_9 names wipe_disk",
        "action:max issue_refund.amount=500 is more than 100 (actions[0])",
    )
    assert checked[1] is clean


@pytest.mark.parametrize(("check", "message"), [
    ({"kind": "action", "tool": "issue_refund"},
     "candidate.checks.0: an action check needs a rule: forbidden, min, max, pattern or schema"),
    ({"kind": "action", "tool": "issue_refund", "max": 100},
     "candidate.checks.0.max: max needs the argument it applies to"),
    ({"kind": "action", "tool": "issue_refund", "pattern": "x"},
     "candidate.checks.0.pattern: pattern needs the argument it applies to"),
    ({"kind": "action", "tool": "issue_refund", "argument": "amount", "min": 10, "max": 5},
     "candidate.checks.0.max: max 5.0 is below min 10.0"),
    ({"kind": "action", "tool": "issue_refund", "argument": "note", "pattern": "("},
     "candidate.checks.0.pattern: not a valid regular expression"),
    ({"kind": "action", "tool": "issue_refund", "schema": {"type": 7}},
     "candidate.checks.0.schema: not a valid JSON schema"),
    ({"kind": "action", "tool": "issue_refund", "forbidden": True, "argument": "amount",
      "max": 1}, "candidate.checks.0: a forbidden tool needs no other rule"),
    ({"kind": "action", "forbidden": True},
     "candidate.checks.0.tool: required setting is missing"),
    ({"kind": "action", "tool": "issue_refund", "argument": "amount", "maximum": 1},
     "candidate.checks.0.maximum: unknown setting"),
])
def test_config_errors_name_the_key(check: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"candidate": {"callable": "tests.candidates.test_action_checks:agent",
                                    "checks": [check]}})
    assert message in str(caught.value)


# -- a live step with the real pipeline -----------------------------------------------


def agent(event: Event) -> dict[str, Any]:
    """Refunds the amount asked for, and replies."""
    amount = event.payload["amount"]
    return proposing(refund(amount), REPLY, reply="Refund on its way")


def test_a_violating_live_action_is_never_published(tmp_path: Path) -> None:
    amounts = [20, 250, 99, 100, 101, 5]
    clock = SteppingClock(START, timedelta(seconds=30))
    spec = RolloutSpec.model_validate({
        "name": "refunds", "steps": [{"percent": 0}, {"percent": 100}],
        "sink": {"kind": "file", "path": "unused.jsonl"}})
    comparator = build_comparator(ExactSpec())
    sink = RecordingSink()
    with Store(tmp_path / "s.duckdb") as store:
        controller = Controller(store, spec, rollout="refunds", candidate="agent", version="1",
                                comparator=comparator.name, now=clock)
        controller.sync()
        controller.command(Action.PROMOTE, actor="dana", reason="test", force=True)
        sink.open()
        live = LiveRollout(controller, sink, compare=lambda: compare(store, comparator, now=clock))
        with CallableCandidate(agent, name="agent", version="1") as candidate:
            candidate.checks = checks({"kind": "action", "name": "refund_cap",
                                       "tool": "issue_refund", "argument": "amount",
                                       "max": 100})
            Pipeline(store, candidate, comparator, now=clock, rollout=live).run([ListSource([
                {"event_id": f"e{i}", "key": f"k{i}", "occurred_at": START.isoformat(),
                 "payload": {"amount": amount}} for i, amount in enumerate(amounts)])])

        rows = store.db.execute(
            "SELECT event_id, mode, published_at IS NOT NULL, violations FROM predictions "
            "ORDER BY event_id").fetchall()
    over = {f"e{i}" for i, amount in enumerate(amounts) if amount > 100}
    assert over == {"e1", "e4"}
    assert all(mode == "live" for _, mode, _, _ in rows)
    assert {d.event_id for d in sink.published} == {f"e{i}" for i in range(6)} - over
    assert {e: (sent, violations) for e, _, sent, violations in rows if e in over} == {
        "e1": (False, ["refund_cap:max issue_refund.amount=250 is more than 100 (actions[0])"]),
        "e4": (False, ["refund_cap:max issue_refund.amount=101 is more than 100 (actions[0])"]),
    }
    assert all(d.output["actions"][0]["arguments"]["amount"] <= 100 for d in sink.published)
