"""The readiness settings kept with a store judge as the configuration they came from."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shadow.config.file import Config, parse_config
from shadow.pipeline.readiness import as_json, readiness_part, remember, remembered
from shadow.reports.build import owner_options
from shadow.store.database import Store

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
ROLLOUT = {"steps": [{"percent": 0}, {"percent": 5}], "sink": {"kind": "file", "path": "d.jsonl"},
           "gates": {"agreement": 0.8, "max_error_rate": 0.03, "max_p95_latency_ms": 900,
                     "max_violation_rate": 0.01, "segments": {"floor": 0.7}}}
CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "report section": {"report": {"threshold": 0.5, "segment_floor": 0.4, "min_compared": 30,
                                  "segment_min_samples": 5, "redact": ["email"],
                                  "currency": "$"}},
    "rollout gates": {"rollout": ROLLOUT},
    "report over gates": {"rollout": ROLLOUT, "report": {"threshold": 0.6}},
    "candidates with checks": {
        "candidates": [
            {"callable": "shadow.demo.candidate:classify", "name": "keywords",
             "checks": [{"kind": "labels", "path": "category",
                         "allowed": ["billing", "login"]}]},
            {"kind": "http", "url": "https://ai.example.com/predict", "name": "remote",
             "headers": {"X-Team": "triage-written-inline"}}],
        "comparator": {"kind": "normalized", "prediction_path": "category",
                       "outcome_path": "label"}},
    "drift": {"drift": {"current_days": 3, "numeric_fields": ["payload.amount"]}},
}


@pytest.mark.parametrize("raw", CONFIGS.values(), ids=CONFIGS.keys())
def test_the_kept_part_gives_the_report_the_same_options(raw: dict[str, Any]) -> None:
    config = parse_config(raw)
    kept = Config.model_validate_json(as_json(readiness_part(config)))
    assert owner_options(kept) == owner_options(config)
    assert kept.report.currency == config.report.currency
    assert kept.drift == config.drift


def test_nothing_but_readiness_is_kept() -> None:
    config = parse_config({**CONFIGS["candidates with checks"], "rollout": ROLLOUT,
                           "sources": {"events": [{"kind": "kafka", "bootstrap": "k:9092",
                                                   "topics": ["t"], "group": "g",
                                                   "options": {"sasl_plain_password": "pw"}}]}})
    text = as_json(readiness_part(config))
    assert "sasl_plain_password" not in text and "written-inline" not in text
    assert "d.jsonl" not in text
    assert readiness_part(config).rollout is None


def test_settings_kept_in_a_store_are_read_back(tmp_path: Path) -> None:
    config = parse_config(CONFIGS["report over gates"])
    with Store(tmp_path / "s.duckdb") as store:
        assert remembered(store) is None
        remember(store, config, now=NOW)
    with Store(tmp_path / "s.duckdb", read_only=True) as store:
        kept = remembered(store)
    assert kept is not None and owner_options(kept) == owner_options(config)


def test_settings_this_version_cannot_read_count_as_none(tmp_path: Path) -> None:
    with Store(tmp_path / "s.duckdb") as store:
        store.save_setting("readiness", '{"report": {"a_setting_from_later": 1}}', now=NOW)
        assert remembered(store) is None
