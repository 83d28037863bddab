"""The metrics endpoint: Prometheus text whose numbers match what went into the store.

A store is filled by real replays in three parts (shadow; live with a working
sink; live with a sink that refuses), with a candidate that errors, abstains
and reports tokens, cost and a fixed latency per event. Every expected number
is computed here from the generated input, never read back from the store.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from rollout.controller import Controller
from rollout.gates import Evaluation
from rollout.runtime import LiveRollout
from rollout.state import Action, RolloutState, Status
from shadow.candidates import CallableCandidate, Candidate
from shadow.compare.comparators import build_comparator
from shadow.compare.step import compare
from shadow.config.comparators import ExactSpec
from shadow.config.daemon import Scope
from shadow.config.rollout import RolloutSpec
from shadow.core.models import ErrorKind, Event, Prediction
from shadow.pipeline.runner import Pipeline
from shadow.pipeline.source_guard import SourceStatus
from shadow.reports.html import to_html
from shadow.reports.owner import build_owner_report, owner_report
from shadow.service.metrics import LATENCY_BUCKETS_SECONDS, render_metrics
from shadow.service.runtime_metrics import RuntimeMetrics
from shadow.store.database import Store
from shadow.testing import ListSource, RecordingSink
from tests.clock import SteppingClock

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LABELS = ["billing", "login", "refund", "shipping"]
N = 150
SHADOW, PUBLISHED, PENDING = range(0, 50), range(50, 100), range(100, 150)
"""Events replayed in shadow mode; then live with a working sink; then live with a failing one."""
WITH_OUTCOME = range(0, 120)
CHANGED = {i for i in WITH_OUTCOME if i % 25 == 1}
"""Keys whose later outcome overrides the first: comparisons use the final one."""
LATENCIES_MS = (3.0, 7.0, 20.0, 60.0, 300.0, 2000.0, 20_000.0)
ABSTAIN_BELOW = 0.5
TRIAGE, BASELINE = ("triage", "1"), ("baseline", "")

PLAN = RolloutSpec.model_validate({
    "name": "triage", "steps": [{"percent": 0, "min_compared": 1_000_000}, {"percent": 100}],
    "sink": {"kind": "file", "path": "unused.jsonl"},
    "rollback": {"healthy": 0.6, "degraded": 0.3},
})


# -- the input, and what it must lead to ------------------------------------------------


def truth(i: int) -> str:
    return LABELS[i % 4]


def final(i: int) -> str:
    return "escalated" if i in CHANGED else truth(i)


def triage_output(i: int) -> dict[str, Any] | None:
    """None: the call raises. Confidence 0.2 abstains; every tenth from 5 disagrees."""
    if i % 10 == 3:
        return None
    label = LABELS[(i + 1) % 4] if i % 10 == 5 else truth(i)
    return {"label": label, "confidence": 0.2 if i % 10 == 7 else 0.9}


def baseline_output(i: int) -> dict[str, Any]:
    """Every fifteenth output holds a set, which is not JSON: a ``not_json`` error."""
    if i % 15 == 0:
        return {"label": {i}}
    return {"label": truth(i) if i % 3 else "other"}


def index(event: Event) -> int:
    return int(event.event_id.removeprefix("e"))


def triage(event: Event) -> dict[str, Any]:
    output = triage_output(index(event))
    if output is None:
        raise RuntimeError("model overloaded")
    return output


def baseline(event: Event) -> dict[str, Any]:
    return baseline_output(index(event))


def triage_result(i: int) -> str:
    output = triage_output(i)
    if output is None:
        return "error"
    return "abstained" if output["confidence"] < ABSTAIN_BELOW else "ok"


def baseline_result(i: int) -> str:
    return "error" if i % 15 == 0 else "ok"


def prompt_tokens(i: int) -> int:
    return 100 + i


def completion_tokens(i: int) -> int:
    return i % 5


def cost(i: int) -> float:
    return (prompt_tokens(i) + completion_tokens(i)) * 0.00001


class Metered(Candidate):
    """The triage callable as if behind a chat endpoint: tokens, cost and a latency per event."""

    def __init__(self) -> None:
        self.inner = CallableCandidate(triage, name=TRIAGE[0], version=TRIAGE[1])
        self.inner.abstain_below = ABSTAIN_BELOW
        self.name, self.version = self.inner.name, self.inner.version

    def predict(self, events: Sequence[Event], now: datetime) -> list[Prediction]:
        return [
            replace(p, latency_ms=LATENCIES_MS[i % len(LATENCIES_MS)],
                    prompt_tokens=prompt_tokens(i), completion_tokens=completion_tokens(i),
                    cost=cost(i))
            for p, i in zip(self.inner.predict(events, now), map(index, events), strict=True)
        ]


def event(i: int) -> dict[str, Any]:
    return {"event_id": f"e{i}", "key": f"t{i}", "occurred_at": START.isoformat(),
            "segment": {"channel": "email" if i % 2 else "chat"}, "payload": {"i": i}}


def outcomes() -> list[dict[str, Any]]:
    first = [{"key": f"t{i}", "outcome": truth(i), "decided_at": START.isoformat()}
             for i in WITH_OUTCOME]
    later = [{"key": f"t{i}", "outcome": final(i),
              "decided_at": (START + timedelta(hours=1)).isoformat()} for i in CHANGED]
    return [*first, *later, {"outcome": "billing", "decided_at": START.isoformat()}]  # no key


NOT_AN_EVENT = {"key": "t-none", "occurred_at": START.isoformat()}  # no event_id


def ticking() -> SteppingClock:
    return SteppingClock(START, timedelta(seconds=30))


@dataclass
class Filled:
    """The store's file, what the controller and the sinks saw, and the metrics rendered."""

    db: Path
    comparator: str
    state: RolloutState
    promotion: Evaluation
    rollback: Evaluation
    published: int
    """Decisions the working sink received."""
    text: str
    families: dict[str, Metric] = field(default_factory=dict)

    def series(self, sample: str, *labels: str) -> dict[tuple[str, ...], float]:
        return series(self.families, sample, *labels)


