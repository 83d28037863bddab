"""Actions per tool in the owner's report, end to end.

A callable agent proposes actions, the outcomes hold what the person did, and the real
pipeline writes both and the ``actions`` comparator's verdicts into a real DuckDB file.
The generator below keeps, for every action, why it differs (dropped, extra, an argument
off); the expected precision, recall and argument agreement are counted from that record,
not by the code under test.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.config.file import parse_config
from shadow.core.models import Event
from shadow.pipeline.runner import Pipeline
from shadow.reports.html import to_html
from shadow.reports.options import OwnerOptions
from shadow.reports.owner import build_owner_report, owner_report
from shadow.reports.render import owner_markdown
from shadow.store.database import Store
from shadow.testing import ListSource

START = datetime(2026, 4, 6, 9, 0, tzinfo=UTC)
FIXED = datetime(2026, 4, 20, 12, 0, tzinfo=UTC)
N = 240
TOOLS = ("issue_refund", "send_reply", "tag_ticket")
COMPARATOR = {"kind": "actions", "tools": {
    "issue_refund": {"arguments": {"amount": {"kind": "numeric", "abs_tol": 0.5},
                                   "reason": {"kind": "normalized"}}},
    "tag_ticket": {"arguments": {"tags": {"kind": "set"}}},
}}
ARGUMENTS = {"issue_refund": ("amount", "reason"), "send_reply": ("template", "to"),
             "tag_ticket": ("tags",)}


def email(i: int) -> str:
    return f"customer-{i}@example.com"


@dataclass
class Case:
    """One event: what the person did, what the AI proposes, and the verdicts to expect."""

    human: list[dict[str, Any]] = field(default_factory=list)
    ai: list[dict[str, Any]] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    missed: list[dict[str, Any]] = field(default_factory=list)
    verdicts: dict[str, bool] = field(default_factory=dict)
    """``tool.argument`` -> agreed, for every tool with at least one matched pair."""


def human_action(tool: str, i: int, rng: random.Random) -> dict[str, Any]:
    if tool == "issue_refund":
        arguments: dict[str, Any] = {"amount": rng.choice([5, 12.5, 20, 40]),
                                     "reason": rng.choice(["Late delivery", "Damaged item"])}
    elif tool == "send_reply":
        arguments = {"template": rng.choice(["sorry", "thanks"]), "to": email(i)}
    else:
        arguments = {"tags": rng.sample(["refund", "late", "vip", "damage"], 2)}
    return {"tool": tool, "arguments": arguments}


def proposed(action: dict[str, Any], rng: random.Random) -> tuple[dict[str, Any],
                                                                  dict[str, bool]]:
    """The AI's version of the person's action, and whether each argument still agrees."""
    tool, arguments = action["tool"], dict(action["arguments"])
    agrees = dict.fromkeys(ARGUMENTS[tool], True)
    noise = rng.random()
    if tool == "issue_refund":
        if noise < 0.25:
            arguments["amount"] += 0.4  # within the tolerance
        elif noise < 0.45:
            arguments["amount"] += 7
            agrees["amount"] = False
        if rng.random() < 0.3:
            arguments["reason"] = arguments["reason"].upper()  # normalized alike
    elif tool == "send_reply" and noise < 0.2:
        arguments["template"] = "apology-long"
        agrees["template"] = False
    elif tool == "tag_ticket":
        if noise < 0.3:
            arguments["tags"] = list(reversed(arguments["tags"]))  # a set: the same
        elif noise < 0.5:
            arguments["tags"] = [arguments["tags"][0], "other"]
            agrees["tags"] = False
    return {"tool": tool, "arguments": arguments}, agrees


def case(i: int) -> Case:
    rng = random.Random(i)
    found = Case()
    used = rng.sample(TOOLS, rng.randint(0, 2))
    for tool in used:
        if tool == "issue_refund" and rng.random() < 0.15:
            # Two refunds, proposed both and exactly, in the other order.
            pair = [human_action(tool, i, rng), human_action(tool, i, rng)]
            pair[1]["arguments"]["amount"] = pair[0]["arguments"]["amount"] + 100
            found.human += pair
            found.ai += list(reversed(pair))
            found.verdicts.update({f"{tool}.{name}": True for name in ARGUMENTS[tool]})
            continue
        action = human_action(tool, i, rng)
        found.human.append(action)
        if rng.random() < 0.2:
            found.missed.append(action)
            continue
        mine, agrees = proposed(action, rng)
        found.ai.append(mine)
        found.verdicts.update({f"{tool}.{name}": ok for name, ok in agrees.items()})
    if rng.random() < 0.25:
        # An action of a tool the person did not use at all.
        tool = rng.choice([t for t in TOOLS if t not in used])
        action = human_action(tool, i, rng)
        found.ai.append(action)
        found.extra.append(action)
    rng.shuffle(found.ai)
    return found


CASES = [case(i) for i in range(N)]


def agent(event: Event) -> dict[str, Any]:
    return {"actions": CASES[event.payload["i"]].ai, "reply": "done"}


def events() -> list[dict[str, Any]]:
    return [{"event_id": f"e{i:03d}", "key": f"t{i}",
             "occurred_at": (START + timedelta(minutes=i)).isoformat(),
             "payload": {"i": i, "customer": {"email": email(i)}}} for i in range(N)]


def outcomes() -> list[dict[str, Any]]:
    return [{"key": f"t{i}", "outcome": {"actions": CASES[i].human},
             "decided_at": (START + timedelta(minutes=i, hours=1)).isoformat()}
            for i in range(N)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    path: Path = tmp_path_factory.mktemp("actions") / "store.duckdb"
    comparator = build_comparator(parse_config({"comparator": COMPARATOR}).comparator)
    with Store(path) as opened:
        Pipeline(opened, [CallableCandidate(agent, name="agent", version="1")], comparator,
                 batch_size=50).run([ListSource(events(), name="events")],
                                    [ListSource(outcomes(), name="outcomes")])
        yield opened


def options() -> OwnerOptions:
    return OwnerOptions(redact=("customer.email",), now=lambda: FIXED)


@pytest.fixture(scope="module")
def tools(store: Store) -> dict[str, dict[str, Any]]:
    (candidate,) = build_owner_report(store, options())["candidates"]
    return {t["tool"]: t for t in candidate["tools"]}


def redacted(action: dict[str, Any], i: int) -> dict[str, Any]:
    return {k: "[redacted]" if v == email(i) else v for k, v in action["arguments"].items()}


# -- the data ------------------------------------------------------------------------


def test_the_data_has_every_kind_of_difference() -> None:
    assert sum(len(c.missed) for c in CASES) > 10
    assert sum(len(c.extra) for c in CASES) > 10
    assert sum(not ok for c in CASES for ok in c.verdicts.values()) > 10
    assert sum(Counter(a["tool"] for a in c.human)["issue_refund"] == 2 for c in CASES) > 3


# -- the figures ---------------------------------------------------------------------


def test_every_tool_has_a_row(tools: dict[str, dict[str, Any]]) -> None:
    assert list(tools) == sorted(TOOLS)


@pytest.mark.parametrize("tool", TOOLS)
def test_precision_and_recall_per_tool(tools: dict[str, dict[str, Any]], tool: str) -> None:
    proposed = sum(a["tool"] == tool for c in CASES for a in c.ai)
    taken = sum(a["tool"] == tool for c in CASES for a in c.human)
    extra = sum(a["tool"] == tool for c in CASES for a in c.extra)
    missed = sum(a["tool"] == tool for c in CASES for a in c.missed)
    assert proposed - extra == taken - missed  # every other action is matched
    found = tools[tool]
    assert (found["proposed"], found["taken"], found["matched"]) == (
        proposed, taken, proposed - extra)
    assert found["precision"] == pytest.approx((proposed - extra) / proposed)
    assert found["recall"] == pytest.approx((taken - missed) / taken)


@pytest.mark.parametrize("tool", TOOLS)
def test_argument_agreement_per_tool(tools: dict[str, dict[str, Any]], tool: str) -> None:
    verdicts = [ok for c in CASES for name, ok in c.verdicts.items()
                if name.startswith(f"{tool}.")]
    found = tools[tool]
    assert found["arguments_compared"] == len(verdicts)
    assert found["arguments_agreed"] == sum(verdicts)
    assert found["argument_agreement"] == pytest.approx(sum(verdicts) / len(verdicts))


@pytest.mark.parametrize("tool", TOOLS)
def test_examples_are_the_most_recent_extra_and_missed(tools: dict[str, dict[str, Any]],
                                                       tool: str) -> None:
    for kind in ("extra", "missed"):
        expected = [(f"e{i:03d}", redacted(a, i)) for i in reversed(range(N))
                    for a in getattr(CASES[i], kind) if a["tool"] == tool][:5]
        found = [(e["event_id"], e["arguments"]) for e in tools[tool][kind]]
        assert found == expected


def test_examples_keep_the_customers_email_out(store: Store) -> None:
    report = owner_report(store, options())
    shown = [e.arguments for t in report.candidates[0].tools for e in (*t.extra, *t.missed)]
    assert any(a.get("to") == "[redacted]" for a in shown)
    assert "@example.com" not in owner_markdown(report)
    assert "@example.com" not in to_html(report)


def test_argument_verdicts_are_also_per_field_agreement(store: Store) -> None:
    (candidate,) = build_owner_report(store, options())["candidates"]
    expected: Counter[str] = Counter()
    agreed: Counter[str] = Counter()
    for c in CASES:
        for name, ok in c.verdicts.items():
            expected[name] += 1
            agreed[name] += ok
    fields = {f["field"]: (f["compared"], f["agreed"]) for f in candidate["fields"]}
    assert fields == {name: (n, agreed[name]) for name, n in expected.items()}


def test_agreement_is_every_action_matched_with_agreeing_arguments(store: Store) -> None:
    (candidate,) = build_owner_report(store, options())["candidates"]
    agreeing = sum(not c.extra and not c.missed and all(c.verdicts.values()) for c in CASES)
    assert (candidate["agreement"]["n"], candidate["agreement"]["agreed"]) == (N, agreeing)


# -- the renderers -------------------------------------------------------------------


def test_markdown_has_a_line_per_tool(store: Store, tools: dict[str, dict[str, Any]]) -> None:
    text = owner_markdown(owner_report(store, options()))
    refund = tools["issue_refund"]
    assert "Actions per tool" in text
    assert (f"- `issue_refund`: precision {100 * refund['precision']:.1f} % "
            f"({refund['matched']:,} of {refund['proposed']:,}), recall "
            f"{100 * refund['recall']:.1f} % ({refund['matched']:,} of {refund['taken']:,}), "
            f"arguments agree {100 * refund['argument_agreement']:.1f} % "
            f"(n={refund['arguments_compared']:,})") in text


def test_html_has_a_table_of_tools(store: Store) -> None:
    html = to_html(owner_report(store, options()))
    assert "<h3>Actions per tool</h3>" in html
    assert all(f"<code>{tool}</code>" in html for tool in TOOLS)
    assert html.count("<code>issue_refund</code>") == 1


# -- without actions -----------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    path: Path = tmp_path_factory.mktemp("plain") / "store.duckdb"
    with Store(path) as opened:
        Pipeline(opened, [CallableCandidate(agent, name="agent")],
                 build_comparator(ExactSpec(prediction_path="reply", outcome_path="reply")),
                 batch_size=50).run([ListSource(events(), name="events")],
                                    [ListSource([{**o, "outcome": {"reply": "done"}}
                                                 for o in outcomes()], name="outcomes")])
        yield opened


def test_a_report_without_an_actions_comparator_has_no_section(plain_store: Store) -> None:
    report = owner_report(plain_store, options())
    (candidate,) = report.as_dict()["candidates"]
    assert "tools" not in candidate
    assert list(candidate)[-1] == "pending"
    assert "Actions per tool" not in owner_markdown(report)
    assert "Actions per tool" not in to_html(report)
