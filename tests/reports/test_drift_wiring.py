"""Drift where people see it: the report, the metrics, and a rollout paused for a look."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from rollout.controller import Controller
from rollout.state import Status
from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.config.file import parse_config
from shadow.config.rollout import RolloutSpec
from shadow.pipeline.runner import Pipeline
from shadow.reports.build import full_report, measure_configured_drift, render_report
from shadow.reports.drift import drift_metrics
from shadow.service.metrics import render_metrics
from shadow.service.runtime_metrics import RuntimeMetrics
from shadow.store.database import Store
from shadow.testing import ListSource

DAY0 = datetime(2026, 2, 1, tzinfo=UTC)


def events() -> list[dict[str, Any]]:
    """Chat is a tenth of the traffic at first, half of it ten days later."""
    rows = []
    for i in range(1000):
        later = i >= 500
        chat = (i % 2 == 0) if later else (i % 10 == 0)
        at = DAY0 + timedelta(days=10 if later else 0, minutes=i % 500)
        rows.append({"event_id": f"e{i}", "key": f"k{i}", "occurred_at": at.isoformat(),
                     "segment": {"channel": "chat" if chat else "email"},
                     "payload": {"i": i}})
    return rows


def store_with_drift(path: Path) -> Store:
    store = Store(path)
    store.open()
    with CallableCandidate(lambda e: "x", name="c") as candidate:
        Pipeline(store, candidate, build_comparator(ExactSpec())).run([ListSource(events())])
    return store


CONFIG = parse_config({"drift": {"reference_days": 1, "current_days": 1,
                                 "pause_rollout": True}})
NOW = DAY0 + timedelta(days=11)


def test_the_report_shows_the_drift_of_the_segment_mix(tmp_path: Path) -> None:
    store = store_with_drift(tmp_path / "s.duckdb")
    try:
        report = full_report(store, CONFIG, now=lambda: NOW)
    finally:
        store.close()
    drift = report.as_dict()["owner"]["drift"]
    assert drift["drifted"] and drift["reference"]["events"] == 500
    (channel,) = [s for s in drift["segments"] if s["field"] == "channel"]
    # Reference shares 0.1 / 0.9; current counts 250 / 250 of 500.
    expected = (250 - 50) ** 2 / 50 + (250 - 450) ** 2 / 450
    assert abs(channel["chi2"] - expected) < 1e-9
    assert "Drift detected" in render_report(report, "html")
    assert "**Drift detected:**" in render_report(report, "markdown")


def test_drift_gauges_reach_the_metrics(tmp_path: Path) -> None:
    store = store_with_drift(tmp_path / "s.duckdb")
    try:
        drift = measure_configured_drift(store, CONFIG, now=lambda: NOW)
        assert drift is not None
        runtime = RuntimeMetrics()
        runtime.set_drift(drift_metrics(drift))
        families = {f.name: f for f in text_string_to_metric_families(
            render_metrics(store, runtime=runtime))}
    finally:
        store.close()
    (detected,) = families["shadow_drift_detected"].samples
    assert detected.value == 1.0


def test_drift_pauses_a_rollout_for_a_person_to_look(tmp_path: Path) -> None:
    plan = RolloutSpec.model_validate({"steps": [{"percent": 0}, {"percent": 10}],
                                       "sink": {"kind": "file", "path": "d.jsonl"}})
    store = store_with_drift(tmp_path / "s.duckdb")
    try:
        controller = Controller(store, plan, rollout="r", candidate="c", version=None,
                                comparator="exact", now=lambda: NOW)
        controller.sync()
        drift = measure_configured_drift(store, CONFIG, now=lambda: NOW)
        assert drift is not None and drift.drifted
        t = controller.hold("drift: " + "; ".join(drift.reasons), drift.as_dict())
        assert t is not None and t.after.status is Status.PAUSED and t.actor == "controller"
        assert controller.hold("again", {}) is None  # already paused: nothing more
    finally:
        store.close()
