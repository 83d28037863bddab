"""The example rollout configuration, run over the demo workload."""

from __future__ import annotations

import json
from pathlib import Path

from shadow.demo.workload import generate
from tests.cli.test_cli import run

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "rollout-demo.yaml"


def test_the_demo_rollout_is_held_in_shadow_by_the_german_segment(tmp_path: Path) -> None:
    # A copy, so the sink's file lands beside it and not in the repository.
    config = tmp_path / "rollout-demo.yaml"
    config.write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    files = generate(tmp_path, events=3000)
    replay = run(tmp_path, "replay", str(files.events), "--outcomes", str(files.outcomes),
                 "--config", str(config), "--db", "r.duckdb", "--quiet")
    assert replay.returncode == 0, replay.stderr
    result = run(tmp_path, "rollout", "status", "--config", str(config), "--db", "r.duckdb",
                 "--format", "json")
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert (view["step"], view["status"], view["percent"]) == (0, "progressing", 0)
    checks = {c["name"]: c for c in view["promotion"]["checks"]}
    assert checks["agreement"]["phase"] == "pass"
    failed = [name for name, c in checks.items() if c["phase"] == "fail"]
    assert failed == ["segment language=de"]
    assert checks["segment language=de"]["value"] < 0.7 <= checks["segment language=en"]["value"]
    text = run(tmp_path, "rollout", "status", "--config", str(config), "--db", "r.duckdb")
    assert "✗ segment language=de" in text.stdout