def fill(db: Path) -> Filled:
    clock = ticking()
    comparator = build_comparator(ExactSpec(prediction_path="label"))
    store = Store(db)
    store.open()
    controller = Controller(store, PLAN, rollout="triage", candidate=TRIAGE[0],
                            version=TRIAGE[1], comparator=comparator.name, now=clock)
    controller.sync()
    working, refusing = RecordingSink(), RecordingSink()
    refusing.fail_next(1_000_000)
    parts = [
        (SHADOW, [NOT_AN_EVENT], working, [ListSource(outcomes(), name="outcomes")]),
        (PUBLISHED, [event(0)], working, []),  # e0 again, from another source: a duplicate
        (PENDING, [NOT_AN_EVENT], refusing, []),
    ]
    lives = []
    with working, refusing:
        for part, (events, extra, sink, outcome_sources) in enumerate(parts):
            if part == 1:
                controller.command(Action.PROMOTE, actor="dana", reason="go live", force=True)
            live = LiveRollout(controller, sink,
                               compare=lambda: compare(store, comparator, now=clock))
            metered, plain = Metered(), CallableCandidate(baseline, name=BASELINE[0])
            source = ListSource([*map(event, events), *extra], name=f"events-{part}")
            with metered, plain:
                Pipeline(store, [metered, plain], comparator, batch_size=25, now=clock,
                       rollout=live).run([source], outcome_sources)
            lives.append(live)
    promotion = lives[0].assessments[-1].promotion
    rollback = lives[-1].assessments[-1].rollback
    assert promotion is not None and rollback is not None
    text = render_metrics(store)
    filled = Filled(db, comparator.name, controller.state, promotion, rollback,
                    len(working.published), text)
    store.close()
    return filled


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filled]:
    result = fill(tmp_path_factory.mktemp("metrics") / "store.duckdb")
    result.families = parse(result.text)
    yield result


