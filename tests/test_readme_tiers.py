"""The README's "Tiers and reviews": the support desk's configuration loads and gives
each action the tier the text says; the proposal shown is valid JSON with the review id
its values make."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from rollout.tiers import Assessment, Policy
from shadow.config.file import parse_config
from shadow.config.tiers import Tier

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text(encoding="utf-8")
SECTION = TEXT[TEXT.index("### Tiers and reviews"):TEXT.index("## Evaluation guards")]


def desk_config() -> dict[str, Any]:
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", SECTION, re.S)
               if b.startswith("# support desk")]
    loaded: dict[str, Any] = yaml.safe_load(block)
    return loaded


def act(tool: str, confidence: float) -> dict[str, Any]:
    return {"tool": tool, "arguments": {}, "confidence": confidence}


def test_the_support_desk_policy_gives_each_action_its_tier() -> None:
    config = parse_config(desk_config(), origin="README.md")
    rollout = config.rollout
    assert rollout is not None and rollout.tiers is not None and rollout.review_sink
    assert (rollout.review_sink.kind, rollout.review_sink.topic) == ("kafka", "desk.reviews")
    policy = Policy(rollout.tiers)

    def tier(*actions: dict[str, Any]) -> Assessment:
        return policy.assess({"actions": list(actions)}, None)

    assert tier(act("add_tag", 0.3)) == Assessment(Tier.AUTO, "rules[0]")
    assert tier(act("send_reply", 0.7)) == Assessment(Tier.REVIEW, "rules[1]")
    assert tier(act("send_reply", 0.69)) == Assessment(Tier.HUMAN, "default")
    assert tier(act("issue_refund", 0.99)) == Assessment(Tier.HUMAN, "rules[2]")
    assert tier(act("add_tag", 0.9), act("send_reply", 0.9)) == Assessment(
        Tier.REVIEW, "rules[1]")
    assert tier(act("add_tag", 0.9), act("issue_refund", 0.9)).tier is Tier.HUMAN
    assert (rollout.tiers.evidence, rollout.tiers.redact) == (
        ["subject", "customer.plan"], ["customer.email"])


def test_the_proposal_shown_is_json_with_the_review_id_of_its_values() -> None:
    [shown] = re.findall(r"```json\n(.*?)```", SECTION, re.S)
    proposal = json.loads(shown)
    named = json.dumps([proposal["rollout"], proposal["event_id"], proposal["candidate"],
                        proposal["version"]], separators=(",", ":"))
    assert proposal["review_id"] == "rev_" + hashlib.sha256(named.encode()).hexdigest()[:32]
    assert proposal["actions"] == proposal["output"]["actions"]
