"""What this process knows and the store does not, for the daemon's ``GET /metrics``.

:func:`shadow.service.metrics.render_metrics` adds these families to the store's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from shadow.core.models import utc_now
from shadow.service.metric_families import drift_families, gauge, labelled

if TYPE_CHECKING:
    from shadow.pipeline.source_guard import SourceStatus


class RuntimeMetrics:
    """What this process knows and the store does not: lag, intake, scheduled jobs.

    Thread-safe: the pipeline thread and the scheduler update it while the
    API thread renders. Every update is a few dictionary operations under a
    lock, cheap enough for every pass of the pipeline loop.
    """

    def __init__(self, *, now: Callable[[], datetime] = utc_now) -> None:
        self._now = now
        self._lock = threading.Lock()
        self.started_at = now().timestamp()
        self._lag: dict[str, dict[str, int]] = {}
        self._records: dict[str, int] = {}
        self._handed_out: dict[str, int] = {}
        self._fraction: dict[str, float] = {}
        self._runs: dict[str, dict[str, int]] = {}
        self._last_success: dict[str, float] = {}
        self._drift: list[tuple[str, dict[str, str], float]] = []
        self._deferred: dict[str, int] = {}
        self._deferred_last_run: dict[str, int] = {}
        self._sources: dict[str, tuple[bool, int]] = {}
        self._skipped: dict[str, int] = {}

    def set_lag(self, source: str, partition: str | int, lag: int) -> None:
        """Records ``partition`` of ``source`` still has to hand out (negative reads as 0)."""
        with self._lock:
            self._lag.setdefault(source, {})[str(partition)] = max(0, int(lag))

    def set_lags(self, source: str, lags: Mapping[str | int, int]) -> None:
        """The lag of every partition ``source`` holds now; partitions it lost disappear."""
        fresh = {str(partition): max(0, int(lag)) for partition, lag in lags.items()}
        with self._lock:
            self._lag[source] = fresh

    def set_sources(self, statuses: Sequence[SourceStatus]) -> None:
        """Whether each source is up, and its failed attempts since it last was."""
        fresh = {s.name: (s.up, s.failures) for s in statuses}
        with self._lock:
            self._sources = fresh

    def add_records(self, source: str, n: int) -> None:
        """``n`` more records handed out by ``source``."""
        with self._lock:
            self._records[source] = self._records.get(source, 0) + max(0, n)

    def set_skipped(self, kind: str, total: int) -> None:
        """Records of ``kind`` (event, outcome) read and left out since the process started:
        by a ``when:`` condition, or with no content (a Kafka tombstone)."""
        with self._lock:
            self._skipped[kind] = max(self._skipped.get(kind, 0), total)

    def progress(self, source: str, handed_out: int, fraction: float | None) -> None:
        """A :data:`shadow.pipeline.runner.Progress` callback.

        Given as ``Pipeline(..., progress=runtime.progress)``.

        ``handed_out`` counts from the start of the replay; a count lower than
        the last one is a new replay, counted from zero.
        """
        with self._lock:
            last = self._handed_out.get(source, 0)
            added = handed_out - last if handed_out >= last else handed_out
            self._handed_out[source] = handed_out
            self._records[source] = self._records.get(source, 0) + max(0, added)
            if fraction is not None:
                self._fraction[source] = fraction

    def job_finished(self, job: str, ok: bool) -> None:
        """A scheduled job ran to its end (``ok``) or raised."""
        at = self._now().timestamp()
        with self._lock:
            runs = self._runs.setdefault(job, {"ok": 0, "error": 0})
            runs["ok" if ok else "error"] += 1
            if ok:
                self._last_success[job] = at

    def compare_finished(self, comparator: str, deferred: int) -> None:
        """A compare run ended with ``deferred`` predictions the comparator could not judge.

        They stay pending, so a last run that deferred some while the one before
        did too is a judge that has been down for a while.
        """
        with self._lock:
            self._deferred[comparator] = self._deferred.get(comparator, 0) + max(0, deferred)
            self._deferred_last_run[comparator] = max(0, deferred)

    def set_drift(self, gauges: Sequence[tuple[str, dict[str, str], float]]) -> None:
        """The latest drift measurement, as ``shadow.reports.drift.drift_metrics`` shapes it."""
        with self._lock:
            self._drift = list(gauges)

    def collect(self) -> list[Metric]:
        """The families, from a consistent snapshot."""
        with self._lock:
            drift = list(self._drift)
            lag = {source: dict(partitions) for source, partitions in self._lag.items()}
            records, fraction = dict(self._records), dict(self._fraction)
            runs = {job: dict(results) for job, results in self._runs.items()}
            last_success = dict(self._last_success)
            deferred, deferred_last_run = dict(self._deferred), dict(self._deferred_last_run)
            sources = dict(self._sources)
            skipped = dict(self._skipped)
        families: list[Metric] = [
            gauge("shadow_start_time_seconds", "When this daemon started, in Unix time.",
                   self.started_at),
            labelled(GaugeMetricFamily, "shadow_consumer_lag",
                      "Records a source's partition has not handed out yet.",
                      ["source", "partition"],
                      (([s, p], n) for s, by_partition in lag.items()
                       for p, n in by_partition.items())),
            labelled(GaugeMetricFamily, "shadow_source_up",
                      "1 while a source can be read, 0 while its system is away.",
                      ["source"], (([s], float(up)) for s, (up, _) in sources.items())),
            labelled(GaugeMetricFamily, "shadow_source_failures",
                      "Failed attempts to open, poll or commit a source since it was last up.",
                      ["source"], (([s], n) for s, (_, n) in sources.items())),
            labelled(CounterMetricFamily, "shadow_source_records",
                      "Records handed out by each source since this process started.",
                      ["source"], (([s], n) for s, n in records.items())),
            labelled(CounterMetricFamily, "shadow_records_skipped",
                      "Records read and left out (a when: condition, a Kafka tombstone) since "
                      "this process started, by kind.",
                      ["kind"], (([k], n) for k, n in skipped.items())),
            labelled(GaugeMetricFamily, "shadow_source_read_ratio",
                      "Share of a bounded source read (files), 0 to 1.",
                      ["source"], (([s], f) for s, f in fraction.items())),
            labelled(CounterMetricFamily, "shadow_job_runs",
                      "Runs of each scheduled job since this process started, by result.",
                      ["job", "result"],
                      (([j, r], n) for j, results in runs.items() for r, n in results.items())),
            labelled(GaugeMetricFamily, "shadow_job_last_success_timestamp_seconds",
                      "When each scheduled job last succeeded, in Unix time.",
                      ["job"], (([j], t) for j, t in last_success.items())),
            labelled(CounterMetricFamily, "shadow_comparisons_deferred",
                      "Judgements deferred by compare runs since this process started "
                      "(the judge could not be asked).",
                      ["comparator"], (([c], n) for c, n in deferred.items())),
            labelled(GaugeMetricFamily, "shadow_comparisons_deferred_last_run",
                      "Predictions the last compare run left pending because the comparator "
                      "could not judge them.",
                      ["comparator"], (([c], n) for c, n in deferred_last_run.items())),
        ]
        return families + drift_families(drift)
