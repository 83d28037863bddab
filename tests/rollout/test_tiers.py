"""The tier of a prediction under a policy: a table worked out by hand, and properties
that hold for any policy and any actions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.tiers import Assessment, Policy
from shadow.config.tiers import Tier, TiersSpec

AUTO, REVIEW, HUMAN = Tier.AUTO, Tier.REVIEW, Tier.HUMAN

DESK = Policy(TiersSpec.model_validate({
    "rules": [
        {"tool": "add_tag", "tier": "auto"},                                        # 0
        {"tool": "send_reply", "confidence": {"at_least": 0.8}, "tier": "review"},  # 1
        {"tool": "send_reply", "tier": "human"},                                    # 2
        {"tool": "issue_refund", "tier": "human"},                                  # 3
        {"label": "spam", "confidence": {"at_least": 0.9}, "tier": "auto"},         # 4
        {"label": ["billing", "shipping"], "tier": "review"},                       # 5
        {"label": 3, "tier": "auto"},                                               # 6
    ],
    "default": "human", "label_path": "category"}))


def act(tool: str, confidence: float | None = None) -> dict[str, Any]:
    action: dict[str, Any] = {"tool": tool, "arguments": {}}
    if confidence is not None:
        action["confidence"] = confidence
    return action


def acting(*actions: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"actions": list(actions), **more}


# (output, the prediction's confidence, tier, rule): worked out from the rules above.
TABLE = [
    (acting(act("add_tag")), None, AUTO, "rules[0]"),
    (acting(act("send_reply", 0.85)), None, REVIEW, "rules[1]"),
    (acting(act("send_reply", 0.8)), None, REVIEW, "rules[1]"),  # at_least is inclusive
    (acting(act("send_reply", 0.79)), 0.95, HUMAN, "rules[2]"),  # the action's own wins
    (acting(act("send_reply")), 0.9, REVIEW, "rules[1]"),  # else the prediction's
    (acting(act("send_reply")), None, HUMAN, "rules[2]"),  # no confidence: no band holds
    (acting(act("add_tag"), act("send_reply", 0.9)), None, REVIEW, "rules[1]"),
    (acting(act("add_tag"), act("issue_refund")), 0.99, HUMAN, "rules[3]"),
    (acting(act("send_reply", 0.5), act("issue_refund")), None, HUMAN, "rules[2]"),  # first
    (acting(act("close_ticket")), 0.99, HUMAN, "default"),
    (acting(act("add_tag"), category="billing"), None, AUTO, "rules[0]"),
    ({"category": "spam"}, 0.95, AUTO, "rules[4]"),
    ({"category": "spam"}, 0.9, AUTO, "rules[4]"),
    ({"category": "spam"}, 0.89, HUMAN, "default"),
    ({"category": "billing"}, 0.1, REVIEW, "rules[5]"),
    ({"category": "shipping"}, None, REVIEW, "rules[5]"),
    ({"category": 3}, None, AUTO, "rules[6]"),
    ({"category": True}, None, HUMAN, "default"),  # true is not the number 3
    ({"category": ["billing"]}, None, HUMAN, "default"),  # a list is no label
    ({"reply": "hello"}, 0.99, HUMAN, "default"),  # no label at the path
    (acting(), None, HUMAN, "default"),  # no actions: matched by label, and has none
]


@pytest.mark.parametrize(("output", "confidence", "tier", "rule"), TABLE)
def test_the_tier_of_a_usable_prediction(output: Any, confidence: float | None, tier: Tier,
                                         rule: str) -> None:
    assert DESK.assess(output, confidence) == Assessment(tier, rule)


@pytest.mark.parametrize(("flags", "rule"), [
    ({"error": True}, "error"), ({"abstained": True}, "abstained"),
    ({"violations": True}, "violation"),
    ({"error": True, "abstained": True, "violations": True}, "error"),
])
def test_failures_abstentions_and_violations_are_human_whatever_the_rules(
        flags: dict[str, bool], rule: str) -> None:
    everything_auto = Policy(TiersSpec.model_validate({"default": "auto"}))
    for policy in (DESK, everything_auto, Policy()):
        assert policy.assess(acting(act("add_tag")), 0.99, **flags) == Assessment(HUMAN, rule)


def test_the_label_is_the_whole_output_without_a_label_path() -> None:
    policy = Policy(TiersSpec.model_validate({"rules": [{"label": "spam", "tier": "auto"}]}))
    assert policy.assess("spam", None) == Assessment(AUTO, "rules[0]")
    assert policy.assess({"label": "spam"}, None) == Assessment(HUMAN, "default")


def test_without_a_policy_every_usable_prediction_is_auto() -> None:
    assert Policy().assess(acting(act("issue_refund")), None) == Assessment(AUTO, "default")
    assert Policy().assess("anything", 0.01) == Assessment(AUTO, "default")


TOOLS = ["add_tag", "send_reply", "issue_refund", "close_ticket"]
CONFIDENCE = st.one_of(st.none(), st.floats(0.0, 1.0))
ACTIONS = st.lists(st.builds(act, st.sampled_from(TOOLS), CONFIDENCE), min_size=1, max_size=5)
CARE = {AUTO: 0, REVIEW: 1, HUMAN: 2}


@settings(max_examples=300, deadline=None)
@given(actions=ACTIONS, confidence=CONFIDENCE, category=st.sampled_from(
    ["spam", "billing", "other"]))
def test_several_actions_take_the_most_careful_tier_of_each_alone(
        actions: list[dict[str, Any]], confidence: float | None, category: str) -> None:
    alone = [DESK.assess(acting(a, category=category), confidence) for a in actions]
    together = DESK.assess(acting(*actions, category=category), confidence)
    most = max(CARE[a.tier] for a in alone)
    assert CARE[together.tier] == most
    assert together == next(a for a in alone if CARE[a.tier] == most)
    assert DESK.assess(acting(*reversed(actions), category=category),
                       confidence).tier is together.tier


@settings(max_examples=200, deadline=None)
@given(actions=ACTIONS, confidence=CONFIDENCE)
def test_an_action_matches_its_first_rule_computed_by_hand(
        actions: list[dict[str, Any]], confidence: float | None) -> None:
    for action in actions:
        c = action.get("confidence", confidence)
        tool = action["tool"]
        if tool == "add_tag":
            expected = Assessment(AUTO, "rules[0]")
        elif tool == "send_reply" and c is not None and c >= 0.8:
            expected = Assessment(REVIEW, "rules[1]")
        elif tool == "send_reply":
            expected = Assessment(HUMAN, "rules[2]")
        elif tool == "issue_refund":
            expected = Assessment(HUMAN, "rules[3]")
        else:
            expected = Assessment(HUMAN, "default")
        assert DESK.assess(acting(action), confidence) == expected


def test_a_store_assesses_a_policy_without_rules_as_the_policy_does(tmp_path: Any) -> None:
    """The one-statement assessment of ``Policy().all_auto`` gives each prediction the tier
    and rule :meth:`Policy.assess` gives it, row by row."""
    from datetime import UTC, datetime

    from shadow.core.models import ErrorKind, Event, Prediction, PredictionError
    from shadow.store import reviews
    from shadow.store.database import Store
    from shadow.store.writes import StoredEvent, WriteBatch

    at = datetime(2026, 5, 4, tzinfo=UTC)
    outputs: list[dict[str, Any]] = [
        {"output": {"category": "billing"}},
        {"output": {"actions": [{"tool": "refund", "arguments": {"amount": 3}}]}},
        {"output": "plain", "confidence": 0.2},
        {"output": None, "error": PredictionError("Timeout", "slow", ErrorKind.TIMEOUT)},
        {"output": {"category": "x"}, "abstained": True},
        {"output": {"reply": "mail me at a@b.c"}, "violations": ("pii:email x",)},
    ]
    policy = Policy()
    assert policy.all_auto and not Policy(TiersSpec(default=Tier.HUMAN)).all_auto
    found = []
    for fast in (True, False):
        with Store(tmp_path / f"{fast}.duckdb") as store:
            events = [Event(event_id=f"e{i}", key=f"k{i}", occurred_at=at)
                      for i in range(len(outputs))]
            store.write(WriteBatch(
                events=[StoredEvent(e, "s", str(i)) for i, e in enumerate(events)],
                predictions=[Prediction(event_id=f"e{i}", candidate="c", latency_ms=1.0,
                                        predicted_at=at, **fields)
                             for i, fields in enumerate(outputs)]))
            if fast:
                assert reviews.assess_all_auto(store, "c", None) == len(outputs)
            else:
                rows = reviews.unassessed(store, "c", None, 100)
                reviews.record_assessed(store, "c", None, [reviews.Assessed(
                    r.event_id, (a := policy.assess(r.output, r.confidence, error=r.error,
                                                    abstained=r.abstained,
                                                    violations=r.violations)).tier.value,
                    a.rule, None) for r in rows])
            found.append(store.db.execute("SELECT event_id, tier, tier_rule FROM predictions "
                                          "ORDER BY event_id").fetchall())
    assert found[0] == found[1]
    assert [tier for _, tier, _ in found[0]] == ["auto", "auto", "auto", "human", "human",
                                                 "human"]
