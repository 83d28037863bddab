"""``shadow rollout …`` run for real in subprocesses, on a store a replay filled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_cli import assert_argparse_error, assert_usage_error, run, write_jsonl

CANDIDATE = '''
LABELS = ["billing", "login", "refund"]


def triage(event):
    i = event.payload["i"]
    return LABELS[(i + 1) % 3] if i % 25 == 0 else LABELS[i % 3]
'''

CONFIG = """
candidate:
  callable: triage:triage
  name: triage
  version: "3"
store:
  path: shadow.duckdb
rollout:
  steps:
    - {percent: 0, min_compared: 100, approval: true}
    - {percent: 10, min_compared: 100}
    - {percent: 100}
  gates: {agreement: 0.8}
  sink: {kind: file, path: decisions.jsonl}
"""


def prepare(directory: Path, config: str = CONFIG) -> Path:
    (directory / "triage.py").write_text(CANDIDATE, encoding="utf-8")
    labels = ["billing", "login", "refund"]
    write_jsonl(directory / "events.jsonl", [
        {"event_id": f"e{i}", "key": f"t{i}", "occurred_at": "2026-01-01T00:00:00Z",
         "payload": {"i": i}} for i in range(600)])
    write_jsonl(directory / "outcomes.jsonl", [
        {"key": f"t{i}", "outcome": labels[i % 3], "decided_at": "2026-01-02T00:00:00Z"}
        for i in range(600)])
    (directory / "shadow.yaml").write_text(config, encoding="utf-8")
    return directory


def shadow(directory: Path, *args: str) -> Any:
    return run(directory, *args, SHADOW_CONFIG="shadow.yaml", SHADOW_ACTOR="dana")


def status(directory: Path) -> dict[str, Any]:
    result = shadow(directory, "rollout", "status", "--format", "json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = prepare(tmp_path_factory.mktemp("rollout-cli"))
    result = shadow(directory, "replay", "events.jsonl", "--outcomes", "outcomes.jsonl",
                    "--quiet", "--write-batch", "100")
    assert result.returncode == 0, result.stderr
    return directory


def test_a_step_needing_approval_shows_its_evidence_and_waits(replayed: Path) -> None:
    view = status(replayed)
    assert (view["step"], view["status"], view["percent"]) == (0, "awaiting_approval", 0)
    checks = {c["name"]: c for c in view["promotion"]["checks"]}
    # 24 of every 25 events agree: 576 of 600.
    assert checks["agreement"]["n"] == 600 and checks["agreement"]["value"] == 576 / 600
    assert checks["agreement"]["phase"] == "pass"
    assert (replayed / "decisions.jsonl").read_text() == ""  # nothing went live


def test_promote_rollback_and_the_refusals_between(replayed: Path) -> None:
    promoted = shadow(replayed, "rollout", "promote", "--reason", "owner approved")
    assert promoted.returncode == 0, promoted.stderr
    assert "step 1 (10 %, progressing) by dana (claimed, local): owner approved" in \
        promoted.stdout

    assert_usage_error(shadow(replayed, "rollout", "promote", "--full"), "--full", "--yes")
    assert_argparse_error(shadow(replayed, "rollout", "rollback"), "--reason")

    back = shadow(replayed, "rollout", "rollback", "--reason", "replies too long")
    assert back.returncode == 0, back.stderr
    assert status(replayed)["status"] == "rolled_back"

    refused = shadow(replayed, "rollout", "promote")
    assert refused.returncode == 1
    assert "refused" in refused.stderr and "restart it first" in refused.stderr
    # the command it names runs as this one was invoked (here: python -m shadow)
    assert "-m shadow rollout restart)" in refused.stderr
    assert "Traceback" not in refused.stderr

    history = shadow(replayed, "rollout", "history", "--format", "json")
    records = json.loads(history.stdout)
    # On the file, no token is involved: the trail says local, beside the claimed name.
    assert [(r["action"], r["actor"], r["token"]) for r in records] == [
        ("start", "controller", None), ("await_approval", "controller", None),
        ("promote", "dana", None), ("rollback", "dana", None)]
    assert records[-1]["reason"] == "replies too long"
    text = shadow(replayed, "rollout", "history")
    assert text.returncode == 0
    assert text.stdout.splitlines()[-1].endswith(
        "by dana (claimed, local): replies too long")
    assert "by controller: " in text.stdout


def test_a_plan_that_does_not_start_in_shadow_is_a_configuration_error(tmp_path: Path) -> None:
    directory = prepare(tmp_path, CONFIG.replace("percent: 0,", "percent: 1,"))
    result = shadow(directory, "rollout", "status")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "  rollout: the first step must be shadow mode (percent: 0)" in result.stderr


def test_status_before_anything_ran_says_so(tmp_path: Path) -> None:
    directory = prepare(tmp_path)
    from shadow.store.database import Store

    with Store(directory / "shadow.duckdb"):
        pass
    result = shadow(directory, "rollout", "status")
    assert result.returncode == 0 and "has not started" in result.stdout


def test_simulate_prints_the_figures_as_json(tmp_path: Path) -> None:
    result = run(tmp_path, "rollout", "simulate", "--runs", "200", "--seed", "4",
                 "--format", "json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for key in ("false_promotion_rate", "naive_false_promotion_rate",
                "median_events_to_promotion", "false_rollback_rate",
                "median_events_to_rollback"):
        assert key in figures
    bad = run(tmp_path, "rollout", "simulate", "--degraded", "0.99")
    assert_usage_error(bad, "degraded")