def parse(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def series(families: dict[str, Metric], sample: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The values of one sample name, by their label values in the order given."""
    found: dict[tuple[str, ...], float] = {}
    for family in families.values():
        for s in family.samples:
            if s.name == sample:
                assert sorted(s.labels) == sorted(labels), s
                found[tuple(s.labels[name] for name in labels)] = s.value
    assert found, f"no {sample} in the metrics"
    return found


# -- the tests --------------------------------------------------------------------------


def test_the_metrics_parse_as_prometheus_text_with_the_expected_types(filled: Filled) -> None:
    types = {name: family.type for name, family in filled.families.items()}
    expected = {
        "shadow_events": "counter", "shadow_duplicates": "counter",
        "shadow_dead_letters": "counter", "shadow_outcomes": "counter",
        "shadow_predictions": "counter", "shadow_prediction_errors": "counter",
        "shadow_comparisons": "counter", "shadow_prediction_latency_seconds": "histogram",
        "shadow_tokens": "counter", "shadow_cost": "counter",
        "shadow_live_decisions_published": "counter", "shadow_live_decisions_pending": "gauge",
        "shadow_rollout_traffic_ratio": "gauge", "shadow_rollout_step": "gauge",
        "shadow_rollout_status": "gauge", "shadow_rollout_transitions": "counter",
        "shadow_rollout_label_delay_seconds": "summary",
        "shadow_gate_phase": "gauge", "shadow_gate_value": "gauge",
        "shadow_gate_threshold": "gauge", "shadow_gate_low": "gauge",
        "shadow_gate_high": "gauge", "shadow_gate_samples": "gauge", "shadow_up": "gauge",
    }
    assert {name: types.get(name) for name in expected} == expected
    assert all(name.startswith("shadow_") for name in types)
    assert filled.series("shadow_up") == {(): 1.0}


def test_intake_counters_match_the_records_replayed(filled: Filled) -> None:
    assert filled.series("shadow_events_total") == {(): N}
    assert filled.series("shadow_duplicates_total") == {(): 1}
    assert filled.series("shadow_dead_letters_total", "kind") == {("event",): 2, ("outcome",): 1,
                                                                  ("verdict",): 0}
    assert filled.series("shadow_outcomes_total") == {(): len(WITH_OUTCOME) + len(CHANGED)}


def test_predictions_are_counted_by_mode_and_result(filled: Filled) -> None:
    expected: Counter[tuple[str, ...]] = Counter()
    for candidate in (TRIAGE, BASELINE):
        for mode in ("shadow", "live"):
            for result in ("ok", "error", "abstained"):
                expected[(*candidate, mode, result)] = 0
    for i in range(N):
        expected[(*TRIAGE, "shadow" if i in SHADOW else "live", triage_result(i))] += 1
        expected[(*BASELINE, "shadow", baseline_result(i))] += 1
    found = filled.series("shadow_predictions_total", "candidate", "version", "mode", "result")
    assert found == dict(expected)


def test_errors_are_counted_by_kind_with_every_kind_present(filled: Filled) -> None:
    expected = {(*c, kind.value): 0 for c in (TRIAGE, BASELINE) for kind in ErrorKind}
    expected[(*TRIAGE, "exception")] = sum(triage_result(i) == "error" for i in range(N))
    expected[(*BASELINE, "not_json")] = sum(baseline_result(i) == "error" for i in range(N))
    found = filled.series("shadow_prediction_errors_total", "candidate", "version", "kind")
    assert found == expected


def test_comparisons_use_the_final_outcome_of_each_key(filled: Filled) -> None:
    verdicts: Counter[tuple[str, ...]] = Counter()
    for i in WITH_OUTCOME:
        output = triage_output(i)
        if output is not None and triage_result(i) == "ok":
            label = output["label"]
            verdicts[(*TRIAGE, "agree" if label == final(i) else "disagree")] += 1
        if baseline_result(i) == "ok":
            label = baseline_output(i)["label"]
            verdicts[(*BASELINE, "agree" if label == final(i) else "disagree")] += 1
    found = filled.series("shadow_comparisons_total",
                   "candidate", "version", "comparator", "verdict")
    assert found == {(c, v, filled.comparator, verdict): n
                     for (c, v, verdict), n in verdicts.items()}


def test_the_latency_histogram_counts_successful_predictions_in_their_buckets(
    filled: Filled
) -> None:
    labels = ("candidate", "version", "le")
    buckets = filled.series("shadow_prediction_latency_seconds_bucket", *labels)
    counts = filled.series("shadow_prediction_latency_seconds_count", *labels[:2])
    sums = filled.series("shadow_prediction_latency_seconds_sum", *labels[:2])
    answered = [i for i in range(N) if triage_result(i) != "error"]
    latencies = [LATENCIES_MS[i % len(LATENCIES_MS)] / 1000 for i in answered]
    expected = {(*TRIAGE, str(float(b))): sum(x <= b for x in latencies)
                for b in LATENCY_BUCKETS_SECONDS}
    expected[(*TRIAGE, "+Inf")] = len(latencies)
    assert {k: v for k, v in buckets.items() if k[:2] == TRIAGE} == expected
    assert counts[TRIAGE] == len(answered)
    assert sums[TRIAGE] == pytest.approx(sum(latencies))
    # The baseline's latencies were measured: only their consistency is known.
    ladder = [buckets[(*BASELINE, str(float(b)))] for b in LATENCY_BUCKETS_SECONDS]
    assert ladder == sorted(ladder)
    assert buckets[(*BASELINE, "+Inf")] == counts[BASELINE] >= ladder[-1]
    assert counts[BASELINE] == sum(baseline_result(i) == "ok" for i in range(N))


def test_tokens_and_cost_add_up_over_every_call(filled: Filled) -> None:
    assert filled.series("shadow_tokens_total", "candidate", "version", "kind") == {
        (*TRIAGE, "prompt"): sum(map(prompt_tokens, range(N))),
        (*TRIAGE, "completion"): sum(map(completion_tokens, range(N))),
        (*BASELINE, "prompt"): 0, (*BASELINE, "completion"): 0,
    }
    spent = filled.series("shadow_cost_total", "candidate", "version")
    assert spent == {TRIAGE: pytest.approx(sum(map(cost, range(N)))), BASELINE: 0}


def test_live_decisions_are_published_or_pending(filled: Filled) -> None:
    published = sum(triage_result(i) == "ok" for i in PUBLISHED)
    pending = sum(triage_result(i) == "ok" for i in PENDING)
    assert filled.published == published
    assert filled.series("shadow_live_decisions_published_total", "candidate", "version") == \
        {TRIAGE: published, BASELINE: 0}
    assert filled.series("shadow_live_decisions_pending", "candidate", "version") == \
        {TRIAGE: pending, BASELINE: 0}


def test_rollout_gauges_match_the_state(filled: Filled) -> None:
    state = filled.state
    assert (state.status, state.step, state.percent) == (Status.PROMOTED, 1, 100.0)
    assert filled.series("shadow_rollout_traffic_ratio", "rollout") == {("triage",): 1.0}
    assert filled.series("shadow_rollout_step", "rollout") == {("triage",): 1}
    assert filled.series("shadow_rollout_status", "rollout", "status") == {
        ("triage", s.value): float(s is Status.PROMOTED) for s in Status}
    assert filled.series("shadow_rollout_info", "rollout", "candidate", "version") == {
        ("triage", *TRIAGE): 1}
    transitions = filled.series("shadow_rollout_transitions_total", "rollout", "action")
    assert transitions == {("triage", a.value): float(a in (Action.START, Action.PROMOTE))
                           for a in Action}


def test_label_delays_are_shown_by_verdict(tmp_path: Path) -> None:
    """Disagreements labelled later than agreements, as the median and 95th percentile of
    each verdict's delays, computed here from the data written."""
    clock = ticking()
    plan = RolloutSpec.model_validate({"name": "delays", "steps": [{"percent": 0}]})
    comparator = build_comparator(ExactSpec())

    def answer(e: Event) -> str:
        return "a" if int(e.event_id[1:]) % 4 else "b"

    delays: dict[str, list[float]] = {"agree": [], "disagree": []}
    events, labels = [], []
    for i in range(200):
        occurred = START + timedelta(minutes=i)
        agrees = i % 4 != 0
        delay = timedelta(minutes=10 + (i % 7)) * (1 if agrees else 6)
        delays["agree" if agrees else "disagree"].append(delay.total_seconds())
        events.append({"event_id": f"e{i}", "key": f"k{i}", "occurred_at": occurred.isoformat(),
                       "payload": {}})
        labels.append({"key": f"k{i}", "outcome": "a",
                       "decided_at": (occurred + delay).isoformat()})
    with Store(tmp_path / "s.duckdb") as store:
        controller = Controller(store, plan, rollout="delays", candidate="c", version="1",
                                comparator=comparator.name, now=clock)
        controller.sync()
        live = LiveRollout(controller, RecordingSink(),
                           compare=lambda: compare(store, comparator, now=clock))
        with CallableCandidate(answer, name="c", version="1") as candidate:
            Pipeline(store, candidate, comparator, now=clock, rollout=live).run(
                [ListSource(events)], [ListSource(labels)])
        families = parse(render_metrics(store))
        found = series(families, "shadow_rollout_label_delay_seconds", "rollout", "verdict",
                       "quantile")
        counted = series(families, "shadow_rollout_label_delay_seconds_count", "rollout",
                         "verdict")
        owner = build_owner_report(store)["rollout"]["labels"]
        page = to_html(owner_report(store))
    for verdict, values in delays.items():
        ordered = sorted(values)

        def quantile(q: float, ordered: list[float] = ordered) -> float:
            position = q * (len(ordered) - 1)  # linear interpolation, as quantile_cont
            low = int(position)
            high = min(low + 1, len(ordered) - 1)
            return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

        assert found[("delays", verdict, "0.5")] == pytest.approx(quantile(0.5))
        assert found[("delays", verdict, "0.95")] == pytest.approx(quantile(0.95))
    assert found[("delays", "disagree", "0.5")] > 5 * found[("delays", "agree", "0.5")]
    assert counted == {("delays", v): len(values) for v, values in delays.items()}
    # The owner report shows the same, and says what it means.
    assert {(d["verdict"], d["median_seconds"]) for d in owner["by_verdict"]} == {
        (v, found[("delays", v, "0.5")]) for v in delays}
    assert owner["disagreements_later"] is True and owner["unit"] == "key"
    assert "Disagreements are labelled later than agreements" in page


@pytest.mark.parametrize("kind", ["promotion", "rollback"])
def test_gate_gauges_show_the_latest_evaluation_of_each_kind(filled: Filled, kind: str) -> None:
    evaluation = filled.promotion if kind == "promotion" else filled.rollback
    phases = filled.series("shadow_gate_phase", "rollout", "kind", "phase")
    assert {k[2]: v for k, v in phases.items() if k[1] == kind} == {
        p: float(p == evaluation.phase.value) for p in ("pass", "fail", "inconclusive")}
    check_phases = filled.series("shadow_gate_check_phase", "rollout", "kind", "check", "phase")
    for check in evaluation.checks:
        assert check_phases[("triage", kind, check.name, check.phase.value)] == 1.0
    for field_name, metric in [("value", "shadow_gate_value"),
                               ("threshold", "shadow_gate_threshold"),
                               ("low", "shadow_gate_low"), ("high", "shadow_gate_high"),
                               ("n", "shadow_gate_samples")]:
        found = {k[2]: v for k, v in filled.series(metric, "rollout", "kind", "check").items()
                 if k[1] == kind}
        expected = {c.name: getattr(c, field_name) for c in evaluation.checks
                    if getattr(c, field_name) is not None}
        assert found == pytest.approx(expected, rel=1e-12), metric


def test_the_promotion_gate_reports_its_confidence_bounds(filled: Filled) -> None:
    (agreement,) = [c for c in filled.promotion.checks if c.name == "agreement"]
    assert agreement.low is not None and agreement.high is not None and agreement.n
    assert filled.series("shadow_gate_low", "rollout", "kind", "check")[
        ("triage", "promotion", "agreement")] == pytest.approx(agreement.low)


def test_the_same_numbers_come_back_after_a_restart(filled: Filled) -> None:
    with Store(filled.db, read_only=True) as store:
        assert render_metrics(store) == filled.text


def test_a_new_store_renders_zeros_and_no_candidates(tmp_path: Path) -> None:
    with Store(tmp_path / "new.duckdb") as store:
        families = parse(render_metrics(store))
    assert series(families, "shadow_events_total") == {(): 0}
    assert series(families, "shadow_dead_letters_total", "kind") == {
        ("event",): 0, ("outcome",): 0, ("verdict",): 0}
    assert families["shadow_predictions"].samples == []
    assert families["shadow_rollout_status"].samples == []
    assert series(families, "shadow_up") == {(): 1}


def test_an_unreadable_store_still_answers_with_up_zero(tmp_path: Path) -> None:
    runtime = RuntimeMetrics()
    runtime.set_lag("kafka:tickets", 0, 7)
    text = render_metrics(Store(tmp_path / "never-opened.duckdb"), runtime=runtime)
    families = parse(text)
    assert [s.value for s in families["shadow_up"].samples] == [0.0]
    assert "shadow_events" not in families
    assert [s.value for s in families["shadow_consumer_lag"].samples] == [7.0]


def test_runtime_metrics_show_lag_intake_and_jobs(filled: Filled) -> None:
    at = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    runtime = RuntimeMetrics(now=lambda: at)
    runtime.set_lag("kafka:tickets", "tickets/0", 42)
    runtime.set_lag("kafka:tickets", "tickets/1", 3)
    runtime.set_lags("kafka:outcomes", {"outcomes/0": 5, "outcomes/1": -2})
    runtime.add_records("kafka:tickets", 10)
    runtime.progress("export.jsonl", 100, 0.5)
    runtime.progress("export.jsonl", 250, 1.0)
    runtime.job_finished("compare", True)
    runtime.job_finished("compare", False)
    runtime.job_finished("report", True)
    with Store(filled.db, read_only=True) as store:
        text = render_metrics(store, runtime=runtime)
    families = parse(text)
    assert series(families, "shadow_consumer_lag", "source", "partition") == {
        ("kafka:tickets", "tickets/0"): 42, ("kafka:tickets", "tickets/1"): 3,
        ("kafka:outcomes", "outcomes/0"): 5, ("kafka:outcomes", "outcomes/1"): 0}
    assert series(families, "shadow_source_records_total", "source") == {
        ("kafka:tickets",): 10, ("export.jsonl",): 250}
    assert series(families, "shadow_source_read_ratio", "source") == {("export.jsonl",): 1.0}
    assert series(families, "shadow_job_runs_total", "job", "result") == {
        ("compare", "ok"): 1, ("compare", "error"): 1, ("report", "ok"): 1,
        ("report", "error"): 0}
    assert series(families, "shadow_job_last_success_timestamp_seconds", "job") == {
        ("compare",): at.timestamp(), ("report",): at.timestamp()}
    assert series(families, "shadow_start_time_seconds") == {(): at.timestamp()}
    # The store's numbers are there too, unchanged.
    assert series(families, "shadow_events_total") == {(): N}


def test_set_lags_forgets_partitions_a_source_no_longer_holds() -> None:
    runtime = RuntimeMetrics()
    runtime.set_lags("kafka:tickets", {0: 4, 1: 9})
    runtime.set_lags("kafka:tickets", {1: 2})
    (lag,) = [f for f in runtime.collect() if f.name == "shadow_consumer_lag"]
    assert [(s.labels["partition"], s.value) for s in lag.samples] == [("1", 2)]


def test_runtime_metrics_count_every_update_from_several_threads() -> None:
    runtime = RuntimeMetrics()

    def count() -> None:
        for _ in range(2000):
            runtime.add_records("kafka:tickets", 1)
            runtime.collect()

    threads = [threading.Thread(target=count) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (records,) = [f for f in runtime.collect() if f.name == "shadow_source_records"]
    assert [s.value for s in records.samples] == [8000]


# -- the alerting rules shipped in deploy/ ----------------------------------------------------

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-alerts.yml"


def daemon_job_names(tmp_path: Path, store: Store) -> set[str]:
    """The scheduled jobs of a daemon with every optional one switched on."""
    from shadow.config.file import parse_config
    from shadow.service.daemon import Daemon

    config = parse_config({"daemon": {"jobs": {
        "backup_every": "1d", "retention": {"payload_older_than": "90d"}}}})
    daemon = Daemon(config, store_path=store.path, base_dir=tmp_path)
    daemon.store, daemon.comparator = store, build_comparator(ExactSpec())
    return {job.name for job in daemon._jobs()}


def test_every_alert_rule_parses_and_asks_for_series_a_daemon_exposes(
        filled: Filled, tmp_path: Path) -> None:
    import promql_parser
    import yaml

    with Store(filled.db, read_only=True) as store:
        jobs = daemon_job_names(tmp_path, store)
        runtime = RuntimeMetrics()
        for job in jobs:
            runtime.job_finished(job, True)
            runtime.job_finished(job, False)
        runtime.set_lag("kafka:tickets", "tickets/0", 3)
        runtime.set_sources([SourceStatus("kafka:tickets", False, "broker away", failures=2)])
        runtime.compare_finished("judge:0123456789ab", 2)
        text = render_metrics(store, runtime=runtime)
    labels: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, []).append(dict(sample.labels))

    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"][0]["rules"]
    assert len(rules) == len({rule["alert"] for rule in rules}) >= 10
    for rule in rules:
        name, expr = rule["alert"], promql_parser.parse(rule["expr"])
        selectors: list[Any] = []
        grouped: list[set[str]] = []

        def visit(node: Any, found: list[Any] = selectors, by: list[set[str]] = grouped) -> None:
            if isinstance(node, promql_parser.VectorSelector):
                found.append(node)
            elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
                by.append(set(node.modifier.labels))

        promql_parser.walk(expr, pre_visit=visit)
        assert selectors, name
        for selector in selectors:
            assert selector.name in labels, (name, selector.name)
            present = labels[selector.name]
            for matcher in selector.matchers.matchers:
                assert any(s.get(matcher.name) == matcher.value for s in present), \
                    (name, selector.name, matcher.name, matcher.value)
            for by in grouped:
                assert all(label in s for label in by for s in present), (name, by)
        # The labels an annotation shows survive the expression.
        shown = set(re.findall(r"\$labels\.(\w+)", str(rule["annotations"])))
        for label in shown:
            assert all(label in by for by in grouped), (name, label)
            assert all(label in s for s in labels[selectors[0].name]), (name, label)


# -- promtool, Prometheus' own linter --------------------------------------------------------

DEPLOY = ALERTS.parent


def promtool() -> str:
    """The path of ``promtool``; skipped without it, unless ``SHADOW_REQUIRE_PROMTOOL=1`` (CI)."""
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("SHADOW_REQUIRE_PROMTOOL") == "1":
        pytest.fail("SHADOW_REQUIRE_PROMTOOL=1 but no promtool on PATH")
    pytest.skip("promtool not installed (apt-get install -y prometheus)")


def check(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), "check", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, check=False)


def scraped_from_a_daemon(directory: Path) -> str:
    """``GET /metrics`` of a real ``shadow run`` once it has stored predictions."""
    import httpx

    from tests.daemon_process import ready_api, stop
    from tests.service.test_api_scopes import TOKENS, environment, start, write_setup
    from tests.waiting import wait_until

    process = start(directory, write_setup(directory), environment())
    try:
        api = ready_api(directory / "daemon.duckdb", process=process)
        with httpx.Client(base_url=api, trust_env=False, timeout=60) as http:
            def scrape() -> str:
                response = http.get("/metrics", headers={
                    "Authorization": f"Bearer {TOKENS[Scope.READ][2]}"})
                assert response.status_code == 200, response.text
                return response.text

            text = wait_until(scrape, accept=lambda t: "shadow_prediction_latency_seconds_bucket"
                              in t, timeout_s=60, what="predictions in the daemon's metrics")
    finally:
        code, log = stop(process)
    assert code == 0, log
    return text


def test_promtool_finds_nothing_to_lint_in_a_daemon_s_metrics(tmp_path: Path) -> None:
    text = scraped_from_a_daemon(tmp_path)
    linted = check("metrics", stdin=text)
    assert (linted.returncode, linted.stdout + linted.stderr) == (0, "")


def test_promtool_finds_nothing_to_lint_in_every_family_the_daemon_can_show(
        filled: Filled) -> None:
    runtime = RuntimeMetrics()
    runtime.set_lag("kafka:tickets", "tickets/0", 3)
    runtime.add_records("kafka:tickets", 3)
    runtime.progress("export.jsonl", 10, 0.5)
    runtime.set_sources([SourceStatus("kafka:tickets", False, "broker away", failures=2)])
    runtime.job_finished("compare", True)
    runtime.compare_finished("judge:0123456789ab", 2)
    runtime.set_drift([("shadow_drift_psi", {"field": "amount"}, 0.3),
                       ("shadow_drift_detected", {}, 1.0)])
    with Store(filled.db, read_only=True) as store:
        text = render_metrics(store, runtime=runtime)
    assert "shadow_rollout_label_delay_seconds{" in text and "shadow_gate_value{" in text
    linted = check("metrics", stdin=text)
    assert (linted.returncode, linted.stdout + linted.stderr) == (0, "")


def test_promtool_accepts_the_alert_rules_and_the_scrape_configuration() -> None:
    rules = check("rules", str(ALERTS))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout
    # Syntax only: the token file it names exists on the Prometheus host, not here.
    config = check("config", "--syntax-only", str(DEPLOY / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
