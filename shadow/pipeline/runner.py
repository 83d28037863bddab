"""The shadow pipeline: read, deduplicate, predict, store, compare.

Every record read ends as exactly one of: a stored event, a duplicate (its
``event_id`` was already stored), a dead letter, or a record skipped because the
mapping's ``when`` leaves it out, so
``events_read == events_stored + duplicates + dead_letters + events_skipped`` for every run.
A source is told to commit a position only after the transaction holding
the records up to it has committed.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from connectors.base import RawRecord, Source
from connectors.mapping import EventMapper, OutcomeMapper, map_records
from shadow.candidates import Candidate
from shadow.compare.comparators import Comparator
from shadow.compare.step import compare
from shadow.core import logs
from shadow.core.models import Event, Mode, Outcome, Prediction, RecordKind, utc_now
from shadow.pipeline.handoff import HANDED_PER_MESSAGE, published_by_workers, receive
from shadow.pipeline.rows import events_table
from shadow.pipeline.verdicts import VerdictMapper, take_verdicts
from shadow.store.database import Store
from shadow.store.writes import (
    Duplicate,
    StoredEvent,
    WriteBatch,
    WriteCounts,
    with_action_violations,
)

if TYPE_CHECKING:
    from rollout.runtime import LiveRollout

log = structlog.get_logger(__name__)

Progress = Callable[[str, int, float | None], None]
"""Called with a source name, the records it has handed out so far and the share read."""

Done = Callable[[WriteCounts], None]
Prepare = Callable[[list[RawRecord]], tuple[WriteBatch, Done | None]]
"""Turns a batch of records into what to write, and what to do once it is written."""


@dataclass(slots=True)
class ReplaySummary:
    """What one replay did. Counts refer to this run, not the whole store."""

    events_read: int = 0
    events_stored: int = 0
    duplicates: int = 0
    already_stored: int = 0
    """Of the duplicates, records read again at the very position they were stored from."""
    dead_letters: int = 0
    events_skipped: int = 0
    """Records of event sources that ``mapping.events.when`` left out: read, not stored."""
    predictions: int = 0
    prediction_errors: int = 0
    violations: int = 0
    """Predictions that broke a candidate's hard-constraint checks (stored, never published)."""
    outcomes_read: int = 0
    outcomes_stored: int = 0
    outcome_duplicates: int = 0
    outcome_dead_letters: int = 0
    outcomes_skipped: int = 0
    """Records of outcome sources that ``mapping.outcomes.when`` left out."""
    verdicts_read: int = 0
    verdicts_taken: int = 0
    """Review verdicts stored, or the same as one stored (a record read again)."""
    verdict_dead_letters: int = 0
    compared: int = 0
    agreed: int = 0
    deferred: int = 0
    """Pending predictions left pending because the comparator could not judge them now
    (an unreachable judge); they are compared at the next compare. Not in ``compared``."""
    retried: int = 0
    """Errored predictions made again (``--retry-errors``); counted in ``predictions`` too."""
    live: int = 0
    """Predictions routed live by the rollout (published unless errored or abstained)."""
    published: int = 0
    proposed: int = 0
    """Live decisions of tier ``review`` published to the review sink as proposals."""
    seconds: float = 0.0
    sources: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def count_predictions(self, predictions: Sequence[Prediction]) -> None:
        """Add predictions made, with those that errored and those that broke a check."""
        self.predictions += len(predictions)
        self.prediction_errors += sum(1 for p in predictions if p.error is not None)
        self.violations += sum(1 for p in predictions if p.violations)


