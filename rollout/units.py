"""The units the gates count: one per key (case) of the current step, kept incrementally.

Events of one key are compared with one outcome, so they are not independent
trials: the gates count one *unit* per key (:class:`rollout.plan.Unit`). A
unit is the key's first successful prediction of the step; its agreement
is that prediction's (``first``), the one of the key's last prediction before
its outcome was decided (``last``), or the mean over the key's compared
predictions (``mean``).

The table ``rollout_units`` holds the units of each rollout's current step.
:meth:`Units.sync` brings it up to date from the predictions and comparisons
made since it last ran (cursors in ``rollout_progress``), so its cost follows
the new rows, not the step's size; a new step empties it. Every label a unit
gets is numbered in the order labels arrived (``label_seq``): the rollback
detector reads them forward in that order, exactly once.

Two rules keep the counts honest on real traffic:

* **Mature labels only.** A unit is judged once its label window has passed
  (data time: the newest ``occurred_at`` or ``decided_at`` among the step's
  units, so a replay of last year's export ages as its data did). A mature unit
  without a label counts as a disagreement for the promotion test and as an
  agreement for the failing test, so labels that arrive late for the hard
  cases cannot flatter the candidate.
* **Independent outcomes only.** A unit routed live (the AI acted) is judged
  only by an outcome from a source declared independent
  (``rollout.independent_sources``); otherwise the outcome may echo the AI.
  Units of the shadow share, the holdout and the review sample always count.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from rollout.plan import RolloutSpec, Unit
from rollout.state import RolloutState
from rollout.statistics import DetectorState
from shadow.store import Store

_EARLIEST = datetime(1, 1, 2, tzinfo=UTC)

_NEW_UNITS = """
INSERT INTO rollout_units BY NAME
SELECT $rollout AS rollout, key,
       arg_min(event_id, (predicted_at, occurred_at, event_id)) AS event_id,
       arg_min(occurred_at, (predicted_at, occurred_at, event_id)) AS occurred_at,
       arg_min(apart, (predicted_at, occurred_at, event_id)) AS shadow,
       arg_min(apart, (predicted_at, occurred_at, event_id)) OR $any_source AS eligible
FROM (
    SELECT e.key, p.event_id, e.occurred_at, p.predicted_at,
           (p.mode = 'shadow' OR p.review) AS apart
    FROM predictions p JOIN events e USING (event_id)
    WHERE p.candidate = $candidate AND p.version IS NOT DISTINCT FROM $version
      AND p.predicted_at >= $since AND p.error_type IS NULL AND NOT p.abstained
)
GROUP BY key
ON CONFLICT DO NOTHING
RETURNING key, event_id
"""

_NEWEST_PREDICTION = """
SELECT max(predicted_at) FROM predictions
WHERE candidate = $candidate AND version IS NOT DISTINCT FROM $version AND predicted_at >= $since
"""

_NEW_SEGMENTS = """
INSERT INTO rollout_unit_segments
SELECT $rollout, n.key, s.field, s.value
FROM new_units n JOIN event_segments s USING (event_id)
"""

_FRESH_COMPARISONS = """
SELECT c.event_id, c.agree, c.outcome_decided_at, c.compared_at
FROM comparisons c
WHERE c.candidate = $candidate AND c.version IS NOT DISTINCT FROM $version
  AND c.comparator = $comparator AND c.compared_at >= $since
"""

# unit = first: the unit's own prediction carries its label.
_FIRST_LABELS = f"""
SELECT u.key, f.agree::DOUBLE, f.outcome_decided_at, f.compared_at, u.label_seq,
       (SELECT any_value(o.source) FROM outcomes o
        WHERE o.key = u.key AND o.decided_at = f.outcome_decided_at) AS source
FROM ({_FRESH_COMPARISONS}) f JOIN rollout_units u ON u.rollout = $rollout
  AND u.event_id = f.event_id
