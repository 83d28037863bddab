"""Hard-constraint checks: every kind, stored, reported, measured, gated, and never published."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rollout import audit
from rollout.controller import Controller
from rollout.gates import StepStats, promotion
from rollout.runtime import LiveRollout
from rollout.state import Action
from shadow.candidates import CallableCandidate, build_candidate
from shadow.candidates.constraints import Checks, luhn
from shadow.compare.comparators import build_comparator
from shadow.compare.step import compare
from shadow.config.comparators import ExactSpec
from shadow.config.file import parse_config
from shadow.config.rollout import RolloutSpec
from shadow.core.errors import ConfigError
from shadow.core.models import Event, Prediction, PredictionError
from shadow.pipeline.replay import describe
from shadow.pipeline.runner import Pipeline
from shadow.reports.summary import build_report
from shadow.service.metrics import render_metrics
from shadow.store.database import Store
from shadow.testing import ListSource, RecordingSink
from tests.clock import SteppingClock

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LABELS = ["billing", "login", "refund", "shipping"]


def checks(*specs: dict[str, Any]) -> Checks:
    config = parse_config({"candidate": {"callable": "tests.candidates.test_constraints:triage",
                                         "checks": list(specs)}})
    assert config.candidate is not None
    built = Checks.from_specs(config.candidate.checks)
    assert built is not None
    return built


# -- every kind on constructed outputs ----------------------------------------------


def test_regex_must_not_match_and_must_match() -> None:
    promise = checks({"kind": "regex", "name": "refund_promise", "pattern": r"refund.*guarantee",
                      "must": "not_match", "path": "reply", "ignore_case": True})
    assert promise.violations({"reply": "We REFUND, guaranteed: a guarantee"}) == (
        "refund_promise matched at output.reply",)
    assert promise.violations({"reply": "We will look into it"}) == ()
    assert promise.violations({"other": "refund guarantee"}) == ()  # nothing there to match

    reference = checks({"kind": "regex", "pattern": r"T-\d+", "must": "match", "path": "reply"})
    assert reference.violations({"reply": "see T-1234"}) == ()
    assert reference.violations({"reply": "see ticket"}) == ("regex did not match at output.reply",)
    assert reference.violations({}) == ("regex found nothing at output.reply",)
    # Without a path the whole output is matched as JSON text.
    whole = checks({"kind": "regex", "pattern": r'"category":"billing"', "must": "match"})
    assert whole.violations({"category": "billing"}) == ()
    assert whole.violations({"category": "login"}) == ("regex did not match at output",)


def test_pii_finds_emails_phones_and_luhn_valid_cards_only() -> None:
    pii = checks({"kind": "pii"})
    assert pii.violations({"reply": "Write to jane.doe@example.co.uk"}) == (
        "pii:email matched at output.reply",)
    assert pii.violations({"notes": ["fine", "call +44 20 7946 0958"]}) == (
        "pii:phone matched at output.notes.1",)
    assert pii.violations({"reply": "or (555) 123-4567"}) == ("pii:phone matched at output.reply",)
    assert pii.violations({"reply": "card 4111 1111 1111 1111 on file"}) == (
        "pii:card matched at output.reply",)
    assert pii.violations({"card": 4111111111111111}) == ("pii:card matched at output.card",)
    assert pii.violations("jane@example.com, 4111-1111-1111-1111") == (
        "pii:email matched at output", "pii:card matched at output")
    # Not personal data: a number failing Luhn, an order number, a date, an amount.
    for clean in ("ref 4111 1111 1111 1112", "order 12345678", "since 2024-01-15",
                  "refund of 1,250.00 EUR", "version 1.2.3"):
        assert pii.violations({"reply": clean}) == (), clean
    only_cards = checks({"kind": "pii", "name": "leak", "types": ["card"], "path": "reply"})
    assert only_cards.violations({"reply": "jane@example.com 5500 0000 0000 0004",
                                  "other": "4111111111111111"}) == (
        "leak:card matched at output.reply",)


def test_luhn() -> None:
    assert luhn("4111111111111111") and luhn("79927398713")
    assert not luhn("4111111111111112") and not luhn("")


def test_required_fields_missing_or_null() -> None:
    required = checks({"kind": "required", "fields": ["category", "meta.lang"]})
    assert required.violations({"category": "x", "meta": {"lang": "en"}}) == ()
    assert required.violations({"category": None, "meta": {}}) == (
        "required output.category is missing", "required output.meta.lang is missing")
    assert required.violations("just text") == (
        "required output.category is missing", "required output.meta.lang is missing")


def test_json_schema_validity() -> None:
    schema = {"type": "object", "required": ["category"],
              "properties": {"category": {"type": "string"},
                             "priority": {"type": "integer", "minimum": 1}}}
    valid = checks({"kind": "json_schema", "name": "shape", "schema": schema})
    assert valid.violations({"category": "billing", "priority": 2}) == ()
    assert valid.violations({"category": "billing", "priority": "high"}) == (
        "shape invalid at output.priority: 'high' is not of type 'integer'",)
    assert valid.violations({"priority": 1}) == (
        "shape invalid at output: 'category' is a required property",)


def test_allowed_labels_single_and_list() -> None:
    labels = checks({"kind": "labels", "path": "category", "allowed": LABELS})
    assert labels.violations({"category": "billing"}) == ()
    assert labels.violations({"category": "sales"}) == (
        'labels output.category="sales" is not an allowed label',)
    assert labels.violations({}) == ("labels output.category is missing",)
    tags = checks({"kind": "labels", "name": "tags", "path": "tags", "allowed": ["a", "b", 1]})
    assert tags.violations({"tags": ["a", 1]}) == ()
    # A number is not its text: "1" is not the label 1.
    assert tags.violations({"tags": ["a", "1"]}) == (
        'tags output.tags="1" is not an allowed label',)


def test_max_length_of_text_or_json() -> None:
    short = checks({"kind": "max_length", "path": "reply", "max": 10})
    assert short.violations({"reply": "0123456789"}) == ()
    assert short.violations({"reply": "0123456789!"}) == (
        "max_length output.reply has 11 characters, more than 10",)
    assert short.violations({}) == ()  # absence is the `required` check's business
    whole = checks({"kind": "max_length", "name": "size", "max": 12})
    assert whole.violations({"a": "xyz"}) == ()  # {"a":"xyz"} is 11 characters
    assert whole.violations({"a": "wxyz1"}) == ("size output has 13 characters, more than 12",)


def polite(output: Any) -> bool | str | None:
    reply = output["reply"]
    if reply == "ok":
        return None
    if reply == "fine":
        return True
    if reply == "rude":
        return "is rude"
    if reply == "odd":
        return 42  # type: ignore[return-value]
    return False


def test_custom_checks_and_their_failures() -> None:
    custom = checks({"kind": "custom", "function": "tests.candidates.test_constraints:polite"})
    name = "tests.candidates.test_constraints:polite"
    assert custom.violations({"reply": "ok"}) == ()
    assert custom.violations({"reply": "fine"}) == ()
    assert custom.violations({"reply": "rude"}) == (f"{name} is rude",)
    assert custom.violations({"reply": "meh"}) == (f"{name} failed",)
    assert custom.violations({"reply": "odd"}) == (
        f"{name} returned a int; expected None, True, False or a message",)
    # A check that raises is a violation, never a crash.
    assert custom.violations({"no": "reply"}) == (f"{name} check raised: KeyError: 'reply'",)
    named = checks({"kind": "custom", "name": "tone",
                    "function": "tests.candidates.test_constraints:polite"})
    assert named.violations({"reply": "rude"}) == ("tone is rude",)


def test_a_custom_check_that_cannot_be_loaded_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no_such_module"):
        checks({"kind": "custom", "function": "no_such_module:check"})


def test_apply_marks_only_violating_successful_predictions() -> None:
    labels = checks({"kind": "labels", "path": "category", "allowed": LABELS})

    def made(output: Any, **extra: Any) -> Prediction:
        return Prediction(event_id="e", candidate="c", output=output, latency_ms=1.0,
                          predicted_at=START, **extra)

    clean = made({"category": "billing"})
    bad = made({"category": "sales"})
    abstained = made({"category": "sales"}, abstained=True)
    errored = made(None, error=PredictionError(type="RuntimeError", message="down"))
    out = labels.apply([clean, bad, abstained, errored])
    assert out[0] is clean and out[3] is errored
    assert out[1].violations == out[2].violations == (
        'labels output.category="sales" is not an allowed label',)
    batch = [clean, errored]
    assert labels.apply(batch) is batch  # nothing violated: nothing copied


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(("check", "message"), [
    ({"kind": "regex", "pattern": "(", "must": "match"},
     "candidate.checks.0.pattern: not a valid regular expression"),
    ({"kind": "regex", "pattern": "x"}, "candidate.checks.0.must: required setting is missing"),
    ({"pattern": "x"}, "candidate.checks.0.kind: expected one of regex, pii, required, "
                       "json_schema, labels, max_length, custom, action, got None"),
    ({"kind": "pii", "types": ["ssn"]}, "candidate.checks.0.types.0: input should be"),
    ({"kind": "json_schema", "schema": {"type": 3}},
     "candidate.checks.0.schema: not a valid JSON schema"),
    ({"kind": "labels", "path": "category"},
     "candidate.checks.0.allowed: required setting is missing"),
    ({"kind": "max_length", "max": -1}, "candidate.checks.0.max: input should be greater"),
    ({"kind": "custom", "function": "nope"},
     "candidate.checks.0.function: expected the form module:function"),
    ({"kind": "required", "fields": ["a"], "name": "has space"},
     "candidate.checks.0.name: expected a match of"),
    ({"kind": "required", "field": ["a"]}, "candidate.checks.0.field: unknown setting"),
])
def test_config_errors_name_the_key_path(check: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"candidate": {"callable": "tests.candidates.test_constraints:triage",
                                    "checks": [check]}})
    assert message in str(caught.value)


def test_build_candidate_compiles_the_checks_once() -> None:
    config = parse_config({"candidates": [
        {"callable": "tests.candidates.test_constraints:triage", "name": "a",
         "checks": [{"kind": "pii", "types": ["email"]}]},
        {"callable": "tests.candidates.test_constraints:triage", "name": "b"},
    ]})
    with_checks, without = (build_candidate(spec) for spec in config.all_candidates())
    assert isinstance(with_checks.checks, Checks)
    assert without.checks is None


# -- in the pipeline ----------------------------------------------------------------


def ticking() -> SteppingClock:
    return SteppingClock(START, timedelta(seconds=30))


def triage(event: Event) -> dict[str, Any]:
    """Always the right category; every fifth reply leaks an email address."""
    i = int(event.event_id.removeprefix("e"))
    reply = "write to jane@example.com" if i % 5 == 0 else "we are on it"
    return {"category": LABELS[i % 4], "reply": reply}


def events(n: int) -> list[dict[str, Any]]:
    return [{"event_id": f"e{i}", "key": f"t{i}", "occurred_at": START.isoformat(),
             "payload": {"i": i}} for i in range(n)]


def outcomes(n: int) -> list[dict[str, Any]]:
    return [{"key": f"t{i}", "outcome": LABELS[i % 4], "decided_at": START.isoformat()}
            for i in range(n)]


def candidate(function: Callable[[Event], Any] = triage) -> CallableCandidate:
    made = CallableCandidate(function, name="triage", version="1")
    made.checks = checks({"kind": "pii", "types": ["email", "card"]},
                         {"kind": "labels", "path": "category", "allowed": LABELS})
    return made


def test_violations_are_stored_reported_and_exported_as_metrics(tmp_path: Path) -> None:
    clock = ticking()
    comparator = build_comparator(ExactSpec(prediction_path="category"))
    with Store(tmp_path / "s.duckdb") as store:
        with candidate() as c:
            summary = Pipeline(store, c, comparator, batch_size=30, now=clock).run(
                [ListSource(events(100))], [ListSource(outcomes(100))])
        assert summary.violations == 20
        assert "violating a check 20" in describe(summary)
        rows = store.db.execute(
            "SELECT event_id, violations FROM predictions WHERE violations IS NOT NULL "
            "ORDER BY CAST(substr(event_id, 2) AS INTEGER)").fetchall()
        assert [r[0] for r in rows] == [f"e{i}" for i in range(0, 100, 5)]
        assert {tuple(r[1]) for r in rows} == {("pii:email matched at output.reply",)}

        (report,) = build_report(store, now=clock)["candidates"]
        assert report["violations"] == 20 and report["violation_rate"] == 0.2
        assert report["violation_kinds"] == [
            {"check": "pii:email", "count": 20, "example": "pii:email matched at output.reply"}]
        # Violating predictions are still compared: the category was right.
        assert report["compared"] == 100 and report["agreement"]["rate"] == 1.0

        text = render_metrics(store)
        assert ('shadow_prediction_violations_total{candidate="triage",check="pii:email",'
                'version="1"} 20.0') in text


def test_retried_predictions_are_checked_too(tmp_path: Path) -> None:
    calls: dict[str, int] = {}

    def flaky(event: Event) -> dict[str, Any]:
        calls[event.event_id] = calls.get(event.event_id, 0) + 1
        if calls[event.event_id] == 1:
            raise RuntimeError("model server down")
        return {"category": "sales", "reply": "ok"}

    comparator = build_comparator(ExactSpec(prediction_path="category"))
    with Store(tmp_path / "s.duckdb") as store:
        with candidate(flaky) as c:
            replay = Pipeline(store, c, comparator, batch_size=10, now=ticking())
            replay.run([ListSource(events(10))])
            assert store.db.execute("SELECT count(violations) FROM predictions").fetchall() \
                == [(0,)]  # errored predictions are not checked
            retried = Pipeline(store, c, comparator, batch_size=10, now=ticking()).run(
                [], retry_errors=True)
            assert retried.violations == 10
        assert store.db.execute(
            "SELECT count(*) FROM predictions WHERE violations = "
            "['labels output.category=\"sales\" is not an allowed label']").fetchall() == [(10,)]


def plan(steps: list[dict[str, Any]], **gates: Any) -> RolloutSpec:
    return RolloutSpec.model_validate({
        "name": "triage", "steps": steps, "sink": {"kind": "file", "path": "unused.jsonl"},
        "gates": {"agreement": 0.5, **gates}, "rollback": {"healthy": 0.55, "degraded": 0.4},
    })


def rollout_run(store: Store, spec: RolloutSpec, sink: RecordingSink, n: int, *,
                promote: bool = False) -> Controller:
    clock = ticking()
    comparator = build_comparator(ExactSpec(prediction_path="category"))
    controller = Controller(store, spec, rollout="triage", candidate="triage", version="1",
                            comparator=comparator.name, now=clock)
    controller.sync()
    if promote:
        controller.command(Action.PROMOTE, actor="dana", reason="test", force=True)
    sink.open()
    live = LiveRollout(controller, sink, compare=lambda: compare(store, comparator, now=clock))
    with candidate() as c:
        Pipeline(store, c, comparator, batch_size=50, now=clock, rollout=live).run(
            [ListSource(events(n))], [ListSource(outcomes(n))])
    return controller


def test_the_violation_budget_gates_promotion(tmp_path: Path) -> None:
    steps = [{"percent": 0, "min_compared": 100}, {"percent": 100}]
    with Store(tmp_path / "tight.duckdb") as store:
        controller = rollout_run(store, plan(steps, max_violation_rate=0.05), RecordingSink(),
                                 500)
        assert controller.state.step == 0
        failed = [c for (evidence,) in store.db.execute(
            "SELECT evidence FROM gate_evaluations WHERE kind = 'promotion'").fetchall()
            for c in json.loads(evidence)["checks"]
            if c["name"] == "violations" and c["phase"] == "fail"]
        assert failed and failed[-1]["value"] == pytest.approx(0.2)
        assert failed[-1]["threshold"] == 0.05
        assert not [r for r in audit.history(store, "triage") if r.action is Action.PROMOTE]
    # The same run with room in the budget promotes: it was the violations that held it.
    with Store(tmp_path / "loose.duckdb") as store:
        controller = rollout_run(store, plan(steps, max_violation_rate=0.25), RecordingSink(),
                                 500)
        assert controller.state.step == 1


def test_the_violations_gate_waits_without_checked_predictions() -> None:
    spec = plan([{"percent": 0}, {"percent": 100}], max_violation_rate=0.1)
    stats = StepStats(elapsed=timedelta(hours=1), predictions=10, errors=10)
    (check,) = [c for c in promotion(stats, spec, spec.steps[0]).checks
                if c.name == "violations"]
    assert check.phase.value == "inconclusive"
    stats = StepStats(elapsed=timedelta(hours=1), predictions=10, errors=2, violations=1)
    (check,) = [c for c in promotion(stats, spec, spec.steps[0]).checks
                if c.name == "violations"]
    assert check.phase.value == "fail" and check.value == 1 / 8 and check.n == 8
    no_budget = plan([{"percent": 0}, {"percent": 100}])
    assert "violations" not in {c.name for c in promotion(stats, no_budget,
                                                          no_budget.steps[0]).checks}


def test_a_live_decision_with_a_violation_is_never_published(tmp_path: Path) -> None:
    spec = plan([{"percent": 0, "min_compared": 1}, {"percent": 100}])
    sink = RecordingSink()
    with Store(tmp_path / "s.duckdb") as store:
        rollout_run(store, spec, sink, 200, promote=True)
        live = store.db.execute(
            "SELECT event_id, published_at IS NOT NULL, violations IS NOT NULL "
            "FROM predictions WHERE mode = 'live'").fetchall()
        assert len(live) == 200
        published = sorted(d.event_id for d in sink.published)
        assert published == sorted(f"e{i}" for i in range(200) if i % 5)
        # The violating ones stay with the humans: live, never published, not pending.
        blocked = sorted(e for e, sent, violated in live if violated)
        assert blocked == sorted(f"e{i}" for i in range(0, 200, 5))
        assert not any(sent for _, sent, violated in live if violated)
        assert ('shadow_live_decisions_pending{candidate="triage",version="1"} 0.0'
                in render_metrics(store))
