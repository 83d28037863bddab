"""Hard-constraint violations in the owner's report: data, checklist, HTML and Markdown.

Predictions go through the real runner, the real checks and the real store; every
expected number below is worked out again here from the rules of the candidate.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shadow.candidates import CallableCandidate
from shadow.candidates.constraints import Checks
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.config.file import parse_config
from shadow.core.models import Event
from shadow.core.redaction import redact_within
from shadow.pipeline.runner import Pipeline
from shadow.reports.build import owner_options
from shadow.reports.html import to_html
from shadow.reports.options import OwnerOptions
from shadow.reports.owner import build_owner_report, owner_report
from shadow.reports.render import owner_markdown
from shadow.store.database import Store
from shadow.testing import ListSource

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
FIXED = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
LABELS = ["billing", "login", "refund", "shipping"]
N = 300
CARD = "4111 1111 1111 1111"


def email(i: int) -> str:
    return f"person-{i}@example.com"


# -- the candidate's rules -----------------------------------------------------------


def errors(i: int) -> bool:
    return i % 17 == 0


def leaks_email(i: int) -> bool:
    return i % 5 == 0


def leaks_card(i: int) -> bool:
    return i % 13 == 0


def bad_label(i: int) -> bool:
    return i % 7 == 0


def no_meta(i: int) -> bool:
    return i % 9 == 0


def echoes(i: int) -> bool:
    return i % 11 == 0


def triage(event: Event) -> dict[str, Any]:
    i = event.payload["i"]
    if errors(i):
        raise RuntimeError("model down")
    reply = "we are on it"
    if leaks_email(i):
        reply += " write to jane@example.com"
    if leaks_card(i):
        reply += f" card {CARD}"
    output: dict[str, Any] = {"category": "sales" if bad_label(i) else LABELS[i % 4],
                              "reply": reply}
    if not no_meta(i):
        output["meta"] = {"lang": "en", "tier": "gold"}
    if echoes(i):
        output["note"] = f"<script>alert({i})</script> for {event.payload['requester']['email']}"
    return output


def echo(output: Any) -> str | None:
    """A custom check whose message quotes the output (and so, here, the payload)."""
    return f"quotes {output['note']}" if "note" in output else None


def plain(event: Event) -> dict[str, Any]:
    return {"category": LABELS[event.payload["i"] % 4]}


def expected_texts(i: int) -> list[str]:
    """The violations of event ``i``, in the order the checks are configured."""
    texts = []
    if leaks_email(i):
        texts.append("pii:email matched at output.reply")
    if leaks_card(i):
        texts.append("pii:card matched at output.reply")
    if bad_label(i):
        texts.append('labels output.category="sales" is not an allowed label')
    if no_meta(i):
        texts += ["required output.meta.lang is missing", "required output.meta.tier is missing"]
    if echoes(i):
        texts.append(f"echo quotes <script>alert({i})</script> for {email(i)}")
    return texts


CHECKED = [i for i in range(N) if not errors(i)]
VIOLATING = [i for i in CHECKED if expected_texts(i)]


def expected_kinds() -> list[dict[str, Any]]:
    caught: Counter[str] = Counter()
    texts: Counter[str] = Counter()
    for i in CHECKED:
        found = [t.split(" ", 1)[0] for t in expected_texts(i)]
        caught.update(set(found))
        texts.update(found)
    ordered = sorted(caught, key=lambda k: (-caught[k], k))
    return [{"check": k, "predictions": caught[k], "count": texts[k],
             "rate": caught[k] / len(CHECKED)} for k in ordered]


# -- the store -----------------------------------------------------------------------


def events() -> list[dict[str, Any]]:
    return [{"event_id": f"e{i}", "key": f"t{i}",
             "occurred_at": (START + timedelta(minutes=i)).isoformat(),
             "payload": {"i": i, "requester": {"email": email(i)}}} for i in range(N)]


def outcomes() -> list[dict[str, Any]]:
    return [{"key": f"t{i}", "outcome": LABELS[i % 4],
             "decided_at": (START + timedelta(minutes=i, hours=1)).isoformat()}
            for i in range(N)]


def checks() -> Checks:
    config = parse_config({"candidate": {"callable": "tests.reports.test_owner_violations:triage",
                                         "checks": [
        {"kind": "pii", "path": "reply", "types": ["email", "card"]},
        {"kind": "labels", "path": "category", "allowed": LABELS},
        {"kind": "required", "fields": ["meta.lang", "meta.tier"]},
        {"kind": "custom", "name": "echo", "function": "tests.reports.test_owner_violations:echo"},
    ]}})
    assert config.candidate is not None
    built = Checks.from_specs(config.candidate.checks)
    assert built is not None
    return built


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    path: Path = tmp_path_factory.mktemp("violations") / "store.duckdb"
    with Store(path) as opened:
        checked = CallableCandidate(triage, name="triage", version="1")
        checked.checks = checks()
        unchecked = CallableCandidate(plain, name="plain")
        comparator = build_comparator(ExactSpec(prediction_path="category"))
        Pipeline(opened, [checked, unchecked], comparator, batch_size=50).run(
            [ListSource(events(), name="events")], [ListSource(outcomes(), name="outcomes")])
        yield opened


def options(**changes: Any) -> OwnerOptions:
    """Options under which "triage" passes every check but, perhaps, the violations'."""
    settings: dict[str, Any] = {"threshold": 0.5, "max_error_rate": 0.1, "min_compared": 100,
                                "redact": ("requester.email",), "top_violations": 8,
                                "now": lambda: FIXED}
    return OwnerOptions(**{**settings, **changes})


