"""The units the gates count: one per key (case) of the current step, kept incrementally.

Events of one key are compared with one outcome, so they are not independent
trials: the gates count one *unit* per key (:class:`shadow.config.rollout.Unit`). A
unit is the key's first successful prediction of the step; its agreement
is that prediction's (``first``), the one of the key's last prediction before
its outcome was decided (``last``), or the mean over the key's compared
predictions (``mean``).

Two rules keep the counts honest on real traffic:

* **Mature labels only.** A unit is judged once its label window has passed
  (data time: the newest ``occurred_at`` of the step's events or ``decided_at``
  of its labels, so a replay of last year's export ages as its data did). A mature
  unit without a label counts as a disagreement for the promotion test and
  as an agreement for the failing test, so labels that arrive late for the
  hard cases cannot flatter the candidate. A key with no label after
  ``label_expiry`` leaves the count (some cases are never labelled), which
  assumes such keys are no harder than the rest; ``never`` drops that
  assumption.
* **Independent outcomes only.** A unit routed live (the AI acted) is judged
  only by an outcome from a source declared independent
  (``rollout.independent_sources``); otherwise the outcome may echo the AI.
  A review verdict (outcome source ``review``) is independent only where reviewers
  did not see the proposal's confidence (``rollout.tiers.reviewers_blind``); else it
  is anchored on the proposal and left out, whatever the patterns say.
  Units of the shadow share, the holdout and the review sample always count.

The counts live in memory (:class:`rollout.ledger.Ledger`) and move by the
rows that are new since the last sync: predictions and comparisons are read
by time ranges DuckDB skips to through its zone maps, and the events behind
new predictions are the ones the pipeline just routed (:meth:`Units.note`).
What the ledger learns is appended to ``rollout_units`` (with each unit's
segments) and ``rollout_labels``; a restarted controller
replays them, in order, into the same ledger (the same label numbers, so
the rollback detector goes on exactly where it stood).
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from rollout import unit_store as stored
from rollout.ledger import Ledger, Segment, Tally, Totals, UnitRow, parse_segments
from rollout.state import RolloutState
from rollout.statistics import DetectorState
from rollout.unit_store import LabelDelay, Progress, stored_label_delays
from shadow.config.rollout import RolloutSpec, Unit
from shadow.core.models import Event
from shadow.store.database import Store
from shadow.store.verdicts import REVIEW_SOURCE

__all__ = ["LabelDelay", "Progress", "SegmentUnits", "UnitCounts", "Units",
           "stored_label_delays"]

_FEW = 5000
"""Up to this many events are looked up by id; more, by the predictions' time range."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitCounts:
    """The units of the step as the gates see them."""

    keys: int = 0
    """Units of the step (keys with a successful prediction)."""
    mature: int = 0
    """Counted units past their label window."""
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
    """Data time: the newest ``occurred_at`` or label ``decided_at`` of the step's events."""

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
class PredictionTally:
    """The step's predictions, for the error, latency, coverage and violation gates."""

    predictions: int = 0
    errors: int = 0
    abstained: int = 0
    violations: int = 0
    p95_latency_ms: float | None = None