"""

# unit = last or mean: recompute the keys that got a comparison.
_KEY_LABELS = f"""
WITH touched AS (
    SELECT DISTINCT e.key, max(f.compared_at) OVER (PARTITION BY e.key) AS compared_at
    FROM ({_FRESH_COMPARISONS}) f JOIN events e USING (event_id)
    JOIN rollout_units u ON u.rollout = $rollout AND u.key = e.key
), judged AS (
    SELECT e.key, e.occurred_at, c.agree::DOUBLE AS agree, c.outcome_decided_at AS decided_at
    FROM comparisons c JOIN events e USING (event_id)
    JOIN predictions p ON p.event_id = c.event_id AND p.candidate = c.candidate
      AND p.version IS NOT DISTINCT FROM c.version
    WHERE c.candidate = $candidate AND c.version IS NOT DISTINCT FROM $version
      AND c.comparator = $comparator AND p.predicted_at >= $step_started
      AND e.key IN (SELECT key FROM touched)
), per_key AS (
    SELECT key, max(decided_at) AS decided_at, avg(agree) AS mean,
           coalesce(arg_max(agree, occurred_at) FILTER (occurred_at <= decided_at),
                    arg_min(agree, occurred_at)) AS last
    FROM judged GROUP BY key
)
SELECT k.key, CASE WHEN $unit = 'mean' THEN k.mean ELSE k.last END, k.decided_at,
       t.compared_at, u.label_seq,
       (SELECT any_value(o.source) FROM outcomes o
        WHERE o.key = k.key AND o.decided_at = k.decided_at) AS source
FROM per_key k JOIN touched t USING (key)
JOIN rollout_units u ON u.rollout = $rollout AND u.key = k.key
"""

_APPLY_LABELS = """
UPDATE rollout_units u
SET agree = l.agree, decided_at = l.decided_at, independent = u.shadow OR l.independent,
    label_seq = coalesce(u.label_seq, l.seq)
FROM new_labels l
WHERE u.rollout = $rollout AND u.key = l.key
"""

_CLOCK = """
SELECT greatest(max(occurred_at), max(decided_at)),
       quantile_cont(greatest(epoch(decided_at) - epoch(occurred_at), 0), 0.95)
           FILTER (agree IS NOT NULL)
FROM rollout_units WHERE rollout = $rollout
"""

_COUNTED = """
SELECT key, agree, occurred_at <= $cutoff AS mature
FROM rollout_units
WHERE rollout = $rollout AND eligible AND (agree IS NULL OR independent)
  AND (agree IS NOT NULL OR occurred_at > $expired)
"""

_COUNTS = f"""
SELECT count(*), count(*) FILTER (mature), count(agree) FILTER (mature),
       coalesce(sum(agree) FILTER (mature), 0), any_value(o.dependent), any_value(o.expired)
FROM ({_COUNTED}) CROSS JOIN (
    SELECT count(*) FILTER (agree IS NOT NULL AND NOT independent) AS dependent,
           count(*) FILTER (eligible AND agree IS NULL AND occurred_at <= $expired) AS expired
    FROM rollout_units WHERE rollout = $rollout) o
"""

_SEGMENT_COUNTS = f"""
SELECT s.field, s.value, count(*) FILTER (mature), count(agree) FILTER (mature),
       coalesce(sum(agree) FILTER (mature), 0)
FROM ({_COUNTED}) u JOIN rollout_unit_segments s ON s.rollout = $rollout AND s.key = u.key
GROUP BY ALL ORDER BY 1, 2
"""

_FEED = """
SELECT key, agree >= 0.5, label_seq FROM rollout_units
WHERE rollout = $rollout AND label_seq > $fed AND independent
ORDER BY label_seq
"""

_DELAYS = """
SELECT agree >= 0.5 AS agreed, count(*),
       quantile_cont(greatest(epoch(decided_at) - epoch(occurred_at), 0), 0.5),
       quantile_cont(greatest(epoch(decided_at) - epoch(occurred_at), 0), 0.95)