def candidate(report: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in report["candidates"] if c["name"] == name]
    assert len(found) == 1
    return found[0]


def violation_check(report: dict[str, Any], name: str = "triage") -> dict[str, Any] | None:
    found = [c for c in candidate(report, name)["verdict"]["checks"]
             if c["name"] == "violation rate"]
    assert len(found) <= 1
    return found[0] if found else None


RATE = len(VIOLATING) / len(CHECKED)


# -- the data ------------------------------------------------------------------------


def test_the_rules_produce_every_kind() -> None:
    assert {k["check"] for k in expected_kinds()} == {
        "pii:email", "pii:card", "labels", "required", "echo"}
    assert 0 < len(VIOLATING) < len(CHECKED) < N


def test_counts_rate_and_kinds_match_the_input(store: Store) -> None:
    v = candidate(build_owner_report(store, options()), "triage")["violations"]
    assert v["checked"] == len(CHECKED) == N - len([i for i in range(N) if errors(i)])
    assert v["violating"] == len(VIOLATING)
    assert v["rate"] == pytest.approx(RATE, rel=1e-12)
    assert v["threshold"] is None
    assert v["kinds"] == [{**k, "rate": pytest.approx(k["rate"], rel=1e-12)}
                          for k in expected_kinds()]
    required = next(k for k in v["kinds"] if k["check"] == "required")
    assert required["count"] == 2 * required["predictions"]  # two fields, one prediction


def test_examples_are_the_most_recent_with_payload_values_redacted(store: Store) -> None:
    v = candidate(build_owner_report(store, options()), "triage")["violations"]
    latest = sorted(VIOLATING, reverse=True)[:8]
    assert [e["event_id"] for e in v["examples"]] == [f"e{i}" for i in latest]
    assert [e["key"] for e in v["examples"]] == [f"t{i}" for i in latest]
    assert v["examples"][0]["occurred_at"] == (START + timedelta(minutes=latest[0])).isoformat()
    assert [e["violations"] for e in v["examples"]] == [
        [t.replace(email(i), "[redacted]") for t in expected_texts(i)] for i in latest]
    assert any(echoes(i) for i in latest)  # the redaction was put to the test
    assert "@example.com" not in str(v)


def test_without_redaction_the_violation_text_is_shown_whole(store: Store) -> None:
    v = candidate(build_owner_report(store, options(redact=())), "triage")["violations"]
    latest = sorted(VIOLATING, reverse=True)[:8]
    assert [e["violations"] for e in v["examples"]] == [expected_texts(i) for i in latest]


