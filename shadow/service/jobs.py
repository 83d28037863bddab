"""The daemon's scheduled jobs: evaluation, comparison, reports, retention, checkpoint.

APScheduler decides *when* (each job at most one instance at a time, late runs
coalesced into one); the daemon's pipeline thread decides *where*: a job
runs between two batches, because that thread is the store's single writer.
A failing job is logged with its traceback and tried again at its next run.
Each run is recorded in the ``job_runs`` table, so after downtime a job
whose time has passed runs once at start-up, not once per missed period.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from shadow.config.file import Config
from shadow.core.models import utc_now
from shadow.store.database import Store

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    every: timedelta
    run: Callable[[], Any]


Submit = Callable[[Callable[[], Any]], Any]
"""Runs a function on the pipeline thread and returns its result (or raises its error)."""


class Jobs:
    """The schedule of the daemon's jobs over one store."""

    def __init__(self, store: Store, jobs: list[Job], submit: Submit, *,
                 now: Callable[[], datetime] = utc_now,
                 on_result: Callable[[str, bool], None] | None = None) -> None:
        self.store, self.jobs, self.submit, self.now = store, jobs, submit, now
        self.on_result = on_result
        self._scheduler: BackgroundScheduler | None = None

    def next_runs(self) -> dict[str, datetime]:
        """When each job runs first: a period after its last run, or now if that has passed."""
        last = dict(self.store.db.execute(
            "SELECT job, max(started_at) FROM job_runs WHERE ok GROUP BY job").fetchall())
        now = self.now()
        return {job.name: max(now, last[job.name] + job.every) if job.name in last else now
                for job in self.jobs}

    def start(self) -> None:
        scheduler = BackgroundScheduler(timezone="UTC")
        for job, first in zip(self.jobs, self.next_runs().values(), strict=True):
            scheduler.add_job(
                self._submitted(job), IntervalTrigger(seconds=job.every.total_seconds(),
                                                      timezone="UTC"),
                id=job.name, name=job.name, next_run_time=first, max_instances=1,
                coalesce=True, misfire_grace_time=None)
        scheduler.start()
        self._scheduler = scheduler

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None

    def _submitted(self, job: Job) -> Callable[[], None]:
        def fire() -> None:
            try:
                self.submit(lambda: self.execute(job))
            except TimeoutError:
                log.warning("job waited too long for the pipeline; it runs at its next time",
                            job=job.name)
        return fire

    def execute(self, job: Job) -> bool:
        """Run one job now, on the calling thread; never raises."""
        started = self.now()
        try:
            job.run()
        except Exception as exc:  # noqa: BLE001 - a failing job must not stop the daemon
            log.error("job failed; it runs again at its next time", job=job.name,
                      error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            self._record(job, started, ok=False, error=f"{type(exc).__name__}: {exc}")
            return False
        self._record(job, started, ok=True, error=None)
        log.info("job done", job=job.name,
                 seconds=round((self.now() - started).total_seconds(), 3))
        return True

    def _record(self, job: Job, started: datetime, *, ok: bool, error: str | None) -> None:
        try:
            self.store.db.execute(
                "INSERT INTO job_runs (job, started_at, finished_at, ok, error) "
                "VALUES (?, ?, ?, ?, ?)", [job.name, started, self.now(), ok, error])
        except Exception as exc:  # noqa: BLE001 - the record is for people; the job's work stands
            log.warning("could not record a job run", job=job.name, error=str(exc))
        if self.on_result is not None:
            self.on_result(job.name, ok)


def checkpoint(store: Store) -> None:
    """Fold the write-ahead log into the database file."""
    store.db.execute("CHECKPOINT")


def write_reports(store: Store, config: Config, directory: Path, at: datetime) -> list[Path]:
    """The owner report as HTML, Markdown and JSON, named by the time it was made."""
    from shadow.reports.build import full_report, render_report

    report = full_report(store, config, now=lambda: at)
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"report-{at:%Y%m%dT%H%M%SZ}"
    written = []
    for suffix, fmt in ((".html", "html"), (".md", "markdown"), (".json", "json")):
        text = render_report(report, fmt)
        path = stem.with_suffix(suffix)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written


def apply_retention(store: Store, older_than: timedelta, archive: Path | None,
                    at: datetime) -> int:
    """Blank raw payloads (and dead letters' raw records) stored before ``at − older_than``.

    Rows stay, so every count, prediction, outcome and comparison is kept; with
    ``archive`` the blanked content is first written there as Parquet.
    Returns how many event payloads were blanked.
    """
    cutoff = at - older_than
    db = store.db
    old = db.execute("SELECT count(*) FROM events WHERE stored_at < ? AND payload::VARCHAR <> '{}'",
                     [cutoff]).fetchall()[0][0]
    if archive is not None and old:
        archive.mkdir(parents=True, exist_ok=True)
        target = archive / f"payloads-{at:%Y%m%dT%H%M%SZ}.parquet"
        db.execute(
            f"COPY (SELECT event_id, key, occurred_at, stored_at, payload FROM events "  # noqa: S608
            f"WHERE stored_at < $cutoff AND payload::VARCHAR <> '{{}}') "
            f"TO '{_quoted(target)}' (FORMAT parquet)", {"cutoff": cutoff})
        letters = archive / f"dead-letters-{at:%Y%m%dT%H%M%SZ}.parquet"
        db.execute(
            f"COPY (SELECT * FROM dead_letters WHERE received_at < $cutoff AND raw <> '') "  # noqa: S608
            f"TO '{_quoted(letters)}' (FORMAT parquet)", {"cutoff": cutoff})
    with store.transaction() as tx:
        tx.execute("UPDATE events SET payload = '{}' WHERE stored_at < ? "
                   "AND payload::VARCHAR <> '{}'", [cutoff])
        tx.execute("UPDATE dead_letters SET raw = '' WHERE received_at < ? AND raw <> ''",
                   [cutoff])
    return int(old)


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")
