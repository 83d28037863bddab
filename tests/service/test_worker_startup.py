"""A worker or a recorder that cannot start says everything it misses, each naming its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.test_daemon_startup import clean_env

BASE = """
candidate: {callable: "json:dumps", name: triage}
store: {path: s.duckdb}
daemon: {api: {port: 0}}
"""
WORKERS = 'workers: {bootstrap: "127.0.0.1:9"}\n'
FILE_EVENTS = "sources: {events: [{kind: file, path: events.jsonl}]}\n"
PLAN = "rollout: {steps: [{percent: 0}, {percent: 10}], sink: {kind: file, path: d.jsonl}}\n"


def shadow(directory: Path, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    (directory / "c.yaml").write_text(config, encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "shadow", *args, "--config", "c.yaml"],
                          cwd=directory, env=clean_env(SHADOW_API_TOKEN="t0ken"),
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(("config", "expected"), [
    (BASE, ["workers: a worker hands its predictions over on a topic",
            "sources.events: a worker needs at least one Kafka event source"]),
    (BASE + WORKERS + FILE_EVENTS + PLAN,
     ["sources.events.0: a worker reads Kafka topics in a consumer group, not a file source",
      "rollout.state_topic: a worker routes by the rollout's state"]),
])
def test_a_worker_that_cannot_start_names_every_key_it_misses(
        tmp_path: Path, config: str, expected: list[str]) -> None:
    done = shadow(tmp_path, config, "worker")
    assert done.returncode == 2, done.stderr
    for line in expected:
        assert line in done.stderr
    assert "Traceback" not in done.stderr


def test_a_recorder_needs_the_workers_topic_and_a_state_topic_for_its_rollout(
        tmp_path: Path) -> None:
    done = shadow(tmp_path, BASE + PLAN, "run", "--role", "recorder")
    assert done.returncode == 2, done.stderr
    assert "workers: a recorder reads what candidate workers hand over" in done.stderr
    assert "rollout.state_topic: candidate workers route by the rollout's state" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "s.duckdb").exists()


def test_a_worker_given_a_bad_metrics_address_says_so(tmp_path: Path) -> None:
    done = shadow(tmp_path, BASE + WORKERS, "worker", "--metrics", "localhost")
    assert done.returncode == 2
    assert "--metrics: expected HOST:PORT, got 'localhost'" in done.stderr