class Pipeline:
    """Runs candidates in shadow mode over bounded sources into a store.

    Every candidate runs on every event; each is compared with the same outcomes.
    """

    def __init__(
        self,
        store: Store,
        candidates: Candidate | Sequence[Candidate],
        comparator: Comparator,
        *,
        event_mapper: EventMapper | None = None,
        outcome_mapper: OutcomeMapper | None = None,
        verdict_mapper: VerdictMapper | None = None,
        batch_size: int = 20_000,
        now: Callable[[], datetime] = utc_now,
        progress: Progress | None = None,
        rollout: LiveRollout | None = None,
        evaluate_each_batch: bool = True,
        remember_ids: bool = True,
    ) -> None:
        # Used as a library, warnings go to stderr, not stdout (unless the application
        # configured structlog itself); the CLI configures logs before it gets here.
        logs.configure_default()
        self.store = store
        self.candidates = [candidates] if isinstance(candidates, Candidate) else list(candidates)
        self.comparator = comparator
        self.event_mapper = event_mapper or EventMapper()
        self.outcome_mapper = outcome_mapper or OutcomeMapper()
        self.verdict_mapper = verdict_mapper or VerdictMapper()
        self.batch_size = batch_size
        self.now = now
        self.progress = progress
        self.rollout = rollout
        self.evaluate_each_batch = evaluate_each_batch
        """With a rollout: compare and evaluate after every batch (a daemon schedules it)."""
        self.remember_ids = remember_ids
        """Keep every event id written by this replay in memory, so that a replay into an
        empty store never asks the store. A daemon runs for years: it sets this off, and
        remembers one batch's ids while the store answers for the rest."""
        self.summary = ReplaySummary()
        self._handed_out: dict[str, int] = {}
        self.workers_heard: dict[str, datetime] = {}
        """Candidate workers this recorder has had records from, with when it last had."""
        self._seen: set[str] = set()
        self._per_message = HANDED_PER_MESSAGE
        """Events per message of the workers' latest batch (see :meth:`_poll_limit`)."""
        # Whether stored events must be looked up before writing: until ``feeds`` has
        # decided, assume so. Into an empty store, a replay that remembers its ids does not.
        self._look_up_stored = True

    def run(
        self, events: Sequence[Source], outcomes: Sequence[Source] = (), *,
        verdicts: Sequence[Source] = (), retry_errors: bool = False,
        recorded: Sequence[Source] = (),
    ) -> ReplaySummary:
        """Ingest the sources, predict, compare; with ``retry_errors`` also predict again
        every stored event whose prediction by a candidate ended in an error. ``recorded``
        are sources of what candidate workers handed over (see :meth:`feeds`)."""
        started = self.now()
        feeds = self.feeds(events, outcomes, verdicts, recorded=recorded)
        if self.rollout is not None:
            # Live traffic interleaves events and outcomes; the gates need both as they come.
            self._drain_together(feeds)
        else:
            for source, prepare in feeds:
                self._drain(source, prepare)
        if retry_errors:
            for candidate in self.candidates:
                self._retry_errors(candidate)
        compare(self.store, self.comparator, self.summary, now=self.now)
        if self.rollout is not None:
            self.rollout.after_batch(force=True)
            self.summary.live, self.summary.published = self.rollout.live, self.rollout.published
            self.summary.proposed = self.rollout.proposed
        finished = self.now()
        self.summary.seconds = (finished - started).total_seconds()
        self.store.record_run({
            "run_id": uuid.uuid4().hex, "command": "replay", "started_at": started,
            "finished_at": finished, "summary": self.summary.as_dict(),
        })
        log.info("replay finished", **self.summary.as_dict())
        return self.summary

    def _drain(self, source: Source, prepare: Prepare) -> None:
        self.summary.sources.append(source.name)
        handed_out = 0
        with source, collect_between_batches():
            while True:
                read = self._step(source, prepare)
                if not read:
                    if source.exhausted:
                        break
                    continue  # an unbounded source had nothing within its poll timeout
                handed_out += read
                if self.progress:
                    self.progress(source.name, handed_out, source.fraction_done())
                gc.collect(1)  # the batch is unreachable by now: this is cheap

    def feeds(
        self, events: Sequence[Source], outcomes: Sequence[Source] = (),
        verdicts: Sequence[Source] = (), *, recorded: Sequence[Source] = (),
    ) -> list[tuple[Source, Prepare]]:
        """Each source with what turns its records into a write batch.

        ``recorded`` are sources of what candidate workers handed over (events already
        predicted and routed, :mod:`shadow.pipeline.handoff`): the recorder stores them
        as if it had read and predicted them itself, and calls no candidate.

        Every way into the pipeline (``run``, or the daemon's ``pump``) starts here,
        so this is where the store is asked whether it holds events already.
        """
        self._look_up_stored = not self.remember_ids or self.store.count("events") > 0
        found: list[tuple[Source, Prepare]] = [(s, self._prepare_events) for s in events]
        found += [(s, self._prepare_recorded) for s in recorded]
        found += [(s, self._prepare_outcomes) for s in outcomes]
        return found + [(s, self._prepare_verdicts) for s in verdicts]

    def pump(self, feeds: Sequence[tuple[Source, Prepare]]) -> int:
        """One batch from each open source that is not exhausted; returns the records read.

        The sources must be open. This is the daemon's unit of work.
        """
        total = 0
        with collect_between_batches():
            for source, prepare in feeds:
                if source.exhausted:
                    continue
                read = self._step(source, prepare)
                if read:
                    total += read
                    self._handed_out[source.name] = self._handed_out.get(source.name, 0) + read
                    if self.progress:
                        self.progress(source.name, self._handed_out[source.name],
                                      source.fraction_done())
        if total:
            gc.collect(1)  # the batches are unreachable by now: this is cheap
        return total

    def _drain_together(self, feeds: list[tuple[Source, Prepare]]) -> None:
        """Poll the sources in turn, one batch each, until every one is exhausted."""
        with ExitStack() as opened, collect_between_batches():
            for source, _ in feeds:
                self.summary.sources.append(source.name)
                opened.enter_context(source)
            while not all(source.exhausted for source, _ in feeds):
                self.pump(feeds)

    def _step(self, source: Source, prepare: Prepare) -> int:
        """Read, prepare and write one batch; returns how many records it had."""
        records = source.poll(self._poll_limit(prepare))
        if not records:
            return 0
        batch, done = prepare(records)
        counts = self.store.write(batch)
        if done is not None:
            done(counts)
        source.commit(records[-1].position)
        if self.rollout is not None:
            if self.evaluate_each_batch:
                self.rollout.after_batch()
            else:
                self.rollout.publish_pending()
        return len(records)

    def _poll_limit(self, prepare: Prepare) -> int:
        """Records to read at most: a batch's worth of events. A message a worker hands
        over holds hundreds of them, as many as the latest ones held on average."""
        if prepare == self._prepare_recorded:
            return max(1, round(self._batch_limit() / self._per_message))
        return self._batch_limit()

    def _batch_limit(self) -> int:
        """With a rollout evaluated here, batches are no larger than its evaluation cadence,
        so gates and routing follow the traffic whatever ``batch_size`` says."""
        if self.rollout is not None and self.evaluate_each_batch:
            return min(self.batch_size, self.rollout.batch_limit)
        return self.batch_size

    def _prepare_events(self, records: list[RawRecord]) -> tuple[WriteBatch, Done | None]:
        now = self.now()
        mapped, dead = map_records(records, self.event_mapper, RecordKind.EVENT, now)
        batch = WriteBatch(dead_letters=dead)
        new, stored = self._classify([e.event_id for e, _ in mapped],
                                     [r.source for _, r in mapped],
                                     [r.position for _, r in mapped], batch)
        fresh = [mapped[i][0] for i in new]
        known = [mapped[i][0] for i in stored]
        batch.events = [StoredEvent(mapped[i][0], mapped[i][1].source, mapped[i][1].position)
                        for i in new]
        for candidate in self.candidates:
            to_predict = fresh + self._unpredicted(known, candidate)
            if to_predict:
                predictions = checked_predictions(candidate, to_predict, now)
                if self.rollout is not None:
                    predictions = self.rollout.route(predictions, to_predict)
                batch.predictions.extend(predictions)
                log_failures(predictions, to_predict)

        s = self.summary
        s.events_read += len(records)
        s.events_stored += len(batch.events)
        s.duplicates += len(mapped) - len(batch.events)
        s.dead_letters += len(dead)
        s.events_skipped += len(records) - len(mapped) - len(dead)
        s.count_predictions(batch.predictions)
        return batch, None

    def _prepare_recorded(self, records: list[RawRecord]) -> tuple[WriteBatch, Done | None]:
        """What workers handed over: each event under the source and position a worker
        read it from, with the predictions the store does not hold yet."""
        got = receive(records, self.now())
        handed = got.handed
        batch = WriteBatch(dead_letters=got.dead_letters)
        self.summary.already_stored += got.repeats
        self._per_message = max(1.0, (len(handed) + len(got.dead_letters)) / len(records))
        # Handed over again is the rule, not the exception: the store is always asked.
        fresh, known = self._classify([h.row.event_id for h in handed],
                                      [h.source for h in handed],
                                      [h.position for h in handed], batch, look_up=True)
        taken = [handed[i] for i in fresh]
        batch.events_table = events_table([h.row for h in taken], [h.source for h in taken],
                                          [h.position for h in taken])
        predictions = [p for h in taken for p in h.predictions]
        by_version: dict[tuple[str, str | None], list[Prediction]] = {}
        for i in known:  # stored already: only what the store lacks
            for p in handed[i].predictions:
                by_version.setdefault((p.candidate, p.version), []).append(p)
        for (candidate, version), group in by_version.items():
            held = self.store.predicted([p.event_id for p in group], candidate, version)
            predictions += {p.event_id: p for p in reversed(group)
                            if p.event_id not in held}.values()
        batch.predictions = predictions
        batch.published = published_by_workers(handed, predictions)
        self.workers_heard.update(dict.fromkeys(got.workers, self.now()))

        s = self.summary
        s.events_read += len(records)
        s.events_stored += len(fresh)
        s.duplicates += len(batch.duplicates)
        s.dead_letters += len(batch.dead_letters)
        s.count_predictions(predictions)
        live = [p for p in predictions if p.mode is Mode.LIVE]
        s.live += len(live)
        unpublished = any((p.event_id, p.candidate, p.version) not in batch.published
                          for p in live)
        rollout = self.rollout
        if rollout is None or not unpublished:
            return batch, None

        def done(counts: WriteCounts) -> None:
            # What a worker routed live under an earlier state and did not publish, the
            # outbox does not publish (what it did publish is stored with the time).
            rollout.withdraw_handed_over()

        return batch, done

    def _classify(
        self, event_ids: list[str], sources: list[str], positions: list[str],
        batch: WriteBatch, *, look_up: bool = False,
    ) -> tuple[list[int], list[int]]:
        """Split the records read (by index) into events new to the store and events it
        already holds.

        A record read again at the position it was first stored from is a
        re-read, not a new duplicate; any other repeat is kept as a duplicate.
        """
        if not self.remember_ids:
            self._seen.clear()  # the earlier batches are in the store, which is asked
        stored = (
            self.store.stored_positions(event_ids) if self._look_up_stored or look_up else {}
        )
        fresh: list[int] = []
        known: list[int] = []
        seen = self._seen
        for i, event_id in enumerate(event_ids):
            first = stored.get(event_id)
            if event_id in seen or first is not None:
                if first is None or first != (sources[i], positions[i]):
                    batch.duplicates.append(Duplicate(event_id, sources[i], positions[i]))
                else:
                    self.summary.already_stored += 1
                if first is not None:
                    known.append(i)
                continue
            seen.add(event_id)
            fresh.append(i)
        return fresh, known

    def _unpredicted(self, known: list[Event], candidate: Candidate) -> list[Event]:
        """Stored events this candidate has not predicted yet (a new candidate, say)."""
        if not known:
            return []
        done = self.store.predicted([e.event_id for e in known], candidate.name, candidate.version)
        pending: dict[str, Event] = {}
        for event in known:
            if event.event_id not in done:
                pending.setdefault(event.event_id, event)
        # Predict on the event as first stored, not on a later duplicate's copy.
        return self.store.events_by_id(list(pending)) if pending else []

    def _retry_errors(self, candidate: Candidate) -> None:
        failed = self.store.errored(candidate.name, candidate.version)
        for start in range(0, len(failed), self.batch_size):
            events = self.store.events_by_id(failed[start : start + self.batch_size])
            predictions = checked_predictions(candidate, events, self.now())
            self.store.replace_predictions(predictions)
            s = self.summary
            s.retried += len(predictions)
            s.count_predictions(predictions)

    def _prepare_outcomes(self, records: list[RawRecord]) -> tuple[WriteBatch, Done | None]:
        mapped, dead = map_records(records, self.outcome_mapper, RecordKind.OUTCOME, self.now())
        unique: dict[tuple[str, datetime], tuple[Outcome, str, str]] = {}
        for outcome, record in mapped:
            unique.setdefault(
                (outcome.key, outcome.decided_at), (outcome, record.source, record.position)
            )
        s = self.summary
        s.outcomes_read += len(records)
        s.outcome_dead_letters += len(dead)
        s.outcomes_skipped += len(records) - len(mapped) - len(dead)

        def done(counts: WriteCounts) -> None:
            s.outcomes_stored += counts.outcomes
            s.outcome_duplicates += len(mapped) - counts.outcomes

        return WriteBatch(outcomes=list(unique.values()), dead_letters=dead), done

    def _prepare_verdicts(self, records: list[RawRecord]) -> tuple[WriteBatch, Done | None]:
        """Review verdicts are stored here, in a transaction of their own (they change the
        reviews they decide); what is left to write are the dead letters."""
        taken, dead = take_verdicts(self.store, records, self.verdict_mapper, self.now())
        s = self.summary
        s.verdicts_read += len(records)
        s.verdicts_taken += taken
        s.verdict_dead_letters += len(dead)
        return WriteBatch(dead_letters=dead), None