def test_a_candidate_without_violations(store: Store) -> None:
    v = candidate(build_owner_report(store, options()), "plain")["violations"]
    assert v == {"configured": None, "checked": N, "violating": 0, "rate": 0.0,
                 "threshold": None, "kinds": [], "examples": []}


def test_a_candidate_configured_without_checks_is_not_reported_as_clean(store: Store) -> None:
    typed = owner_report(store, options(checked=frozenset({"triage"})))
    report = typed.as_dict()
    assert candidate(report, "plain")["violations"]["configured"] is False
    assert candidate(report, "triage")["violations"]["configured"] is True
    assert "Hard constraints: none configured." in owner_markdown(typed).split("## plain")[1]
    document = to_html(typed)
    assert "No hard-constraint checks are configured" in section(document, "plain")
    assert "No hard-constraint checks are configured" not in section(document)
    summary = document.split("<h2>Candidates</h2>", 1)[1].split("</table>", 1)[0]
    plain_row = summary.split("<td>plain", 1)[1].split("</tr>", 1)[0]
    assert re.findall(r'<td class="num">([^<]*)</td>', plain_row)[2] == "–"


def test_which_candidates_have_checks_comes_from_the_configuration() -> None:
    pii = [{"kind": "pii"}]
    config = parse_config({"candidates": [
        {"callable": "tests.reports.test_owner_violations:triage", "checks": pii},
        {"callable": "tests.reports.test_owner_violations:plain", "name": "plain"},
        {"kind": "http", "url": "http://127.0.0.1:9/predict", "checks": pii},
        {"kind": "chat", "base_url": "http://127.0.0.1:9/v1", "model": "m", "user": "x",
         "checks": pii}]})
    assert owner_options(config).checked == frozenset({
        "tests.reports.test_owner_violations:triage", "http://127.0.0.1:9/predict",
        "m@http://127.0.0.1:9/v1"})


def test_redact_text_through_lists_and_nested_values() -> None:
    payload = {"people": [{"email": "a@x.org"}, {"email": "b@x.org"}], "id": {"n": 4711}}
    assert redact_within("a@x.org, b@x.org, 4711", payload, ["people.email", "id"]) == (
        "[redacted], [redacted], [redacted]")
    assert redact_within("a@x.org", payload, ["missing.path"]) == "a@x.org"


# -- the checklist ---------------------------------------------------------------------


def test_no_verdict_line_without_a_budget(store: Store) -> None:
    report = build_owner_report(store, options())
    assert violation_check(report) is None
    assert candidate(report, "triage")["verdict"]["status"] == "ready"


def test_the_verdict_line_flips_at_the_budget(store: Store) -> None:
    at = build_owner_report(store, options(max_violation_rate=RATE))
    line = violation_check(at)
    assert line is not None and line["status"] == "pass"
    assert line["value"] == pytest.approx(RATE, rel=1e-12) and line["threshold"] == RATE
    assert f"{len(VIOLATING):,} of {len(CHECKED):,} checked" in line["detail"]
    assert candidate(at, "triage")["verdict"]["status"] == "ready"
    assert candidate(at, "triage")["violations"]["threshold"] == RATE

    below = build_owner_report(store, options(max_violation_rate=RATE - 1e-9))
    line = violation_check(below)
    assert line is not None and line["status"] == "fail"
    assert candidate(below, "triage")["verdict"]["status"] == "not_ready"
    assert violation_check(below, "plain")["status"] == "pass"  # type: ignore[index]