class Units:
    """The units of one rollout over one store; one ledger per step, in memory.

    Not thread-safe: the pipeline's thread owns it (the daemon runs everything
    that touches the rollout there).
    """

    def __init__(self, store: Store, plan: RolloutSpec, *, rollout: str, comparator: str) -> None:
        self.store, self.plan = store, plan
        self.rollout, self.comparator = rollout, comparator
        self.independent = Independence.of(plan)
        self._ledger: Ledger | None = None
        self._progress: Progress | None = None
        self._notes: dict[str, tuple[str, float, tuple[Segment, ...]]] = {}
        self._boundary: dict[str, set[str]] = {"predictions": set(), "comparisons": set()}
        self._rows = 0
        """Label rows stored for the step."""

    # -- from the pipeline ----------------------------------------------------------

    def note(self, events: Sequence[Event], predicted: Iterable[str]) -> None:
        """The events behind a batch of predictions (by event id), so that the next sync
        need not look them up; called before the batch is written."""
        predicted = set(predicted)
        for e in events:
            if e.event_id in predicted:
                self._notes[e.event_id] = (e.key, e.occurred_at.timestamp(),
                                           _segments(e.segment))

    # -- progress ---------------------------------------------------------------------

    def progress(self, state: RolloutState) -> Progress:
        """The stored progress of ``state``'s step; a fresh one when the step is new."""
        row = self.store.db.execute(
            "SELECT step_started_at, predicted_through, compared_through, labels, fed, "
            "evaluated_labels, statistic, seen, alarmed_at, mature_cutoff, expiry_cutoff, clock "
            "FROM rollout_progress WHERE rollout = ?", [self.rollout]).fetchone()
        if row is None or row[0] != state.step_started_at:
            return Progress(rollout=self.rollout, step_started_at=state.step_started_at)
        return Progress(rollout=self.rollout, step_started_at=row[0], predicted_through=row[1],
                        compared_through=row[2], labels=row[3], fed=row[4],
                        evaluated_labels=row[5], detector=DetectorState(row[6], row[7], row[8]),
                        mature_cutoff=row[9], expiry_cutoff=row[10], clock=row[11])

    def save(self, progress: Progress) -> None:
        """Store ``progress`` (the detector's state after an evaluation); drops fed labels."""
        with self.store.transaction() as tx:
            stored.save(tx, progress)
        self._progress = progress
        if self._ledger is not None:
            self._ledger.feed = [f for f in self._ledger.feed if f[0] > progress.fed]

    # -- sync -------------------------------------------------------------------------

    def current(self, state: RolloutState) -> Progress:
        """The progress as it stands in memory (loaded from the store if need be)."""
        return self._loaded(state)[1]

    def sync(self, state: RolloutState, *, max_labels: int | None = None) -> Progress:
        """Bring the step's units up to date and store what changed; returns the progress.

        With ``max_labels``, at most that many new labels are taken in, in the order they
        arrived; the rest wait for the next sync, so the gates can be evaluated at every
        ``evaluate_every_compared`` labels however many a batch brought.

        Everything is written in one transaction; a crash before its commit leaves
        the stored units as they were, and the next sync does the work again. Over a
        read-only store the units are brought up to date in memory only.
        """
        ledger, progress = self._loaded(state)
        new_units: list[UnitRow] = []
        labels: list[tuple[Any, ...]] = []
        progress = self._add_predictions(ledger, state, progress, new_units)
        progress = self._add_comparisons(ledger, state, progress, labels, max_labels)
        window, expiry = self._window(ledger)
        ledger.advance(window, expiry)
        progress = replace(progress, labels=ledger.labels, mature_cutoff=_finite(
            ledger.mature_cutoff), expiry_cutoff=_finite(ledger.expiry_cutoff),
            clock=ledger.clock)
        if not self.store.read_only and (new_units or labels or progress != self._progress):
            try:
                with self.store.transaction() as tx:
                    stored.append(tx, self.rollout, new_units, labels,
                                  units_before=len(ledger.units) - len(new_units),
                                  labels_before=self._rows)
                    stored.save(tx, progress)
            except BaseException:
                self._ledger = None  # ahead of the store now: rebuilt from it next time
                raise
        self._rows += len(labels)
        self._progress = progress
        return progress

    def _loaded(self, state: RolloutState) -> tuple[Ledger, Progress]:
        if (self._ledger is not None and self._progress is not None
                and self._progress.step_started_at == state.step_started_at):
            return self._ledger, self._progress
        progress = self.progress(state)
        ledger = Ledger(unit=self.plan.unit)
        self._rows, self._notes = 0, {}
        self._boundary = {"predictions": set(), "comparisons": set()}
        fresh = progress.predicted_through is None and progress.compared_through is None
        if fresh and not self.store.read_only:
            with self.store.transaction() as tx:
                for table in ("rollout_units", "rollout_labels"):
                    tx.execute(f"DELETE FROM {table} WHERE rollout = ?", [self.rollout])  # noqa: S608
                stored.save(tx, progress)
        elif not fresh:
            self._replay(self.store.db, ledger, state, progress)
        self._ledger, self._progress = ledger, progress
        return ledger, progress

    def _replay(self, tx: Any, ledger: Ledger, state: RolloutState, progress: Progress) -> None:
        """Rebuild the ledger of a step from what was stored, as it stood."""
        ledger.mature_cutoff = progress.mature_cutoff or float("-inf")
        ledger.expiry_cutoff = progress.expiry_cutoff or float("-inf")
        where = {"rollout": self.rollout}
        if self.plan.unit is Unit.FIRST:
            # Each unit's first and latest label, folded in SQL; the ledger takes them whole.
            ledger.restore(tx.execute(stored.STORED_FIRST_UNITS, where).fetchall())
            self._rows = tx.execute("SELECT count(*) FROM rollout_labels WHERE rollout = $rollout",
                                    where).fetchall()[0][0]
        else:
            for key, event_id, occurred, shadow, eligible, segments in tx.execute(
                    stored.STORED_UNITS, where).fetchall():
                ledger.add_unit(UnitRow(key=key, event_id=event_id, occurred_at=occurred,
                                        shadow=shadow, eligible=eligible,
                                        segments=parse_segments(segments)))
            for key, event_id, agree, decided, occurred, independent in tx.execute(
                    stored.STORED_LABELS, where).fetchall():
                ledger.add_event(event_id, key, occurred)
                ledger.label(event_id, agree, decided, occurred, independent)
                self._rows += 1
        ledger.feed = [f for f in ledger.feed if f[0] > progress.fed]
        if progress.clock is not None:
            ledger.clock = max(ledger.clock or progress.clock, progress.clock)
        params = self._params(state)
        if progress.predicted_through is not None:
            through = {**params, "since": state.step_started_at,
                       "through": progress.predicted_through}
            counts = tx.execute(stored.TALLY, through).fetchall()[0]
            ledger.tally = Tally(*counts)
            bins = {**through, "floor": ledger.tally.latency.floor}
            for index, count in tx.execute(stored.LATENCY_BINS, bins).fetchall():
                ledger.tally.latency.counts[index] = count
                ledger.tally.latency.total += count
            self._boundary["predictions"] = self._at(
                tx, "predictions", "predicted_at", progress.predicted_through, state)
        if progress.compared_through is not None:
            self._boundary["comparisons"] = self._at(
                tx, "comparisons", "compared_at", progress.compared_through, state)

    def _at(self, tx: Any, table: str, column: str, at: datetime,
            state: RolloutState) -> set[str]:
        extra = "AND comparator = $comparator" if table == "comparisons" else ""
        params = {**self._params(state), "at": at}
        if table == "comparisons":
            params["comparator"] = self.comparator
        sql = stored.AT_BOUNDARY.format(table=table, column=column, extra=extra)
        return {r[0] for r in tx.execute(sql, params).fetchall()}

    def _params(self, state: RolloutState) -> dict[str, Any]:
        return {"candidate": state.candidate, "version": state.version}

    def _add_predictions(self, ledger: Ledger, state: RolloutState, progress: Progress,
                         new_units: list[UnitRow]) -> Progress:
        since = max(progress.predicted_through or state.step_started_at, state.step_started_at)
        rows = self.store.db.execute(
            stored.NEW_PREDICTIONS, {**self._params(state), "since": since}).fetchall()
        boundary = self._boundary["predictions"]
        rows = [r for r in rows if not (r[2] == since and r[0] in boundary)]
        if not rows:
            return progress
        events = self._events([r[0] for r in rows if not (r[3] or r[4])],
                              {**self._params(state), "since": since})
        tally, eligible_live = ledger.tally, bool(self.independent)
        for event_id, apart, _, errored, abstained, violated, latency in rows:
            tally.predictions += 1
            tally.errors += errored
            tally.abstained += abstained
            tally.violations += violated
            if errored:
                continue
            tally.latency.add(latency)
            found = events.get(event_id)
            if abstained or found is None:
                continue
            key, occurred, segments = found
            row = UnitRow(key=key, event_id=event_id, occurred_at=occurred, shadow=apart,
                          eligible=apart or eligible_live, segments=segments)
            if ledger.add_unit(row):
                new_units.append(row)
            else:
                ledger.add_event(event_id, key, occurred)
        self._notes.clear()
        last = rows[-1][2]
        self._boundary["predictions"] = {r[0] for r in rows if r[2] == last} | (
            boundary if last == since else set())
        return replace(progress, predicted_through=last)

    def _events(self, event_ids: list[str], step: dict[str, Any],
                ) -> dict[str, tuple[str, float, tuple[Segment, ...]]]:
        """Key, occurrence and segments of these events: noted by the pipeline, else read
        (by id when few are missing, with the predictions' time range when many are)."""
        found = {e: self._notes.pop(e) for e in event_ids if e in self._notes}
        missing = [e for e in event_ids if e not in found]
        if missing:
            sql, params = (stored.EVENTS, {"ids": missing}) if len(missing) <= _FEW else (
                stored.STEP_EVENTS, step)
            wanted = set(missing)
            for event_id, key, occurred, segment in self.store.db.execute(
                    sql, params).fetchall():
                if event_id in wanted:
                    found[event_id] = (key, occurred.timestamp(), _stored_segments(segment))
        return found

    def _add_comparisons(self, ledger: Ledger, state: RolloutState, progress: Progress,
                         labels: list[tuple[Any, ...]], max_labels: int | None) -> Progress:
        since = max(progress.compared_through or state.step_started_at, state.step_started_at)
        rows = self.store.db.execute(
            stored.NEW_COMPARISONS, {**self._params(state), "comparator": self.comparator,
                               "since": since}).fetchall()
        boundary = self._boundary["comparisons"]
        rows = [r for r in rows if not (r[3] == since and r[0] in boundary)]
        if not rows:
            return progress
        sources = self._sources(ledger, rows)
        limit = ledger.labels + max_labels if max_labels is not None else None
        for index, (event_id, agree, decided, _) in enumerate(rows):
            if limit is not None and ledger.labels >= limit:
                # The next evaluation is due here: the rest waits for the next sync.
                rows = rows[:index]
                break
            found = ledger.events.get(event_id)
            if found is None:
                continue
            key, occurred = found
            independent = bool(sources) and self.independent(sources.get((key, decided)))
            if ledger.label(event_id, agree, decided.timestamp(), occurred, independent):
                labels.append((key, event_id, agree, decided, occurred, independent))
        if not rows:
            return progress
        last = rows[-1][3]
        self._boundary["comparisons"] = {r[0] for r in rows if r[3] == last} | (
            boundary if last == since else set())
        return replace(progress, compared_through=last)

    def _sources(self, ledger: Ledger, rows: list[tuple[Any, ...]]) -> dict[tuple[str, Any], str]:
        """The outcome source of each comparison's decision, when sources can matter."""
        if not self.independent:
            return {}
        keys = sorted({ledger.events[r[0]][0] for r in rows if r[0] in ledger.events})
        return {(k, d): s for k, d, s in self.store.db.execute(
            stored.SOURCES, {"keys": keys}).fetchall()}

    def _window(self, ledger: Ledger) -> tuple[float, float | None]:
        window = self.plan.label_window
        seconds = (ledger.delays.quantile(0.95) or 0.0) if window == "auto" else \
            window.total_seconds()
        expiry = self.plan.label_expiry
        if expiry == "never":
            return seconds, None
        return seconds, 4 * seconds if expiry == "auto" else expiry.total_seconds()

    # -- what the gates read ------------------------------------------------------------

    def counts(self) -> tuple[UnitCounts, tuple[SegmentUnits, ...]]:
        """The step's units and its segments' units, as of the last sync."""
        ledger = self._ledger
        if ledger is None:
            return UnitCounts(), ()
        t = ledger.totals
        window, _ = self._window(ledger)
        clock = datetime.fromtimestamp(ledger.clock, UTC) if ledger.clock is not None else None
        counts = UnitCounts(keys=len(ledger.units), mature=t.mature, labelled=t.labelled,
                            agreed=t.agreed, dependent=ledger.dependent, expired=ledger.expired,
                            window=timedelta(seconds=window), clock=clock)
        return counts, tuple(_segment(s, totals) for s, totals in sorted(ledger.segments.items())
                             if totals.mature)

    def tally(self) -> PredictionTally:
        if self._ledger is None:
            return PredictionTally()
        t = self._ledger.tally
        return PredictionTally(predictions=t.predictions, errors=t.errors,
                               abstained=t.abstained, violations=t.violations,
                               p95_latency_ms=t.latency.quantile(0.95))

    def fresh_agreements(self, progress: Progress) -> list[tuple[str, bool]]:
        """Independent first labels the detector has not seen, as ``(key, agreed)`` in
        the order they arrived (a key's mean agreement of one half or more agrees)."""
        if self._ledger is None:
            return []
        return [(key, agreed) for seq, key, agreed in self._ledger.feed if seq > progress.fed]

    def label_delays(self) -> tuple[LabelDelay, ...]:
        """Label delays of the step's units by verdict: disagreements, then agreements."""
        if self._ledger is None:
            return ()
        return tuple(
            LabelDelay(agreed=agreed, labelled=h.total,
                       median=timedelta(seconds=h.quantile(0.5) or 0.0),
                       p95=timedelta(seconds=h.quantile(0.95) or 0.0))
            for agreed, h in sorted(self._ledger.verdict_delays.items()))


