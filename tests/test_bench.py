"""The benchmarks run, at a small size, so that they do not rot between measurements.

Each benchmark checks its own results (the store holds every event, no call
failed) and exits non-zero otherwise; the figures at this size mean nothing
and are not looked at. The real runs and their figures are in
docs/performance.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def bench(script: str, *args: str, timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stdout


def test_report_speed(tmp_path: Path) -> None:
    out = bench("report_speed.py", "--compared", "4000", "--candidates", "2", "--runs", "1",
                "--dir", str(tmp_path))
    assert "over 2 candidates" in out and "build_owner_report:" in out
    assert "shadow report --format html:" in out


def test_backup_speed(tmp_path: Path) -> None:
    out = bench("backup_speed.py", "--compared", "4000", "--candidates", "2", "--runs", "1",
                "--dir", str(tmp_path))
    assert "shadow backup:" in out and "ratio backup / file copy" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup-4000-2.duckdb"]


def test_rollout_evaluation(tmp_path: Path) -> None:
    out = bench("rollout_evaluation.py", "--keys", "3000", "--new", "200", "--runs", "2",
                "--dir", str(tmp_path))
    assert "Controller.evaluate: median" in out and "restart (a new controller" in out


def test_replay_vs_duckdb(tmp_path: Path) -> None:
    out = bench("replay_vs_duckdb.py", "--events", "3000", "--dir", str(tmp_path))
    assert "3,000" in out


def test_replay_stages(tmp_path: Path) -> None:
    for pipeline in ([], ["--per-record"]):
        out = bench("replay_stages.py", "--events", "3000", "--dir", str(tmp_path), *pipeline)
        assert "3,000 events" in out and "call the candidate" in out


def test_http_concurrency(tmp_path: Path) -> None:
    out = bench("http_concurrency.py", "--events", "300", "--concurrency", "16", "--delay",
                "0.01", "--runs", "1", "--dir", str(tmp_path))
    assert "300" in out


def test_kafka_throughput(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = bench("kafka_throughput.py", "--events", "3000", "--bootstrap", kafka_bootstrap,
                "--check-crcs", "on", "--dir", str(tmp_path))
    assert "produced 3,000 events" in out and "ratio pipeline / plain" in out


def test_kafka_throughput_of_the_daemon(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = bench("kafka_throughput.py", "--events", "3000", "--bootstrap", kafka_bootstrap,
                "--check-crcs", "on", "--daemon", "--dir", str(tmp_path))
    # Three thousand events are one batch: stored before the first scrape, or timed after it.
    assert ("shadow run stored all 3,000 events" in out) != ("ratio daemon / plain" in out)


def test_webhook_intake(tmp_path: Path) -> None:
    out = bench("webhook_intake.py", "--deliveries", "200", "--sequential", "30",
                "--concurrency", "10", "--dir", str(tmp_path))
    assert "stored: 230 deliveries, each once" in out
    assert "ratio shadow run / bare server" in out


def test_cpu_workers(tmp_path: Path) -> None:
    out = bench("cpu_workers.py", "--events", "2000", "--runs", "1", "--dir", str(tmp_path))
    assert "predict, workers: 2" in out and "ratio replay  two processes / one" in out


def test_workers_scaling(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = bench("workers_scaling.py", "--events", "200", "--workers", "1,2", "--delay", "0.01",
                "--bootstrap", kafka_bootstrap, "--dir", str(tmp_path))
    assert "1 worker(s):" in out and "2 worker(s):" in out and "handed over 200" in out
    assert "ratio to 1" in out


def test_recorder_throughput(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = bench("recorder_throughput.py", "--events", "3000", "--batch-size", "1000",
                "--bootstrap", kafka_bootstrap, "--dir", str(tmp_path))
    assert "recorder stored 3,000 events, one prediction each" in out
    assert "predictions stored/s" in out


def test_recorder_throughput_of_the_daemon(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = bench("recorder_throughput.py", "--events", "5000", "--batch-size", "100", "--daemon",
                "--bootstrap", kafka_bootstrap, "--dir", str(tmp_path))
    assert "shadow run --role recorder stored" in out


def test_workers_faults(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = bench("workers_faults.py", "--events", "1500", "--rollbacks", "2",
                "--bootstrap", kafka_bootstrap, "--dir", str(tmp_path))
    assert "kills: 0 events lost, 0 stored twice: ok" in out
    assert "rollbacks: 2, reaching 3 workers each" in out
    assert "live decisions published more than 2 s after a rollback: 0" in out
