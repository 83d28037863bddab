"""The owner's report: every number against values computed here from the input data."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec, FieldsSpec, SimilaritySpec
from shadow.core.models import Event
from shadow.pipeline.runner import Pipeline
from shadow.reports.html import to_html
from shadow.reports.options import OwnerOptions
from shadow.reports.owner import build_owner_report, owner_report
from shadow.reports.owner_queries import COVERAGE_THRESHOLDS, LATENCY_BOUNDS_MS, OwnerQueries
from shadow.reports.render import owner_markdown, to_json
from shadow.reports.summary import CoreReport, build_report, core_report
from shadow.store.database import Store
from shadow.testing import ListSource

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LABELS = ["billing", "login", "refund", "shipping"]
N = 600
BASELINE_KEYS = 40
FIXED = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def wilson(successes: int, n: int) -> tuple[float, float, float]:
    """Wilson (1927), written out again here so the report is checked independently."""
    z = 1.959963984540054
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (DuckDB's quantile_cont)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def approx(expected: Any) -> Any:
    """pytest.approx for nested lists and dicts of numbers."""
    if isinstance(expected, dict):
        return {k: approx(v) for k, v in expected.items()}
    if isinstance(expected, list):
        return [approx(v) for v in expected]
    if isinstance(expected, float):
        return pytest.approx(expected, rel=1e-12, abs=1e-15)
    return expected


def truth(i: int) -> str:
    return LABELS[i % 4]


def occurred(i: int) -> datetime:
    return START + timedelta(days=i % 3, seconds=i)


def channel(i: int) -> str:
    return "chat" if i % 2 == 0 else "email"


# -- candidate "triage" version 1: errors, confidence, cost, worse on chat --------


def a_errors(i: int) -> bool:
    return i % 50 == 0


def a_label(i: int) -> str:
    wrong = i % 7 == 0 or (channel(i) == "chat" and i % 11 == 0)
    return LABELS[(i + 1) % 4] if wrong else truth(i)


def a_confidence(i: int) -> float:
    return (i % 10) / 10 + 0.05


def a_latency(i: int) -> float:
    return (i % 100) * 3.7 + 0.5


def a_cost(i: int) -> float:
    return 0.001 * (i % 3 + 1)


def triage(event: Event) -> dict[str, Any]:
    i = event.payload["i"]
    if a_errors(i):
        raise ValueError(f"boom {i % 100}")
    return {"label": a_label(i), "confidence": a_confidence(i)}


# -- candidate "rules": no errors, no confidence, no cost ----------------------


def b_label(i: int) -> str:
    return LABELS[(i + 2) % 4] if i % 5 == 0 else truth(i)


def b_latency(i: int) -> float:
    return float(i % 40)


def rules(event: Event) -> dict[str, Any]:
    return {"label": b_label(event.payload["i"])}


def secret(i: int) -> str:
    return f"secret-{i}@example.com"


def events() -> list[dict[str, Any]]:
    return [{"event_id": f"e{i}", "key": f"t{i}", "occurred_at": occurred(i).isoformat(),
             "segment": {"channel": channel(i)},
             "payload": {"i": i, "requester": {"email": secret(i), "tier": "gold"}}}
            for i in range(N)]


def bob_outcome(i: int) -> str:
    return truth(i) if i % 4 else LABELS[(i + 2) % 4]


def outcomes() -> list[dict[str, Any]]:
    final = [{"key": f"t{i}", "outcome": truth(i), "actor": "alice",
              "decided_at": (occurred(i) + timedelta(hours=1)).isoformat()} for i in range(N)]
    # Earlier outcomes: by another person (the human baseline), or by the same one (not).
    bob = [{"key": f"t{i}", "outcome": bob_outcome(i), "actor": "bob",
            "decided_at": (occurred(i) + timedelta(minutes=30)).isoformat()}
           for i in range(BASELINE_KEYS)]
    again = [{"key": f"t{i}", "outcome": "login", "actor": "alice",
              "decided_at": (occurred(i) + timedelta(minutes=20)).isoformat()}
             for i in range(BASELINE_KEYS, BASELINE_KEYS + 5)]
    return final + bob + again


ROLLOUT_TIMES = [START + timedelta(days=1), START + timedelta(days=2)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    path: Path = tmp_path_factory.mktemp("owner") / "store.duckdb"
    with Store(path) as opened:
        candidates = [CallableCandidate(triage, name="triage", version="1"),
                      CallableCandidate(rules, name="rules")]
        comparator = build_comparator(ExactSpec(prediction_path="label"))
        Pipeline(opened, candidates, comparator, batch_size=100).run(
            [ListSource(events(), name="events")], [ListSource(outcomes(), name="outcomes")])
        db = opened.db
        db.execute(
            "UPDATE predictions SET latency_ms = CASE candidate "
            "WHEN 'triage' THEN (CAST(event_id[2:] AS INTEGER) % 100) * 3.7 + 0.5 "
            "ELSE CAST(CAST(event_id[2:] AS INTEGER) % 40 AS DOUBLE) END, "
            "cost = CASE candidate WHEN 'triage' THEN 0.001 * (CAST(event_id[2:] AS INTEGER) % 3 "
            "+ 1) END")
        db.execute(
            "INSERT INTO rollout_state (rollout, candidate, version, step, percent, status, "
            "step_started_at, updated_at, revision) VALUES ('rules-rollout', 'rules', NULL, 1, "
            "5.0, 'rolled_back', ?, ?, 2)", [ROLLOUT_TIMES[0], ROLLOUT_TIMES[1]])
        db.execute(
            "INSERT INTO rollout_audit VALUES "
            "('rules-rollout', 1, ?, 'ops', 'promote', 0, 1, 'progressing', 'progressing', 5.0, "
            "'gates held', NULL, 'oncall'), "
            "('rules-rollout', 2, ?, 'controller', 'rollback', 1, 0, 'progressing', "
            "'rolled_back', 0.0, 'agreement fell', NULL, NULL)", ROLLOUT_TIMES)
        yield opened


def ready_options(**changes: Any) -> OwnerOptions:
    """Options under which "triage" passes every check."""
    settings: dict[str, Any] = {"threshold": 0.5, "segment_floor": 0.5, "now": lambda: FIXED,
                                "redact": ("requester.email",), "daily_volume": 10_000.0}
    return OwnerOptions(**{**settings, **changes})


def candidate(report: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in report["candidates"] if c["name"] == name]
    assert len(found) == 1
    return found[0]


def check(report: dict[str, Any], name: str, check_name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in candidate(report, name)["verdict"]["checks"]
                                   if c["name"] == check_name]
    assert len(found) == 1
    return found[0]


# -- what the input says -------------------------------------------------------


def a_compared() -> list[int]:
    return [i for i in range(N) if not a_errors(i)]


def a_agreed(i: int) -> bool:
    return a_label(i) == truth(i)


def test_contract_keys(store: Store) -> None:
    report = build_owner_report(store, ready_options())
    assert {"generated_at", "store", "options", "candidates", "human_baseline",
            "rollout", "completeness"} == report.keys()
    for c in report["candidates"]:
        assert {"name", "version", "verdict", "agreement", "over_time", "segments", "confusion",
                "fields", "coverage", "latency", "errors", "cost", "disagreements"} <= c.keys()
    assert report["generated_at"] == FIXED.isoformat()
    assert report["options"]["redact"] == ["requester.email"]
    json.dumps(report)


def test_agreement_matches_the_input(store: Store) -> None:
    report = build_owner_report(store, ready_options())
    compared = a_compared()
    agreed = sum(a_agreed(i) for i in compared)
    rate, low, high = wilson(agreed, len(compared))
    assert candidate(report, "triage")["agreement"] == approx(
        {"rate": rate, "low": low, "high": high, "n": len(compared), "agreed": agreed,
         "method": "wilson", "unit": "prediction"})
    b_agreed = sum(b_label(i) == truth(i) for i in range(N))
    assert candidate(report, "rules")["agreement"]["agreed"] == b_agreed
    assert candidate(report, "rules")["agreement"]["n"] == N


def test_the_core_report_matches_the_input(store: Store) -> None:
    report = core_report(store, now=lambda: FIXED)
    assert [(c.name, c.version) for c in report.candidates] == [("rules", None), ("triage", "1")]
    triage = report.candidates[1]
    compared = a_compared()
    agreed = sum(a_agreed(i) for i in compared)
    assert (triage.predictions, triage.errors, triage.compared) == (
        N, N - len(compared), len(compared))
    rate, low, high = wilson(agreed, len(compared))
    assert [triage.agreement.rate, triage.agreement.low, triage.agreement.high] == approx(
        [rate, low, high])
    chat = [i for i in compared if channel(i) == "chat"]
    (shown,) = [s for s in triage.segments if s.value == "chat"]
    assert (shown.field, shown.compared) == ("channel", len(chat))
    assert shown.agreement.rate == approx(sum(map(a_agreed, chat)) / len(chat))
    assert triage.cost.total == approx(sum(a_cost(i) for i in range(N)))
    assert report.events_read == report.events_stored == N
    assert report.generated_at == FIXED


def test_the_core_report_reads_back_from_its_json(store: Store) -> None:
    report = core_report(store, now=lambda: FIXED)
    text = to_json(report.as_dict())
    assert CoreReport.from_dict(json.loads(text)) == report
    assert build_report(store, now=lambda: FIXED) == json.loads(text)


def test_both_reports_read_alike_from_shared_queries(store: Store) -> None:
    options = ready_options()
    queries = OwnerQueries(store, options)
    assert core_report(store, now=lambda: FIXED, queries=queries) == core_report(
        store, now=lambda: FIXED)
    assert owner_report(store, options, queries=queries) == owner_report(store, options)
    with pytest.raises(ValueError, match="other options"):
        owner_report(store, ready_options(threshold=0.6), queries=queries)


def test_over_time_is_by_event_day(store: Store) -> None:
    report = build_owner_report(store, ready_options())
    expected = []
    for day in range(3):
        ids = [i for i in a_compared() if i % 3 == day]
        agreed = sum(a_agreed(i) for i in ids)
        rate, low, high = wilson(agreed, len(ids))
        expected.append({"day": (date(2026, 3, 2) + timedelta(days=day)).isoformat(),
                         "compared": len(ids), "agreed": agreed, "rate": rate, "low": low,
                         "high": high})
    assert candidate(report, "triage")["over_time"] == approx(expected)


def test_segments_match_the_input(store: Store) -> None:
    report = build_owner_report(store, ready_options(segment_floor=0.82))
    expected = []
    for value in ("chat", "email"):
        ids = [i for i in a_compared() if channel(i) == value]
        agreed = sum(a_agreed(i) for i in ids)
        rate, low, high = wilson(agreed, len(ids))
        expected.append({"field": "channel", "value": value, "compared": len(ids),
                         "agreed": agreed, "rate": rate, "low": low, "high": high,
                         "floor": 0.82, "below_floor": rate < 0.82})
    assert candidate(report, "triage")["segments"] == approx(expected)
    assert [s["below_floor"] for s in expected] == [True, False]


def test_confusion_matrix_rows_are_people_columns_the_ai(store: Store) -> None:
    report = build_owner_report(store, ready_options(prediction_label="label"))
    confusion = candidate(report, "triage")["confusion"]
    pairs = Counter((truth(i), a_label(i)) for i in a_compared())
    assert sorted(confusion["labels"]) == LABELS
    found = {(h, a): confusion["matrix"][r][c]
             for r, h in enumerate(confusion["labels"])
             for c, a in enumerate(confusion["labels"]) if confusion["matrix"][r][c]}
    assert found == pairs
    assert confusion["other"] == 0


def test_no_confusion_matrix_for_objects_without_a_label_path(store: Store) -> None:
    report = build_owner_report(store, ready_options())
    assert candidate(report, "triage")["confusion"] is None


def test_confusion_keeps_twelve_labels_and_counts_the_rest_as_other(tmp_path: Path) -> None:
    labels = [f"l{k:02d}" for k in range(15)]

    def label(i: int) -> str:
        return labels[i % 15] if i % 15 < 14 or i % 2 else labels[0]

    with Store(tmp_path / "labels.duckdb") as store:
        Pipeline(store, CallableCandidate(lambda e: label(e.payload["i"]), name="plain"),
               build_comparator(ExactSpec())).run(
            [ListSource(events()[:300], name="events")],
            [ListSource([{"key": f"t{i}", "outcome": labels[i % 15],
                          "decided_at": START.isoformat()} for i in range(300)],
                        name="outcomes")])
        confusion = candidate(build_owner_report(store, ready_options()), "plain")["confusion"]
    frequency = Counter[str]()
    for i in range(300):
        frequency[labels[i % 15]] += 1
        frequency[label(i)] += 1
    top = sorted(frequency, key=lambda k: (-frequency[k], k))[:12]
    assert confusion["labels"] == top
    inside = Counter((labels[i % 15], label(i)) for i in range(300)
                     if labels[i % 15] in top and label(i) in top)
    assert sum(map(sum, confusion["matrix"])) == sum(inside.values())
    assert confusion["other"] == 300 - sum(inside.values())


def test_fields_come_from_per_field_comparisons(tmp_path: Path) -> None:
    def output(i: int) -> dict[str, Any]:
        return {"label": a_label(i), "urgent": i % 3 == 0 and i % 4 != 0}

    comparator = build_comparator(FieldsSpec.model_validate(
        {"kind": "fields", "fields": {"label": {"kind": "exact"}, "urgent": {"kind": "exact"}}}))
    with Store(tmp_path / "fields.duckdb") as store:
        Pipeline(store, CallableCandidate(lambda e: output(e.payload["i"]), name="object"),
               comparator).run(
            [ListSource(events()[:300], name="events")],
            [ListSource([{"key": f"t{i}", "outcome": {"label": truth(i), "urgent": i % 3 == 0},
                          "decided_at": START.isoformat()} for i in range(300)],
                        name="outcomes")])
        report = build_owner_report(store, ready_options())
    label = sum(a_label(i) == truth(i) for i in range(300))
    urgent = sum(output(i)["urgent"] == (i % 3 == 0) for i in range(300))
    expected = [{"field": name, "compared": 300, "agreed": agreed, **dict(zip(
        ("rate", "low", "high"), wilson(agreed, 300), strict=True))}
        for name, agreed in (("label", label), ("urgent", urgent))]
    assert candidate(report, "object")["fields"] == approx(expected)
    assert candidate(report, "object")["confusion"] is None


def test_an_empty_store_has_no_candidates_and_no_baseline(tmp_path: Path) -> None:
    with Store(tmp_path / "empty.duckdb") as store:
        typed = owner_report(store, ready_options())
    report = typed.as_dict()
    assert report["candidates"] == []
    assert report["human_baseline"] is None
    assert report["rollout"] == {"state": None, "timeline": [], "labels": None,
                                 "withdrawn": []}
    assert "No predictions" in owner_markdown(typed)


def test_coverage_against_confidence_threshold(store: Store) -> None:
    report = build_owner_report(store, ready_options())
    expected = []
    for t in COVERAGE_THRESHOLDS:
        confident = [i for i in a_compared() if a_confidence(i) >= t]
        agreed = sum(a_agreed(i) for i in confident)
        expected.append({"threshold": t, "coverage": len(confident) / N, "n": len(confident),
                         "agreed": agreed,
                         "agreement": agreed / len(confident) if confident else None})
    assert candidate(report, "triage")["coverage"] == approx(expected)
    assert candidate(report, "rules")["coverage"] is None


def test_latency_quantiles_and_histogram(store: Store) -> None:
    report = build_owner_report(store, ready_options())
    latencies = [a_latency(i) for i in range(N)]
    latency = candidate(report, "triage")["latency"]
    assert latency["p50"] == approx(quantile(latencies, 0.5))
    assert latency["p95"] == approx(quantile(latencies, 0.95))
    assert latency["p99"] == approx(quantile(latencies, 0.99))
    buckets = Counter(next(b for b in LATENCY_BOUNDS_MS if x <= b) for x in latencies)
    histogram = {b["le_ms"]: b["count"] for b in latency["histogram"] if b["count"]}
    assert histogram == buckets
    assert sum(b["count"] for b in latency["histogram"]) == N


def test_errors_by_kind(store: Store) -> None:
    report = build_owner_report(store, ready_options())
    failed = [i for i in range(N) if a_errors(i)]
    assert candidate(report, "triage")["errors"] == {
        "rate": len(failed) / N, "count": len(failed),
        "kinds": [{"kind": "ValueError", "count": len(failed),
                   "example": min(f"boom {i % 100}" for i in failed)}]}
    assert candidate(report, "rules")["errors"]["count"] == 0


def test_both_reports_show_the_smallest_message_as_an_error_kinds_example(
        tmp_path: Path) -> None:
    messages = ["zeta", "mu", "alpha", "omega"]  # the first stored is not the smallest

    def failing(event: Event) -> Any:
        raise ValueError(messages[event.payload["i"] % 4])

    with Store(tmp_path / "store.duckdb") as store:
        Pipeline(store, CallableCandidate(failing, name="failing"),
                 build_comparator(ExactSpec())).run([ListSource(events()[:40], name="events")])
        core = build_report(store)["candidates"][0]["error_kinds"]
        owner = candidate(build_owner_report(store, ready_options()), "failing")["errors"]
    assert core == [{"type": "ValueError", "count": 40, "example": "alpha"}]
    assert owner["kinds"] == [{"kind": "ValueError", "count": 40, "example": "alpha"}]


def test_cost_projection(store: Store) -> None:
    report = build_owner_report(store, ready_options())
    per = sum(a_cost(i) for i in range(N)) / N
    span_days = max((max(map(occurred, range(N))) - START).total_seconds() / 86_400, 1.0)
    volume = N / span_days
    cost = candidate(report, "triage")["cost"]
    assert cost == approx({
        "per_decision": per, "total": per * N, "daily_volume_current": volume,
        "per_day_current": per * volume, "per_month_current": per * volume * 30,
        "per_day_10x": per * volume * 10, "per_month_10x": per * volume * 300,
        "daily_volume_full": 10_000.0, "per_day_full": per * 10_000,
        "per_month_full": per * 300_000})
    assert candidate(report, "rules")["cost"]["per_month_full"] is None


def test_disagreements_are_the_most_recent_with_both_sides(store: Store) -> None:
    report = build_owner_report(store, ready_options(top_disagreements=5))
    wrong = sorted((i for i in a_compared() if not a_agreed(i)), key=occurred, reverse=True)[:5]
    found = candidate(report, "triage")["disagreements"]
    assert [d["event_id"] for d in found] == [f"e{i}" for i in wrong]
    first, i = found[0], wrong[0]
    assert first["output"] == {"label": a_label(i), "confidence": a_confidence(i)}
    assert first["outcome"] == truth(i)
    assert first["segment"] == {"channel": channel(i)}
    assert first["decided_at"] == (occurred(i) + timedelta(hours=1)).isoformat()
    assert first["payload"] == {"i": i, "requester": {"email": "[redacted]", "tier": "gold"}}


def test_redacted_values_appear_nowhere(store: Store) -> None:
    typed = owner_report(store, ready_options(top_disagreements=N))
    report = typed.as_dict()
    text = json.dumps(report) + owner_markdown(typed)
    assert "@example.com" not in text
    assert candidate(report, "triage")["disagreements"]


def test_without_redaction_the_payload_is_shown(store: Store) -> None:
    report = build_owner_report(store, ready_options(redact=()))
    assert "@example.com" in json.dumps(report)


def test_human_baseline_pairs_consecutive_outcomes_of_different_people(store: Store) -> None:
    report = build_owner_report(store, ready_options())
    agreed = sum(bob_outcome(i) == truth(i) for i in range(BASELINE_KEYS))
    rate, low, high = wilson(agreed, BASELINE_KEYS)
    segments = []
    for name in ("chat", "email"):
        keys = [i for i in range(BASELINE_KEYS) if channel(i) == name]
        same = sum(bob_outcome(i) == truth(i) for i in keys)
        r, lo, hi = wilson(same, len(keys))
        segments.append({"field": "channel", "value": name, "pairs": len(keys), "agreed": same,
                         "rate": r, "low": lo, "high": hi})
    assert report["human_baseline"] == approx({
        "keys": BASELINE_KEYS, "pairs": BASELINE_KEYS, "agreed": agreed, "rate": rate,
        "low": low, "high": high, "segments": segments})


def test_rollout_state_and_timeline(store: Store) -> None:
    report = build_owner_report(store, ready_options())
    assert report["rollout"]["state"]["status"] == "rolled_back"
    assert [(t["action"], t["actor"], t["token"], t["reason"], t["status"])
            for t in report["rollout"]["timeline"]] == [
        ("promote", "ops", "oncall", "gates held", "progressing"),
        ("rollback", "controller", None, "agreement fell", "rolled_back")]
    assert check(report, "rules", "rollout state")["status"] == "fail"
    # Was "unknown" (orange): with no rollout there is nothing to check, so n/a.
    assert check(report, "triage", "rollout state")["status"] == "n/a"


# -- the verdict at each boundary -------------------------------------------------


def verdict(store: Store, **changes: Any) -> str:
    report = build_owner_report(store, ready_options(**changes))
    status: str = candidate(report, "triage")["verdict"]["status"]
    return status


def test_ready_under_lenient_options(store: Store) -> None:
    report = build_owner_report(store, ready_options())
    checks = {c["name"]: c["status"] for c in candidate(report, "triage")["verdict"]["checks"]}
    # Was PASS for p95 latency without a budget and cost without one: they checked nothing.
    assert checks == {"sample size": "pass", "agreement": "pass", "error rate": "pass",
                      "p95 latency": "n/a", "cost per decision": "n/a",
                      "segments below floor": "pass", "rollout state": "n/a"}
    assert check(report, "triage", "p95 latency")["detail"] == "no budget set"
    assert candidate(report, "triage")["verdict"]["status"] == "ready"


def test_agreement_threshold_at_the_lower_bound(store: Store) -> None:
    compared = a_compared()
    _, low, _ = wilson(sum(a_agreed(i) for i in compared), len(compared))
    assert verdict(store, threshold=low) == "ready"
    assert verdict(store, threshold=math.nextafter(low, 1.0)) == "not_ready"


def test_sample_size_at_the_count(store: Store) -> None:
    n = len(a_compared())
    assert verdict(store, min_compared=n) == "ready"
    assert verdict(store, min_compared=n + 1) == "not_enough_data"


def test_error_rate_at_the_budget(store: Store) -> None:
    rate = sum(a_errors(i) for i in range(N)) / N
    assert verdict(store, max_error_rate=rate) == "ready"
    assert verdict(store, max_error_rate=math.nextafter(rate, 0.0)) == "not_ready"


def test_segment_floor_at_the_weakest_rate(store: Store) -> None:
    chat = [i for i in a_compared() if channel(i) == "chat"]
    rate = sum(a_agreed(i) for i in chat) / len(chat)
    assert verdict(store, segment_floor=rate) == "ready"
    assert verdict(store, segment_floor=math.nextafter(rate, 1.0)) == "not_ready"
    assert verdict(store, segment_floor=math.nextafter(rate, 1.0),
                   segment_min_samples=len(chat) + 1) == "ready"


def test_p95_latency_at_the_budget(store: Store) -> None:
    p95 = quantile([a_latency(i) for i in range(N)], 0.95)
    report = build_owner_report(store, ready_options(max_p95_latency_ms=p95))
    budget = candidate(report, "triage")["latency"]["p95"]
    assert verdict(store, max_p95_latency_ms=budget) == "ready"
    assert verdict(store, max_p95_latency_ms=math.nextafter(budget, 0.0)) == "not_ready"


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="threshold"):
        OwnerOptions(threshold=1.5)
    with pytest.raises(ValueError, match="min_compared"):
        OwnerOptions(min_compared=-1)


# -- Markdown --------------------------------------------------------------------


def test_markdown_has_verdicts_checklist_and_numbers(store: Store) -> None:
    typed = owner_report(store, ready_options(max_p95_latency_ms=400.0))
    report = typed.as_dict()
    text = owner_markdown(typed)
    assert "## triage (version 1): READY" in text
    assert "## rules: NOT READY" in text
    assert "✓ **sample size**" in text
    assert "✗ **rollout state**" in text
    assert "n/a **rollout state**" in text
    a = candidate(report, "triage")
    rate, low, high = (f"{100 * a['agreement'][k]:.1f} %" for k in ("rate", "low", "high"))
    assert f"Agreement {rate} [{low}, {high}]" in text
    assert f"errors {100 * 12 / N:.1f} %" in text
    assert f"cost/decision {a['cost']['per_decision']:,.6f}" in text
    assert f"{a['cost']['per_month_current']:,.2f} now" in text
    assert len(text.splitlines()) <= 40


def test_a_redacted_value_echoed_in_output_or_outcome_is_redacted_there_too(
    tmp_path: Path,
) -> None:
    def echo(event: Event) -> dict[str, Any]:
        return {"label": "billing", "reply": f"Dear {event.payload['requester']['email']}"}

    email = "ana.lima@example.com"
    event = {"event_id": "e1", "key": "t1", "occurred_at": START.isoformat(),
             "payload": {"requester": {"email": email, "id": 4021}}}
    outcome = {"key": "t1", "decided_at": (START + timedelta(hours=1)).isoformat(),
               "outcome": {"label": "refund", "note": f"wrote to {email} (id 4021)"}}
    with Store(tmp_path / "store.duckdb") as store:
        Pipeline(store, CallableCandidate(echo, name="echo"),
               build_comparator(ExactSpec(prediction_path="label", outcome_path="label"))).run(
            [ListSource([event], name="events")], [ListSource([outcome], name="outcomes")])
        options = ready_options(redact=("requester.email", "requester.id"))
        [shown] = candidate(build_owner_report(store, options), "echo")["disagreements"]
    assert shown["payload"] == {"requester": {"email": "[redacted]", "id": "[redacted]"}}
    assert shown["output"] == {"label": "billing", "reply": "Dear [redacted]"}
    assert shown["outcome"] == {"label": "refund", "note": "wrote to [redacted] (id [redacted])"}


def test_label_paths_with_quotes_and_spaces_read_the_labels(tmp_path: Path) -> None:
    def quoted(event: Event) -> dict[str, Any]:
        return {"agent's pick": event.payload["guess"]}

    guesses = ["billing", "login", "billing", "refund"]
    truths = ["billing", "billing", "billing", "refund"]
    with Store(tmp_path / "store.duckdb") as store:
        Pipeline(store, CallableCandidate(quoted, name="quoted"),
               build_comparator(ExactSpec(prediction_path="agent's pick",
                                          outcome_path="final label"))).run(
            [ListSource([{"event_id": f"e{i}", "key": f"t{i}", "occurred_at": START.isoformat(),
                          "payload": {"guess": g}} for i, g in enumerate(guesses)])],
            [ListSource([{"key": f"t{i}", "decided_at": START.isoformat(),
                          "outcome": {"final label": t}} for i, t in enumerate(truths)])])
        report = build_owner_report(store, ready_options(
            prediction_label="agent's pick", outcome_label="final label"))
    confusion = candidate(report, "quoted")["confusion"]
    expected = Counter(zip(truths, guesses, strict=True))
    labels = confusion["labels"]
    assert sorted(labels) == ["billing", "login", "refund"]
    assert {(labels[h], labels[a]): n for h, row in enumerate(confusion["matrix"])
            for a, n in enumerate(row) if n} == dict(expected)


def test_disagreements_carry_the_comparators_note(tmp_path: Path) -> None:
    def reply(event: Event) -> dict[str, Any]:
        return {"reply": event.payload["draft"]}

    # Token F1 by hand: one shared word of three on each side, so P = R = F1 = 1/3.
    draft, sent = "Refund issued today", "refund was denied"
    with Store(tmp_path / "store.duckdb") as store:
        spec = SimilaritySpec(kind="similarity", prediction_path="reply", threshold=0.5)
        Pipeline(store, CallableCandidate(reply, name="drafter"), build_comparator(spec)).run(
            [ListSource([{"event_id": "e1", "key": "t1", "occurred_at": START.isoformat(),
                          "payload": {"draft": draft}}])],
            [ListSource([{"key": "t1", "decided_at": START.isoformat(), "outcome": sent}])])
        typed = owner_report(store, ready_options())
    [shown] = candidate(typed.as_dict(), "drafter")["disagreements"]
    assert shown["note"] == f"f1={1 / 3:.3f}"
    document = to_html(typed)
    assert "<th>comparator&#x27;s note</th>" in document
    assert f'<td><div class="text">f1={1 / 3:.3f}</div></td>' in document