FROM rollout_units WHERE rollout = $rollout AND agree IS NOT NULL
GROUP BY ALL ORDER BY 1
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """Where the incremental work of one rollout's step stands (``rollout_progress``)."""

    rollout: str
    step_started_at: datetime
    predicted_through: datetime | None = None
    compared_through: datetime | None = None
    labels: int = 0
    """The last ``label_seq`` handed out."""
    evaluated_labels: int = 0
    """``labels`` when the gates were last evaluated (the cadence)."""
    fed: int = 0
    """The last ``label_seq`` the rollback detector has seen."""
    detector: DetectorState = DetectorState()


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitCounts:
    """The units of the step as the gates see them."""

    keys: int = 0
    """Units counted (routed apart from the AI, or labelled by an independent source)."""
    mature: int = 0
    """Of those, the ones past their label window."""
    labelled: int = 0
    """Of the mature ones, the ones with a label."""
    agreed: float = 0.0
    """The summed agreement of the mature labelled ones."""
    dependent: int = 0
    """Live units left out: their outcome came from a source not declared independent."""
    expired: int = 0
    """Units left out: no label within ``label_expiry``."""
    window: timedelta = timedelta(0)
    clock: datetime | None = None
    """Data time: the newest ``occurred_at`` or label ``decided_at`` among the step's units."""

    @property
    def pending(self) -> int:
        """Mature units still without a label: disagreements for promotion."""
        return self.mature - self.labelled

    @property
    def labelled_share(self) -> float | None:
        return self.labelled / self.mature if self.mature else None


@dataclass(frozen=True, slots=True)
class SegmentUnits:
    """One segment's mature units, as :class:`UnitCounts` counts them."""

    field: str
    value: str
    mature: int
    labelled: int
    agreed: float

    @property
    def pending(self) -> int:
        return self.mature - self.labelled


@dataclass(frozen=True, slots=True)
class LabelDelay:
    """How long labels took to arrive (data time), for one verdict."""

    agreed: bool
    labelled: int
    median: timedelta
    p95: timedelta