def checked_predictions(candidate: Candidate, events: list[Event], now: datetime
                        ) -> list[Prediction]:
    """The candidate's predictions of ``events``, with its hard constraints checked and the
    violations of malformed actions added."""
    predictions = candidate.predict(events, now)
    if candidate.checks is not None:
        predictions = candidate.checks.apply(predictions)
    return with_action_violations(predictions)


def log_failures(predictions: list[Any], events: list[Event]) -> None:
    failed = [p for p in predictions if p.error is not None]
    if not failed:
        return
    keys = {e.event_id: e.key for e in events}
    for p in failed[:20]:  # a candidate that is down fails every event: the first few tell
        log.warning("prediction failed", event_id=p.event_id, key=keys.get(p.event_id),
                    candidate=p.candidate, version=p.version, mode=p.mode.value,
                    rollout_step=p.step, error_kind=p.error.kind.value, error=p.error.message)
    if len(failed) > 20:
        log.warning("predictions failed", more=len(failed) - 20, candidate=failed[0].candidate)


@contextmanager
def collect_between_batches() -> Iterator[None]:
    """Run the cyclic garbage collector between batches instead of during them (the
    daemon's :meth:`Pipeline.pump` as much as a replay: left on, it took half a
    recorder's CPU).

    A batch allocates hundreds of thousands of short-lived objects; left on,
    the collector traverses the batch's live objects again and again while it
    is built, which measured a quarter of a replay's time. Almost nothing in a
    batch forms cycles (exceptions on bad records do), so a young-generation
    collection per batch reclaims it.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
