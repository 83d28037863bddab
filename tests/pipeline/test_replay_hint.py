"""The replay's ``next:`` hint runs the report a person should read: same store, same settings."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

CONFIG = """
candidate: {callable: shadow.demo.candidate:classify, name: triage, version: "1"}
comparator: {kind: normalized, prediction_path: category}
report: {threshold: 0.5, min_compared: 50, segment_min_samples: 10}
"""


def shadow(directory: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    done = subprocess.run([sys.executable, "-m", "shadow", *args], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def report_json(directory: Path, command: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(shadow(directory, *command, "--format", "json"))
    found.pop("generated_at", None)
    found.get("owner", {}).pop("generated_at", None)
    return found


def write_workload(directory: Path) -> None:
    (directory / "shadow.yaml").write_text(CONFIG, encoding="utf-8")
    with open(directory / "events.jsonl", "w", encoding="utf-8") as events, \
         open(directory / "outcomes.jsonl", "w", encoding="utf-8") as outcomes:
        for i in range(120):
            events.write(json.dumps({"event_id": f"e{i}", "key": f"k{i}",
                                     "occurred_at": "2026-01-01T00:00:00Z",
                                     "payload": {"subject": "refund my invoice"}}) + "\n")
            # Four in five agree: ready at the config's 0.5, not at the default 0.9.
            outcomes.write(json.dumps({"key": f"k{i}", "outcome": "login" if i % 5 == 0
                                       else "billing",
                                       "decided_at": "2026-01-02T00:00:00Z"}) + "\n")


def test_the_hint_carries_the_config_so_its_report_reads_the_same_verdict(
    tmp_path: Path
) -> None:
    write_workload(tmp_path)
    printed = shadow(tmp_path, "replay", "events.jsonl", "--outcomes", "outcomes.jsonl",
                     "--db", "store.duckdb", "--config", "shadow.yaml", "--quiet")
    (hint,) = [line for line in printed.splitlines() if line.startswith("next: ")]
    command = shlex.split(hint.removeprefix("next: "))
    # However shadow was run (`shadow`, `python -m shadow`), the report is what follows.
    command = command[command.index("report"):]
    assert command == ["report", "--db", "store.duckdb", "--config", "shadow.yaml"]
    followed = report_json(tmp_path, command)
    assert followed == report_json(tmp_path, ["report", "--db", "store.duckdb", "--config",
                                              "shadow.yaml"])
    # The config's threshold (0.5) is the one judged by, not the default (0.9).
    assert followed["owner"]["options"]["threshold"] == 0.5


def test_the_hint_names_a_path_with_spaces_so_that_a_shell_reads_it_back(
    tmp_path: Path
) -> None:
    from shadow.pipeline.replay import ReplayRequest, report_options

    request = ReplayRequest(events=[Path("e.jsonl")], db=Path("my store.duckdb"),
                            config=Path("shadow.yaml"))
    assert shlex.split(report_options(request)) == ["--db", "my store.duckdb",
                                                    "--config", "shadow.yaml"]


def test_a_report_without_the_config_judges_by_the_settings_the_replay_kept(
    tmp_path: Path
) -> None:
    write_workload(tmp_path)
    shadow(tmp_path, "replay", "events.jsonl", "--outcomes", "outcomes.jsonl",
           "--db", "store.duckdb", "--config", "shadow.yaml", "--quiet")
    alone = report_json(tmp_path, ["report", "--db", "store.duckdb"])
    assert alone == report_json(tmp_path, ["report", "--db", "store.duckdb",
                                           "--config", "shadow.yaml"])
    assert alone["owner"]["options"]["threshold"] == 0.5
    assert alone["owner"]["options"]["min_compared"] == 50
