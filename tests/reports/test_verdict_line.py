"""The owner's verdict in one line: from a store of known counts, in every rendering.

Every expected line is written out here from the counts this module puts in the store.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.core.models import Event
from shadow.pipeline.runner import Pipeline
from shadow.reports.disagreements_csv import disagreements_path, write_disagreements_csv
from shadow.reports.html import to_html
from shadow.reports.options import OwnerOptions
from shadow.reports.owner import owner_report
from shadow.reports.owner_model import OwnerReport
from shadow.reports.render import owner_markdown, to_table
from shadow.reports.summary import core_report
from shadow.reports.verdict import headlines
from shadow.store.database import Store
from shadow.testing import ListSource

START = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
ENGLISH = 300
"""English tickets: the candidate is always right."""
GERMAN = 120
"""German tickets: the candidate is right on two in five (48 of 120, 40.0 %)."""
OPEN = 30
"""English tickets without an outcome yet: pending."""
TOTAL = ENGLISH + GERMAN + OPEN
N_NA = "(n/a: p95 latency, cost per decision, rollout state)"


def language(i: int) -> str:
    return "de" if ENGLISH <= i < ENGLISH + GERMAN else "en"


def right(i: int) -> bool:
    return language(i) == "en" or i % 5 < 2


def email(i: int) -> str:
    return f"person-{i}@example.com"


def classify(event: Event) -> dict[str, Any]:
    i = event.payload["i"]
    return {"label": "billing" if right(i) else "login", "confidence": 0.9}


def unreachable(event: Event) -> dict[str, Any]:
    raise ConnectionError("connection refused: nothing listens at http://127.0.0.1:9/")


def events() -> list[dict[str, Any]]:
    return [{"event_id": f"e{i:03d}", "key": f"t{i:03d}",
             "occurred_at": (START + timedelta(minutes=i)).isoformat(),
             "segment": {"language": language(i)},
             "payload": {"i": i, "subject": f"Ticket {i}", "body": "first line\nsecond line",
                         "requester": {"email": email(i)}}}
            for i in range(TOTAL)]


def outcomes() -> list[dict[str, Any]]:
    return [{"key": f"t{i:03d}", "outcome": {"label": "billing"}, "actor": "agent",
             "decided_at": (START + timedelta(minutes=i, hours=2)).isoformat()}
            for i in range(ENGLISH + GERMAN)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    path = tmp_path_factory.mktemp("verdict") / "store.duckdb"
    with Store(path) as opened:
        candidates = [CallableCandidate(classify, name="triage", version="2"),
                      CallableCandidate(unreachable, name="dead")]
        comparator = build_comparator(ExactSpec(prediction_path="label", outcome_path="label"))
        Pipeline(opened, candidates, comparator, batch_size=100).run(
            [ListSource(events(), name="events")], [ListSource(outcomes(), name="outcomes")])
        yield opened


def options(**changes: Any) -> OwnerOptions:
    settings: dict[str, Any] = {"threshold": 0.5, "segment_floor": 0.7, "min_compared": 200,
                                "segment_min_samples": 100, "redact": ("requester.email",),
                                "prediction_label": "label", "outcome_label": "label",
                                "now": lambda: START + timedelta(days=1)}
    return OwnerOptions(**{**settings, **changes})


def report(store: Store, **changes: Any) -> OwnerReport:
    return owner_report(store, options(**changes))


def line(store: Store, name: str = "triage", **changes: Any) -> str:
    (found,) = [c for c in report(store, **changes).candidates if c.name == name]
    return found.verdict.line


# -- the line ----------------------------------------------------------------------------


def test_a_segment_below_its_floor_is_the_reason_with_its_numbers(store: Store) -> None:
    assert line(store) == (
        f"NOT READY: language=de 40.0 % < floor 70 % (n={GERMAN}); everything else passes "
        f"{N_NA}")


def test_the_next_step_names_the_segment(store: Store) -> None:
    (triage,) = [c for c in report(store).candidates if c.name == "triage"]
    assert triage.verdict.next_step.startswith("Next: improve the candidate on language=de")


def test_ready_names_the_bound_it_reached(store: Store) -> None:
    agreed, compared = ENGLISH + GERMAN * 2 // 5, ENGLISH + GERMAN
    low = wilson_low(agreed, compared)
    assert line(store, segment_floor=0.3) == (
        f"READY: agreement lower bound {100 * low:.1f} % ≥ 50 % (n={compared}, Wilson 95 %); "
        f"everything else passes {N_NA}")


def test_too_few_comparisons_says_how_many_and_what_is_pending(store: Store) -> None:
    assert line(store, min_compared=1000) == (
        f"NOT ENOUGH DATA: {ENGLISH + GERMAN} of 1,000 comparisons needed "
        f"({OPEN} predictions await an outcome); already failing: language=de 40.0 % < floor "
        f"70 % (n={GERMAN})")


def test_a_candidate_whose_every_call_failed_is_not_ready(store: Store) -> None:
    (dead,) = [c for c in report(store).candidates if c.name == "dead"]
    assert dead.verdict.status == "not_ready"
    assert dead.verdict.line == (
        f"NOT READY: every prediction failed ({TOTAL} of {TOTAL}: ConnectionError), nothing "
        "was compared; 0 of 200 comparisons needed; everything else passes (n/a: p95 latency, "
        "cost per decision, segments below floor, rollout state)")
    assert "running and reachable" in dead.verdict.next_step


def test_no_latency_for_calls_never_made(store: Store) -> None:
    (dead,) = [c for c in report(store).candidates if c.name == "dead"]
    assert (dead.latency.p50, dead.latency.p95, dead.latency.p99) == (None, None, None)
    assert dead.latency.histogram == ()
    (summary,) = [c for c in core_report(store).candidates if c.name == "dead"]
    assert (summary.latency_ms.p50, summary.latency_ms.p95) == (None, None)
    check = dead.verdict.check("p95 latency")
    assert check is not None and check.status == "n/a"


# -- n/a ---------------------------------------------------------------------------------


def statuses(store: Store, **changes: Any) -> dict[str, str]:
    (triage,) = [c for c in report(store, **changes).candidates if c.name == "triage"]
    return {c.name: c.status for c in triage.verdict.checks}


def test_checks_without_anything_to_check_are_na_not_pass(store: Store) -> None:
    found = statuses(store, segment_min_samples=10_000, max_violation_rate=0.01)
    assert found["p95 latency"] == "n/a"  # no budget
    assert found["cost per decision"] == "n/a"  # no cost reported
    assert found["segments below floor"] == "n/a"  # no segment large enough
    assert found["rollout state"] == "n/a"  # no rollout
    assert found["violation rate"] == "pass"  # every output was checked, none violated


def test_na_checks_are_named_in_the_line_and_never_as_passing(store: Store) -> None:
    text = line(store, segment_min_samples=10_000)
    assert text.endswith("everything else passes (n/a: p95 latency, cost per decision, "
                         "segments below floor, rollout state)")
    assert text.startswith("READY: ")


def test_a_budget_with_a_timed_call_is_checked(store: Store) -> None:
    assert statuses(store, max_p95_latency_ms=60_000.0)["p95 latency"] == "pass"


# -- every rendering shows the same line first -------------------------------------------


def test_the_table_starts_with_every_candidates_line(store: Store) -> None:
    typed = report(store)
    text = to_table(core_report(store), verdicts=headlines(typed), width=80)
    dead, dead_next, triage, triage_next = text.splitlines()[:4]
    assert dead == f"dead: {typed.candidates[0].verdict.line}"
    assert dead_next.startswith("Next: check that the candidate is running")
    assert triage == f"triage (version 2): {line(store)}"
    assert triage_next.startswith("Next: improve")


def test_markdown_starts_with_the_line_then_what_the_data_covers(store: Store) -> None:
    typed = report(store)
    text = owner_markdown(replace(typed, candidates=typed.candidates[1:]))
    lines = text.splitlines()
    assert lines[2] == f"**{line(store)}**  "
    assert lines[3].startswith("Next: improve the candidate on language=de")
    assert lines[5].startswith("Data window (event time): 2026-05-04 08:00 UTC to "
                               "2026-05-04 15:29 UTC (0.3 days); events: 450 stored, 0 "
                               "duplicates skipped, 0 dead letters")
    assert f"{ENGLISH + GERMAN} compared, {OPEN} pending (no outcome yet), 0 errors" in lines[5]
    assert "anytime-valid confidence sequence" in text


def test_the_json_carries_the_line_and_completeness(store: Store) -> None:
    data = report(store).as_dict()
    (triage,) = [c for c in data["candidates"] if c["name"] == "triage"]
    assert triage["verdict"]["line"] == line(store)
    assert triage["pending"] == OPEN
    assert data["completeness"]["events"] == TOTAL
    assert data["completeness"]["first_event"] == START.isoformat()
    json.dumps(data)


def test_the_html_names_the_bound_method_and_the_gate_difference(store: Store) -> None:
    document = to_html(report(store))
    assert "95\u00a0% Wilson score intervals" in document
    assert "docs/statistics.md" in document
    assert "0.8" not in document.split("<h2>triage")[1].split("</table>")[0]  # shares as %


def test_the_human_baseline_stands_beside_each_segment(tmp_path: Path) -> None:
    with Store(tmp_path / "store.duckdb") as opened:
        comparator = build_comparator(ExactSpec(prediction_path="label", outcome_path="label"))
        again = [{**o, "actor": "second", "outcome": {"label": "login"},
                  "decided_at": (datetime.fromisoformat(o["decided_at"])
                                 + timedelta(hours=1)).isoformat()}
                 for o in outcomes() if o["key"] < "t010"]
        Pipeline(opened, [CallableCandidate(classify, name="triage")], comparator).run(
            [ListSource(events(), name="events")],
            [ListSource(outcomes() + again, name="outcomes")])
        typed = owner_report(opened, options())
    baseline = typed.human_baseline
    assert baseline is not None
    people = baseline.segment("language", "en")
    assert people is not None and (people.pairs, people.agreed) == (10, 0)
    assert baseline.segment("language", "de") is None
    # 0 of 10: the Wilson upper bound is z²/(n + z²) = 3.8415 / 13.8415.
    assert "0.0\u00a0% [0.0\u00a0%, 27.8\u00a0%] (10)" in to_html(typed)


# -- every disagreement as CSV -----------------------------------------------------------


def test_the_csv_has_every_disagreement_with_private_fields_redacted(
        store: Store, tmp_path: Path) -> None:
    path = disagreements_path(tmp_path / "report.html")
    assert path.name == "report.disagreements.csv"
    written = write_disagreements_csv(store, options(top_disagreements=5), path)
    text = path.read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines(keepends=True)))
    wrong = [i for i in range(ENGLISH + GERMAN) if not right(i)]
    assert written == len(rows) == len(wrong) == 72
    assert [r["event_id"] for r in rows] == [f"e{i:03d}" for i in reversed(wrong)]  # newest first
    assert {r["candidate"] for r in rows} == {"triage"}
    assert "@example.com" not in text
    first = rows[0]
    payload = json.loads(first["payload"])
    assert payload["requester"] == {"email": "[redacted]"}
    assert list(payload)[:1] == ["subject"]  # short text first, then the payload's order
    assert payload["body"] == "first line\nsecond line"
    assert (first["ai_label"], first["human_label"]) == ("login", "billing")
    assert first["event_time"] == (START + timedelta(minutes=wrong[-1])).isoformat()
    assert first["decided_at"] == (START + timedelta(minutes=wrong[-1], hours=2)).isoformat()


def test_configured_fields_come_first_and_get_columns(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    write_disagreements_csv(store, options(disagreement_fields=("body", "requester.email")),
                            path)
    rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines(keepends=True)))
    assert rows[0]["payload.body"] == "first line\nsecond line"
    assert rows[0]["payload.requester.email"] == "[redacted]"
    assert list(json.loads(rows[0]["payload"]))[:2] == ["body", "requester"]


def test_the_html_links_the_csv_and_states_the_order(store: Store) -> None:
    document = to_html(report(store, top_disagreements=5),
                       csv_href="report.disagreements.csv")
    assert '<a href="report.disagreements.csv">' in document
    assert "The 5 most recent of 72 disagreements, newest event first." in document


def wilson_low(successes: int, n: int) -> float:
    """The Wilson (1927) lower bound, written out again here."""
    z = 1.959963984540054
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half