def test_the_budget_comes_from_the_report_section_or_the_rollout_gate() -> None:
    base = {"candidate": {"callable": "tests.reports.test_owner_violations:triage"}}
    assert owner_options(parse_config(base)).max_violation_rate is None
    from_report = parse_config({**base, "report": {"max_violation_rate": 0.01}})
    assert owner_options(from_report).max_violation_rate == 0.01
    rollout = {"name": "r", "steps": [{"percent": 0}, {"percent": 100}],
               "sink": {"kind": "file", "path": "out.jsonl"},
               "gates": {"max_violation_rate": 0.02}}
    from_gate = parse_config({**base, "rollout": rollout})
    assert owner_options(from_gate).max_violation_rate == 0.02
    both = parse_config({**base, "rollout": rollout, "report": {"max_violation_rate": 0.03}})
    assert owner_options(both).max_violation_rate == 0.03


def test_the_number_of_examples_comes_from_the_report_section() -> None:
    base = {"candidate": {"callable": "tests.reports.test_owner_violations:triage"}}
    assert owner_options(parse_config(base)).top_violations == 10
    chosen = parse_config({**base, "report": {"top_violations": 3}})
    assert owner_options(chosen).top_violations == 3


def test_options_reject_a_budget_outside_zero_and_one() -> None:
    with pytest.raises(ValueError, match="max_violation_rate"):
        OwnerOptions(max_violation_rate=1.5)
    with pytest.raises(ValueError, match="top_violations"):
        OwnerOptions(top_violations=-1)


# -- the renderings --------------------------------------------------------------------


def section(document: str, name: str = "triage") -> str:
    """The violations section of one candidate's part of the HTML."""
    part = document.split(f"<h2>{name}", 1)[1].split('<section class="candidate">', 1)[0]
    start = part.index("<h3>Hard-constraint violations</h3>")
    return part[start:part.index("<h3>Cost</h3>")]


def test_html_section_shows_the_figures_escaped(store: Store) -> None:
    document = to_html(owner_report(store, options(max_violation_rate=RATE - 1e-9)))
    html = section(document)
    assert f"<strong>{100 * RATE:.2f}\u00a0%</strong> of checked outputs" in html
    assert f"{len(VIOLATING):,} of {len(CHECKED):,} checked" in html
    assert 'Budget ' in html and '<span class="fail">FAIL</span>' in html
    for kind in expected_kinds():
        row = (f"<td>{kind['check']}</td><td class=\"num\">{kind['predictions']:,}</td>"
               f"<td class=\"num\">{100 * kind['rate']:.2f}\u00a0%</td>"
               f"<td class=\"num\">{kind['count']:,}</td>")
        assert row in html
    latest_echo = max(i for i in sorted(VIOLATING)[-8:] if echoes(i))
    assert f"echo quotes &lt;script&gt;alert({latest_echo})&lt;/script&gt; for [redacted]" in html
    assert "<script" not in document
    assert "@example.com" not in html
    assert re.search(r"<th>violation rate</th>", document)


def test_html_section_without_violations_or_budget(store: Store) -> None:
    document = to_html(owner_report(store, options()))
    html = section(document, "plain")
    assert "<strong>0.00\u00a0%</strong> of checked outputs" in html
    assert f"0 of {N:,} checked" in html
    assert "Budget" not in html and "<table>" not in html
    assert "Budget" not in section(document)


def test_markdown_line_and_checklist(store: Store) -> None:
    kinds = "; ".join(f"{k['check']} {k['predictions']:,} ({100 * k['rate']:.2f} %)"
                      for k in expected_kinds())
    text = owner_markdown(owner_report(store, options()))
    assert (f"Hard constraints: {100 * RATE:.2f} % of checked outputs violated one "
            f"({len(VIOLATING):,} of {len(CHECKED):,}): {kinds}.") in text
    assert f"Hard constraints: 0.00 % of checked outputs violated one (0 of {N:,})." in text
    assert "violation rate**" not in text

    passing = owner_markdown(owner_report(store, options(max_violation_rate=RATE)))
    assert f"({len(VIOLATING):,} of {len(CHECKED):,}), budget {100 * RATE:.2f} %:" in passing
    assert "- ✓ **violation rate**: " in passing
    failing = owner_markdown(owner_report(store, options(max_violation_rate=RATE / 2)))
    assert "- ✗ **violation rate**: " in failing
    assert "## triage (version 1): NOT READY" in failing
