"""The tier policy under ``rollout.tiers``: what loads, its defaults, and one error per
validation, each naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from shadow.config.file import parse_config
from shadow.config.tiers import Band, Tier, TierRule
from shadow.core.errors import ConfigError

CHAT = {"kind": "chat", "name": "desk", "base_url": "http://127.0.0.1:9/v1", "model": "m",
        "user": "{{ payload.subject }}",
        "tools": [{"function": {"name": name, "parameters": {"type": "object"}}}
                  for name in ("add_tag", "send_reply", "issue_refund")]}
SHADOW_ONLY = [{"percent": 0}]


def config(tiers: dict[str, Any], *, candidate: dict[str, Any] | None = None,
           **rollout: Any) -> dict[str, Any]:
    return {"candidate": candidate or CHAT,
            "rollout": {"steps": SHADOW_ONLY, "tiers": tiers, **rollout}}


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    return str(caught.value)


def test_a_policy_loads_with_one_tool_or_a_list_and_bands() -> None:
    loaded = parse_config(config({
        "rules": [{"tool": "add_tag", "tier": "auto"},
                  {"tool": ["send_reply"], "confidence": {"at_least": 0.8}, "tier": "review"},
                  {"label": "spam", "confidence": {"at_least": 0.5, "below": 0.9},
                   "tier": "auto"}],
        "default": "human", "evidence": ["subject"]}))
    tiers = loaded.rollout.tiers if loaded.rollout else None
    assert tiers is not None
    assert tiers.rules == [
        TierRule(tier=Tier.AUTO, tool=["add_tag"]),
        TierRule(tier=Tier.REVIEW, tool=["send_reply"], confidence=Band(at_least=0.8)),
        TierRule(tier=Tier.AUTO, label=["spam"], confidence=Band(at_least=0.5, below=0.9)),
    ]
    assert tiers.default is Tier.HUMAN
    assert tiers.evidence == ["subject"]


def test_the_default_tier_is_human() -> None:
    loaded = parse_config(config({"rules": []}))
    assert loaded.rollout is not None and loaded.rollout.tiers is not None
    assert loaded.rollout.tiers.default is Tier.HUMAN


def test_the_label_path_and_redaction_default_to_the_comparator_and_the_report() -> None:
    raw = config({"rules": [{"label": "spam", "tier": "auto"}]})
    raw["comparator"] = {"kind": "normalized", "prediction_path": "category"}
    raw["report"] = {"redact": ["requester.email"]}
    tiers = parse_config(raw).rollout.tiers  # type: ignore[union-attr]
    assert tiers is not None
    assert (tiers.label_path, tiers.redact) == ("category", ["requester.email"])


def test_a_label_path_written_wins_over_the_comparators() -> None:
    raw = config({"rules": [], "label_path": "label", "redact": []})
    raw["comparator"] = {"kind": "exact", "prediction_path": "category"}
    raw["report"] = {"redact": ["requester.email"]}
    tiers = parse_config(raw).rollout.tiers  # type: ignore[union-attr]
    assert tiers is not None
    assert (tiers.label_path, tiers.redact) == ("label", [])


def test_a_bad_tier_name_is_named() -> None:
    message = error_of(config({"rules": [{"tool": "add_tag", "tier": "maybe"}]}))
    assert "rollout.tiers.rules.0.tier: input should be 'auto', 'review' or 'human', " \
           "got 'maybe'" in message


def test_a_bad_default_is_named() -> None:
    assert "rollout.tiers.default: input should be 'auto', 'review' or 'human'" in error_of(
        config({"default": "robot"}))


def test_a_tool_the_chat_candidate_does_not_offer_is_named() -> None:
    message = error_of(config({"rules": [{"tool": ["add_tag", "delete_account"],
                                          "tier": "human"}]}))
    assert "rollout: tiers.rules[0].tool: 'delete_account' is not among the tools of " \
           "candidate 'desk': ['add_tag', 'issue_refund', 'send_reply']" in message


def test_any_tool_is_accepted_where_the_toolset_is_unknown() -> None:
    callable_candidate = {"callable": "tests.config.test_tiers:config", "name": "desk"}
    loaded = parse_config(config({"rules": [{"tool": "delete_account", "tier": "human"}]},
                                 candidate=callable_candidate))
    assert loaded.rollout is not None and loaded.rollout.tiers is not None


def test_only_the_rolled_out_candidates_tools_count() -> None:
    other = {**CHAT, "name": "other", "tools": [
        {"function": {"name": "ping", "parameters": {"type": "object"}}}]}
    rollout: dict[str, Any] = {"candidate": "desk", "steps": SHADOW_ONLY,
                               "tiers": {"rules": [{"tool": "issue_refund", "tier": "human"}]}}
    raw = {"candidates": [CHAT, other], "rollout": rollout}
    assert parse_config(raw).rollout is not None
    rollout["candidate"] = "other"
    assert "'issue_refund' is not among the tools of candidate 'other': ['ping']" in \
        error_of(raw)


def test_an_unreachable_rule_under_the_same_match_is_named() -> None:
    message = error_of(config({"rules": [
        {"tool": "send_reply", "confidence": {"at_least": 0.5}, "tier": "review"},
        {"tool": "send_reply", "confidence": {"at_least": 0.7, "below": 0.9}, "tier": "auto"},
    ]}))
    assert "rollout.tiers: rules[1] (tool send_reply; 0.7 <= confidence < 0.9 → auto) is " \
           "unreachable: the earlier rules[0] already match everything it matches" in message


def test_bands_that_together_cover_a_later_rule_make_it_unreachable() -> None:
    message = error_of(config({"rules": [
        {"tool": "send_reply", "confidence": {"below": 0.5}, "tier": "human"},
        {"tool": "send_reply", "confidence": {"at_least": 0.5}, "tier": "review"},
        {"tool": "send_reply", "tier": "auto"},
    ]}))
    assert "rules[2] (tool send_reply → auto) is unreachable: the earlier rules[0], " \
           "rules[1]" in message


def test_a_rule_for_any_tool_hides_a_later_rule_for_one() -> None:
    message = error_of(config({"rules": [{"tier": "human"},
                                         {"tool": "add_tag", "tier": "auto"}]}))
    assert "rules[1] (tool add_tag → auto) is unreachable" in message


def test_overlapping_bands_that_leave_a_rule_reachable_load() -> None:
    # The catch-all after a band is the usual "otherwise": reachable below 0.8.
    loaded = parse_config(config({"rules": [
        {"tool": "send_reply", "confidence": {"at_least": 0.8}, "tier": "review"},
        {"tool": "send_reply", "confidence": {"at_least": 0.6}, "tier": "human"},
        {"tool": "send_reply", "tier": "human"},
        {"tool": ["send_reply", "add_tag"], "tier": "auto"},  # add_tag is new here
    ]}))
    assert loaded.rollout is not None and loaded.rollout.tiers is not None


def test_a_band_with_a_gap_leaves_the_later_rule_reachable() -> None:
    loaded = parse_config(config({"rules": [
        {"label": "spam", "confidence": {"below": 0.4}, "tier": "human"},
        {"label": "spam", "confidence": {"at_least": 0.5}, "tier": "auto"},
        {"label": "spam", "tier": "review"},  # 0.4 <= confidence < 0.5, or none
    ]}))
    assert loaded.rollout is not None


def test_an_empty_band_is_named() -> None:
    message = error_of(config({"rules": [
        {"tool": "add_tag", "confidence": {"at_least": 0.9, "below": 0.9}, "tier": "auto"}]}))
    assert "rollout.tiers.rules.0.confidence: an empty band: below (0.9) must be above " \
           "at_least (0.9)" in message


def test_a_band_outside_zero_to_one_is_named() -> None:
    message = error_of(config({"rules": [
        {"tool": "add_tag", "confidence": {"at_least": 1.5}, "tier": "auto"}]}))
    assert "rollout.tiers.rules.0.confidence.at_least: input should be less than or equal " \
           "to 1" in message


def test_an_empty_tool_list_is_named() -> None:
    message = error_of(config({"rules": [{"tool": [], "tier": "auto"}]}))
    assert "rollout.tiers.rules.0.tool: an empty list matches nothing" in message


def test_an_unknown_rule_key_is_named() -> None:
    message = error_of(config({"rules": [{"tools": "add_tag", "tier": "auto"}]}))
    assert "rollout.tiers.rules.0.tools: unknown setting" in message


def test_live_steps_giving_review_need_a_review_sink() -> None:
    raw = config({"rules": [{"tool": "send_reply", "tier": "review"}]},
                 steps=[{"percent": 0}, {"percent": 5}],
                 sink={"kind": "file", "path": "decisions.jsonl"})
    assert "rollout: review_sink: tiers gives decisions the tier review, and live steps " \
           "publish them as proposals: name a review_sink" in error_of(raw)
    raw["rollout"]["review_sink"] = {"kind": "file", "path": "reviews.jsonl"}
    loaded = parse_config(raw)
    assert loaded.rollout is not None and loaded.rollout.review_sink is not None


def test_a_review_sink_needs_its_destination() -> None:
    raw = config({"rules": []}, review_sink={"kind": "kafka", "topic": "reviews"})
    assert "rollout.review_sink: a kafka destination needs bootstrap" in error_of(raw)