class Units:
    """The units of one rollout over one store."""

    def __init__(self, store: Store, plan: RolloutSpec, *, rollout: str, comparator: str) -> None:
        self.store, self.plan = store, plan
        self.rollout, self.comparator = rollout, comparator

    # -- progress ---------------------------------------------------------------

    def progress(self, state: RolloutState) -> Progress:
        """The stored progress of ``state``'s step; a fresh one when the step is new."""
        row = self.store.db.execute(
            "SELECT step_started_at, predicted_through, compared_through, labels, fed, "
            "evaluated_labels, statistic, seen, alarmed_at FROM rollout_progress "
            "WHERE rollout = ?", [self.rollout]).fetchone()
        if row is None or row[0] != state.step_started_at:
            return Progress(rollout=self.rollout, step_started_at=state.step_started_at)
        return Progress(rollout=self.rollout, step_started_at=row[0], predicted_through=row[1],
                        compared_through=row[2], labels=row[3], fed=row[4],
                        evaluated_labels=row[5], detector=DetectorState(row[6], row[7], row[8]))

    def save(self, progress: Progress) -> None:
        with self.store.transaction() as tx:
            _save(tx, progress)

    # -- incremental sync ---------------------------------------------------------

    def sync(self, state: RolloutState) -> Progress:
        """Bring the step's units up to date; returns the progress, stored.

        Everything is written in one transaction, so a crash leaves the units as
        they were before (and the next sync does the same work again).
        """
        progress = self.progress(state)
        with self.store.transaction() as tx:
            if progress.predicted_through is None and progress.labels == 0:
                tx.execute("DELETE FROM rollout_units WHERE rollout = ?", [self.rollout])
                tx.execute("DELETE FROM rollout_unit_segments WHERE rollout = ?", [self.rollout])
            progress = self._add_units(tx, state, progress)
            progress = self._add_labels(tx, state, progress)
            _save(tx, progress)
        return progress

    def _add_units(self, tx: Any, state: RolloutState, progress: Progress) -> Progress:
        since = max(progress.predicted_through or state.step_started_at, state.step_started_at)
        params = {"rollout": self.rollout, "candidate": state.candidate,
                  "version": state.version, "since": since}
        newest = tx.execute(_NEWEST_PREDICTION, {k: params[k] for k in
                                                 ("candidate", "version", "since")}).fetchone()
        if newest is None or newest[0] is None:
            return progress
        added = tx.execute(_NEW_UNITS, {**params,
                                        "any_source": bool(self.plan.independent_sources)})
        rows = added.fetchall()
        if rows:
            new_units = pa.table({"key": [r[0] for r in rows], "event_id": [r[1] for r in rows]})
            tx.register("new_units", new_units)
            try:
                tx.execute(_NEW_SEGMENTS, {"rollout": self.rollout})
            finally:
                tx.unregister("new_units")
        return replace(progress, predicted_through=newest[0])

    def _add_labels(self, tx: Any, state: RolloutState, progress: Progress) -> Progress:
        since = max(progress.compared_through or state.step_started_at, state.step_started_at)
        params: dict[str, Any] = {
            "rollout": self.rollout, "candidate": state.candidate, "version": state.version,
            "comparator": self.comparator, "since": since}
        if self.plan.unit is Unit.FIRST:
            rows = tx.execute(_FIRST_LABELS, params).fetchall()
        else:
            rows = tx.execute(_KEY_LABELS, {**params, "unit": self.plan.unit.value,
                                            "step_started": state.step_started_at}).fetchall()
        if not rows:
            return progress
        # A stable order inside a batch: when the label arrived, then the key.
        rows.sort(key=lambda r: (r[3], r[0]))
        patterns = self.plan.independent_sources
        labels, seqs = progress.labels, []
        for row in rows:
            if row[4] is None:
                labels += 1
                seqs.append(labels)
            else:
                seqs.append(row[4])
        new_labels = pa.table({
            "key": [r[0] for r in rows],
            "agree": pa.array([r[1] for r in rows], pa.float64()),
            "decided_at": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
            "independent": [_independent(r[5], patterns) for r in rows],
            "seq": pa.array(seqs, pa.int64()),
        })
        tx.register("new_labels", new_labels)
        try:
            tx.execute(_APPLY_LABELS, {"rollout": self.rollout})
        finally:
            tx.unregister("new_labels")
        return replace(progress, labels=labels, compared_through=max(r[3] for r in rows))

    # -- what the gates read --------------------------------------------------------

    def counts(self) -> tuple[UnitCounts, tuple[SegmentUnits, ...]]:
        """The step's units and its segments' units, as of the last sync."""
        db = self.store.db
        clock, auto = db.execute(_CLOCK, {"rollout": self.rollout}).fetchone() or (None, None)
        window = self.plan.label_window
        if window == "auto":
            window = timedelta(seconds=float(auto or 0.0))
        assert isinstance(window, timedelta)
        if clock is None:
            return UnitCounts(window=window), ()
        expiry = self.plan.label_expiry
        expired = (_EARLIEST if expiry == "never" else
                   clock - (window * 4 if expiry == "auto" else expiry))
        params = {"rollout": self.rollout, "cutoff": clock - window, "expired": expired}
        keys, mature, labelled, agreed, dependent, unlabelled = db.execute(
            _COUNTS, params).fetchall()[0]
        counts = UnitCounts(keys=keys, mature=mature, labelled=labelled, agreed=float(agreed),
                            dependent=dependent, expired=unlabelled, window=window, clock=clock)
        segments = tuple(SegmentUnits(f, v, m, n, float(a)) for f, v, m, n, a in
                         db.execute(_SEGMENT_COUNTS, params).fetchall())
        return counts, segments

    def fresh_agreements(self, progress: Progress) -> list[tuple[str, bool]]:
        """Independent labels the detector has not seen, as ``(key, agreed)`` in the
        order they arrived (a key's mean agreement of one half or more agrees)."""
        rows = self.store.db.execute(
            _FEED, {"rollout": self.rollout, "fed": progress.fed}).fetchall()
        return [(r[0], bool(r[1])) for r in rows]

    def label_delays(self) -> tuple[LabelDelay, ...]:
        """Label delays of the step's units, split by verdict (agreements first... by
        ``agreed``: disagreements, then agreements)."""
        return tuple(
            LabelDelay(agreed=bool(a), labelled=n, median=timedelta(seconds=m or 0.0),
                       p95=timedelta(seconds=p or 0.0))
            for a, n, m, p in self.store.db.execute(
                _DELAYS, {"rollout": self.rollout}).fetchall())


def _independent(source: str | None, patterns: Sequence[str]) -> bool:
    return source is not None and any(fnmatch.fnmatchcase(source, p) for p in patterns)


def _save(tx: Any, p: Progress) -> None:
    d = p.detector
    tx.execute(
        "INSERT OR REPLACE INTO rollout_progress (rollout, step_started_at, predicted_through, "
        "compared_through, labels, fed, evaluated_labels, statistic, seen, alarmed_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [p.rollout, p.step_started_at, p.predicted_through, p.compared_through, p.labels, p.fed,
         p.evaluated_labels, d.statistic, d.seen, d.alarmed_at])