def _segment(segment: Segment, totals: Totals) -> SegmentUnits:
    return SegmentUnits(segment[0], segment[1], totals.mature, totals.labelled, totals.agreed)


def _segments(segment: dict[str, Any]) -> tuple[Segment, ...]:
    """As ``event_segments`` holds them: text values, JSON for anything else."""
    return tuple(sorted(
        (field, value if isinstance(value, str) else orjson.dumps(value).decode())
        for field, value in segment.items() if value is not None))


@functools.lru_cache(maxsize=4096)
def _stored_segments(text: str) -> tuple[Segment, ...]:
    """An event's stored ``segment`` JSON, as :func:`_segments` makes it from the event."""
    return _segments(orjson.loads(text))


@dataclass(frozen=True, slots=True)
class Independence:
    """Which outcome sources judge live units: those ``rollout.independent_sources``
    matches, and review verdicts only where reviewers are blind to the confidence."""

    patterns: tuple[str, ...]
    reviews: bool

    @classmethod
    def of(cls, plan: RolloutSpec) -> Independence:
        blind = plan.tiers is not None and plan.tiers.reviewers_blind
        return cls(tuple(plan.independent_sources), blind)

    def __bool__(self) -> bool:
        return bool(self.patterns) or self.reviews

    def __call__(self, source: str | None) -> bool:
        if source is None:
            return False
        if source == REVIEW_SOURCE:
            return self.reviews
        return any(fnmatch.fnmatchcase(source, p) for p in self.patterns)


def _finite(value: float) -> float | None:
    return value if value != float("-inf") else None


