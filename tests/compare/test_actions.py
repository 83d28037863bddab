"""The ``actions`` comparator on hand-built actions, in every mode."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from shadow.compare.comparators import Comparator, build_comparator
from shadow.config.file import parse_config
from shadow.core.errors import ConfigError

REFUND = {"arguments": {"amount": {"kind": "numeric", "abs_tol": 0.5},
                        "reason": {"kind": "normalized"}}}
TAGS = {"arguments": {"tags": {"kind": "set"}}}


def comparator(**spec: Any) -> Comparator:
    spec.setdefault("tools", {"issue_refund": REFUND, "tag_ticket": TAGS})
    return build_comparator(parse_config({"comparator": {"kind": "actions", **spec}}).comparator)


def act(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"tool": tool, "arguments": arguments}


def acts(*actions: dict[str, Any]) -> dict[str, Any]:
    return {"actions": list(actions), "reply": "whatever"}


REFUND_20 = act("issue_refund", amount=20, reason="Late delivery")
REPLY = act("send_reply", template="sorry")
TAG = act("tag_ticket", tags=["refund", "late"])


def test_same_actions_in_another_order_agree() -> None:
    judgement = comparator().compare(acts(REPLY, REFUND_20, TAG), acts(TAG, REFUND_20, REPLY))
    assert judgement.agree
    assert judgement.note is None
    assert judgement.fields == {"issue_refund.amount": True, "issue_refund.reason": True,
                                "send_reply.template": True, "tag_ticket.tags": True}


def test_no_actions_on_either_side_agree() -> None:
    judgement = comparator().compare({"reply": "hi"}, {"actions": []})
    assert judgement.agree
    assert judgement.fields == {}


def test_missed_action_disagrees_and_is_named() -> None:
    judgement = comparator().compare(acts(REPLY), acts(REPLY, REFUND_20))
    assert not judgement.agree
    assert judgement.note == 'missed issue_refund {"amount":20,"reason":"Late delivery"}'
    assert judgement.fields == {"send_reply.template": True}


def test_extra_action_disagrees_and_is_named() -> None:
    judgement = comparator().compare(acts(REPLY, REFUND_20), acts(REPLY))
    assert not judgement.agree
    assert judgement.note == 'extra issue_refund {"amount":20,"reason":"Late delivery"}'


def test_amount_within_tolerance_and_reason_normalized_agree() -> None:
    ai = acts(act("issue_refund", amount=20.4, reason="  late DELIVERY "))
    assert comparator().compare(ai, acts(REFUND_20)).agree


def test_amount_outside_tolerance_disagrees_on_that_argument_only() -> None:
    ai = acts(act("issue_refund", amount=20.6, reason="late delivery"))
    judgement = comparator().compare(ai, acts(REFUND_20))
    assert not judgement.agree
    assert judgement.fields == {"issue_refund.amount": False, "issue_refund.reason": True}
    assert judgement.note == "issue_refund: amount: 20.6 vs 20"


def test_set_argument_ignores_order_of_its_items() -> None:
    ai = acts(act("tag_ticket", tags=["late", "refund"]))
    assert comparator().compare(ai, acts(TAG)).agree


def test_unlisted_argument_is_compared_exactly() -> None:
    ai = acts(act("issue_refund", amount=20, reason="late delivery", currency="EUR"))
    judgement = comparator().compare(ai, acts(act("issue_refund", amount=20,
                                                  reason="late delivery", currency="USD")))
    assert judgement.fields["issue_refund.currency"] is False
    assert not judgement.agree


def test_unlisted_argument_is_ignored_when_asked() -> None:
    tools = {"issue_refund": {**REFUND, "other_arguments": "ignore"}}
    ai = acts(act("issue_refund", amount=20, reason="late delivery", currency="EUR"))
    judgement = comparator(tools=tools).compare(ai, acts(REFUND_20))
    assert judgement.agree
    assert "issue_refund.currency" not in judgement.fields


def test_argument_one_side_lacks_disagrees() -> None:
    judgement = comparator().compare(acts(act("issue_refund", amount=20)), acts(REFUND_20))
    assert judgement.fields == {"issue_refund.amount": True, "issue_refund.reason": False}
    assert "prediction has no value at 'reason'" in (judgement.note or "")


def test_duplicates_of_a_tool_pair_by_agreeing_arguments_whatever_the_order() -> None:
    small, large = act("issue_refund", amount=5, reason="a"), act("issue_refund", amount=50,
                                                                  reason="b")
    assert comparator().compare(acts(large, small), acts(small, large)).agree


def test_duplicate_beyond_the_persons_count_is_extra() -> None:
    small, large = act("issue_refund", amount=5, reason="a"), act("issue_refund", amount=50,
                                                                  reason="b")
    judgement = comparator().compare(acts(large, small, large), acts(small, large))
    assert not judgement.agree
    assert judgement.note == 'extra issue_refund {"amount":50,"reason":"b"}'
    assert judgement.fields == {"issue_refund.amount": True, "issue_refund.reason": True}


def test_duplicates_one_pair_disagreeing_makes_the_argument_disagree() -> None:
    judgement = comparator().compare(
        acts(act("issue_refund", amount=5, reason="a"), act("issue_refund", amount=90,
                                                            reason="b")),
        acts(act("issue_refund", amount=5, reason="a"), act("issue_refund", amount=50,
                                                            reason="b")))
    assert judgement.fields == {"issue_refund.amount": False, "issue_refund.reason": True}
    assert judgement.note == "issue_refund: amount: 90 vs 50"


def test_covers_allows_extra_actions() -> None:
    judgement = comparator(mode="covers").compare(acts(REPLY, REFUND_20, TAG), acts(REFUND_20))
    assert judgement.agree
    assert "extra send_reply" in (judgement.note or "")


def test_covers_disagrees_on_a_missed_action() -> None:
    assert not comparator(mode="covers").compare(acts(REPLY), acts(REPLY, TAG)).agree


def test_covers_prefers_the_agreeing_duplicate() -> None:
    wrong = act("issue_refund", amount=99, reason="late delivery")
    judgement = comparator(mode="covers").compare(acts(wrong, REFUND_20), acts(REFUND_20))
    assert judgement.agree
    assert judgement.fields == {"issue_refund.amount": True, "issue_refund.reason": True}


def test_first_compares_only_the_first_actions() -> None:
    judgement = comparator(mode="first").compare(acts(REFUND_20, REPLY), acts(REFUND_20, TAG))
    assert judgement.agree
    assert judgement.fields == {"issue_refund.amount": True, "issue_refund.reason": True}


def test_first_with_another_first_tool_is_missed_and_extra() -> None:
    judgement = comparator(mode="first").compare(acts(REPLY, REFUND_20), acts(REFUND_20, REPLY))
    assert not judgement.agree
    assert judgement.note == ('missed issue_refund {"amount":20,"reason":"Late delivery"}; '
                              'extra send_reply {"template":"sorry"}')


def test_ordered_same_set_disagrees_on_another_order() -> None:
    judgement = comparator(ordered=True).compare(acts(REPLY, REFUND_20), acts(REFUND_20, REPLY))
    assert not judgement.agree
    assert judgement.note == "actions in another order"


def test_ordered_covers_accepts_the_persons_actions_in_the_ais_order() -> None:
    ordered = comparator(mode="covers", ordered=True)
    assert ordered.compare(acts(REPLY, REFUND_20, TAG), acts(REPLY, TAG)).agree
    assert not ordered.compare(acts(TAG, REPLY), acts(REPLY, TAG)).agree


def test_malformed_proposed_action_disagrees_and_is_named() -> None:
    ai = {"actions": [REFUND_20, {"tool": "", "arguments": {}}]}
    judgement = comparator().compare(ai, acts(REFUND_20))
    assert not judgement.agree
    assert judgement.note == ("prediction actions[1]: tool: expected a non-empty string, "
                              "got str")


def test_actions_read_at_the_prediction_path() -> None:
    nested = {"agent": acts(REFUND_20)}
    assert comparator(prediction_path="agent").compare(nested, acts(REFUND_20)).agree


def test_unknown_mode_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"comparator\.mode: input should be .same_set."):
        comparator(mode="all")


def test_bad_argument_comparator_is_a_config_error_naming_the_key() -> None:
    tools = {"issue_refund": {"arguments": {"amount": {"kind": "numeric", "abs_tol": -1}}}}
    with pytest.raises(ConfigError, match=r"issue_refund\.arguments\.amount"):
        comparator(tools=tools)


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_argument_judge_that_cannot_be_reached_defers_the_whole_judgement() -> None:
    judge = {"kind": "judge", "base_url": f"http://127.0.0.1:{unused_port()}/v1",
             "model": "m", "cache": False, "max_attempts": 1, "timeout_s": 2}
    tools = {"send_reply": {"arguments": {"template": judge}}}
    judgement = comparator(tools=tools).compare(acts(REPLY, REFUND_20), acts(REPLY, REFUND_20))
    assert judgement.deferred
    assert (judgement.note or "").startswith("template: ")
