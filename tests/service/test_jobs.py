"""The daemon's scheduled jobs: no overlap, failures logged and retried, missed runs run once."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from shadow.service.jobs import Job, Jobs, apply_retention
from shadow.store.database import Store
from tests.waiting import wait_until

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def direct(function: Any) -> Any:
    return function()


def test_a_failing_job_is_logged_with_its_traceback_and_recorded(tmp_path: Path) -> None:
    def broken() -> None:
        raise RuntimeError("report directory is read-only")

    with Store(tmp_path / "s.duckdb") as store, structlog.testing.capture_logs() as logs:
        jobs = Jobs(store, [Job("report", timedelta(hours=1), broken)], direct, now=lambda: T0)
        assert jobs.execute(jobs.jobs[0]) is False
        (failure,) = [e for e in logs if e["event"].startswith("job failed")]
        assert "RuntimeError: report directory is read-only" in failure["error"]
        assert "Traceback (most recent call last)" in failure["traceback"]
        assert store.db.execute("SELECT job, ok, error FROM job_runs").fetchall() == [
            ("report", False, "RuntimeError: report directory is read-only")]
        # It is tried again at its next time: a failure does not count as the last run.
        assert jobs.next_runs() == {"report": T0}


def test_after_downtime_a_missed_job_runs_once_at_start_up(tmp_path: Path) -> None:
    calls: list[str] = []
    with Store(tmp_path / "s.duckdb") as store:
        every_day = [Job("report", timedelta(days=1), lambda: calls.append("report")),
                     Job("checkpoint", timedelta(hours=1), lambda: calls.append("checkpoint"))]
        jobs = Jobs(store, every_day, direct, now=lambda: T0)
        for job in every_day:
            jobs.execute(job)
        # Five days later: each job is due once, now, not five (or 120) times.
        later = T0 + timedelta(days=5)
        assert Jobs(store, every_day, direct, now=lambda: later).next_runs() == {
            "report": later, "checkpoint": later}
        # Two hours later: the daily one waits for its time; the hourly one is due.
        soon = T0 + timedelta(hours=2)
        assert Jobs(store, every_day, direct, now=lambda: soon).next_runs() == {
            "report": T0 + timedelta(days=1), "checkpoint": soon}


def test_a_slow_job_never_overlaps_itself(tmp_path: Path) -> None:
    running, most, submitted, finished = 0, 0, 0, 0
    lock = threading.Lock()
    recorded: list[bool] = []

    def slow() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        # Longer than seven periods: APScheduler keeps the wall clock's time, not ours,
        # so real time must pass for it to try (and refuse) to start the job again.
        time.sleep(0.35)
        with lock:
            running -= 1

    def threaded(function: Any) -> Any:  # jobs run on the scheduler's threads here
        nonlocal submitted, finished
        with lock:
            submitted += 1
        try:
            return function()
        finally:
            with lock:
                finished += 1

    with Store(tmp_path / "s.duckdb") as store:
        jobs = Jobs(store, [Job("compare", timedelta(milliseconds=50), slow)], threaded,
                    on_result=lambda job, ok: recorded.append(ok))
        jobs.start()
        try:
            wait_until(lambda: len(recorded) >= 2, timeout_s=30,
                       what="two runs of the slow job recorded")
        finally:
            jobs.stop()
        # A run already started goes on after the stop; the store stays open until it ends.
        wait_until(lambda: finished == submitted, timeout_s=30,
                   what="the run in progress at the stop to end")
    assert most == 1 and len(recorded) >= 2 and all(recorded)


def test_retention_blanks_old_payloads_archives_them_and_keeps_the_counts(
    tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    from shadow.candidates import CallableCandidate
    from shadow.compare.comparators import build_comparator
    from shadow.config.comparators import ExactSpec
    from shadow.pipeline.runner import Pipeline
    from shadow.testing import ListSource

    events = [{"event_id": f"e{i}", "key": f"k{i}", "occurred_at": "2026-01-01T00:00:00Z",
               "payload": {"email": f"p{i}@example.com"}} for i in range(10)]
    with Store(tmp_path / "s.duckdb") as store:
        with CallableCandidate(lambda e: "x", name="c") as candidate:
            Pipeline(store, candidate, build_comparator(ExactSpec())).run([ListSource(events)])
        store.db.execute("UPDATE events SET stored_at = ? WHERE event_id IN ('e0', 'e1', 'e2')",
                         [T0 - timedelta(days=100)])
        blanked = apply_retention(store, timedelta(days=90), tmp_path / "archive", T0)
        assert blanked == 3
        payloads = dict(store.db.execute("SELECT event_id, payload::VARCHAR FROM events"
                                         ).fetchall())
        assert [k for k, v in payloads.items() if v == "{}"] == ["e0", "e1", "e2"]
        assert store.count("events") == 10 and store.count("predictions") == 10
    (archived,) = (tmp_path / "archive").glob("payloads-*.parquet")
    table = pq.read_table(archived).to_pylist()
    assert sorted(r["event_id"] for r in table) == ["e0", "e1", "e2"]
    assert '"p0@example.com"' in next(r["payload"] for r in table if r["event_id"] == "e0")
