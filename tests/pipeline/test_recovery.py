"""A replay killed at any point loses nothing and counts nothing twice once re-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shadow.core.models import Event
from shadow.reports.summary import build_report
from shadow.store.database import Store
from tests.waiting import wait_until

EVENTS = 6_000
BATCH = 500


def slow_label(event: Event) -> str:
    time.sleep(0.0005)  # slow enough that the kill lands mid-replay
    return str(event.payload["label"])


def write_inputs(directory: Path) -> tuple[Path, Path]:
    events, outcomes = directory / "events.jsonl", directory / "outcomes.jsonl"
    with events.open("w") as out:
        for i in range(EVENTS):
            out.write(json.dumps({
                "event_id": f"e{i}", "key": f"k{i}", "occurred_at": "2024-01-01T00:00:00Z",
                "segment": {"shard": str(i % 3)}, "payload": {"label": "a" if i % 4 else "b"},
            }) + "\n")
            if i % 500 == 7:
                out.write("not json\n")
            if i % 1000 == 3:
                out.write(json.dumps({"event_id": f"e{i}", "key": f"k{i}",
                                      "occurred_at": "2024-01-01T00:00:00Z"}) + "\n")
    with outcomes.open("w") as out:
        for i in range(0, EVENTS, 2):
            out.write(json.dumps({"key": f"k{i}", "outcome": "a",
                                  "decided_at": "2024-01-02T00:00:00Z"}) + "\n")
    return events, outcomes


def replay_command(events: Path, outcomes: Path, db: Path) -> list[str]:
    return [sys.executable, "-m", "shadow", "replay", str(events), "--outcomes", str(outcomes),
            "--candidate", "tests.pipeline.test_recovery:slow_label", "--db", str(db),
            "--write-batch", str(BATCH), "--quiet"]


def stable_part(db: Path) -> dict[str, Any]:
    with Store(db, read_only=True) as store:
        report = build_report(store)
        tables = {t: store.count(t) for t in ("events", "event_segments", "predictions",
                                               "outcomes", "comparisons", "dead_letters",
                                               "duplicates")}
    for candidate in report["candidates"]:
        candidate.pop("latency_ms")
        for kind in candidate["error_kinds"]:
            kind.pop("example")
    report.pop("generated_at")
    report.pop("store")
    return {"report": report, "tables": tables}


def test_a_replay_killed_midway_and_run_again_ends_as_one_clean_replay(tmp_path: Path) -> None:
    events, outcomes = write_inputs(tmp_path)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    clean, killed = tmp_path / "clean.duckdb", tmp_path / "killed.duckdb"
    subprocess.run(replay_command(events, outcomes, clean), check=True, cwd=root, env=env,
                   capture_output=True)

    process = subprocess.Popen(replay_command(events, outcomes, killed), cwd=root, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wal = killed.with_name("killed.duckdb.wal")
    wait_until(lambda: wal.exists() or process.poll() is not None, timeout_s=60, interval_s=0.02,
               what="the replay to start writing (its write-ahead log)")
    time.sleep(0.8)  # a few batches in: some committed, one in the middle
    still_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    subprocess.run(replay_command(events, outcomes, killed), check=True, cwd=root, env=env,
                   capture_output=True)

    assert still_running, "the replay finished before it could be killed; slow the candidate"
    assert stable_part(killed) == stable_part(clean)
    expected_events = EVENTS
    assert stable_part(clean)["tables"]["events"] == expected_events
