"""The columnar event path of a replay: a batch mapped into columns, deduplicated by the
store, and events built only for the candidates; for files and for Kafka topics.

:class:`ColumnarPipeline` is a :class:`~shadow.pipeline.runner.Pipeline` whose event
batches skip the per-record work that made up most of a replay (measured in
``docs/performance.md``):

- a record whose canonical fields are plain (ids and key non-empty strings, an ISO 8601
  timestamp, a segment of strings, a payload object) is checked by a few type tests
  instead of a pydantic validation, and goes into the batch's columns;
- every other record, and every one the fast test refuses, takes the per-record path of
  :func:`connectors.mapping.map_records` unchanged, so a dead letter has the same reason
  and position, and an event the same values;
- repeats are found by an anti-join of the batch's ids against the store and within
  the batch (:func:`shadow.store.writes.stored_before`), not a set of every id read;
- :class:`~shadow.core.models.Event` objects are built for the new events only, the ones
  a candidate is called on, and the rows of table ``events`` go to the store as one
  Arrow table.

A Kafka source's polls come as one :class:`~connectors.kafka_batch.KafkaBatch` each
(without a rollout): values are decoded here, and the per-record work the source would
do for every message (its ``_kafka`` metadata, its position, its record) is done only
for the messages that need it, so the fast test sees the same values.

When a candidate predicts out of process (:attr:`Candidate.predicts_out_of_process`:
a callable with ``workers`` above 1), a file's batches overlap: while the workers
predict batch N (called from a thread that mostly waits on their pipes), this thread
polls and maps batch N+1. Once N's predictions are in, N+1 is deduplicated against the
store and against N's new events, held in memory until N is written, and handed to the
workers; then N is written and its position committed. The workers wait on no write,
and repeats across the two batches are found as before.

What a replay stores is the same as :class:`Pipeline` stores from the same input
(``tests/pipeline/test_columnar.py`` compares the two stores table by table,
``tests/pipeline/test_columnar_kafka.py`` does for topics and
``tests/pipeline/test_columnar_workers.py`` with batches overlapped).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa

from connectors.base import RawRecord, Source
from connectors.kafka_batch import METADATA_KEY, KafkaBatch
from connectors.mapping import EventMapper, MappingFailed, dead_letter, unstorable
from shadow.candidates import Candidate
from shadow.core.models import DeadLetter, Event, Prediction, RecordKind
from shadow.pipeline.rows import Row, events_of, events_table, fast_row, row_of
from shadow.pipeline.runner import (
    Done,
    Pipeline,
    Prepare,
    checked_predictions,
    collect_between_batches,
    log_failures,
)
from shadow.store.writes import (
    Duplicate,
    WriteBatch,
    stored_before,
)


def _mapped_row(mapper: EventMapper, value: dict[str, Any], record: RawRecord, now: datetime,
                dead: list[DeadLetter]) -> Row | None:
    """The row of a record the fast test left to the mapping, as the per-record path maps
    it; ``None`` when it became a dead letter (added to ``dead``, with its reason)."""
    try:
        event = mapper(value)
    except MappingFailed as exc:
        dead.append(dead_letter(record, RecordKind.EVENT, str(exc), now))
        return None
    problem = unstorable(event)
    if problem is not None:
        dead.append(dead_letter(record, RecordKind.EVENT, problem, now))
        return None
    return row_of(event)


@dataclass(slots=True)
class _Read:
    """A batch polled and mapped, not yet deduplicated against the store."""

    records: int
    rows: list[Row]
    places: list[RawRecord]
    dead: list[DeadLetter]
    now: datetime
    position: str
    """The position of the batch's last record: what to commit once it is written."""
    fraction: float | None
    """The source's share read when the batch was polled, for the progress callback."""


@dataclass(slots=True)
class _Prepared:
    """A batch deduplicated: what to write but its predictions, and what to predict."""

    batch: WriteBatch
    stored: int
    calls: list[tuple[Candidate, list[Event]]]
    """Each candidate with the events it predicts, in the candidates' order."""

    def placed(self) -> dict[str, tuple[str, str]]:
        """Each new event's id, with the source and position it is stored from."""
        table = self.batch.events_table
        if table is None:
            return {}
        return dict(zip(table["event_id"].to_pylist(),
                        zip(table["source"].to_pylist(), table["position"].to_pylist(),
                            strict=True), strict=True))

    def predicted(self, candidate: Candidate) -> set[str]:
        """The ids of the events ``candidate`` predicts in this batch."""
        return {e.event_id for c, events in self.calls if c is candidate for e in events}


@dataclass(slots=True)
class _Predicting:
    """A batch deduplicated, its calls of candidates out of process under way."""

    prepared: _Prepared
    away: list[bool]
    """For each call, whether its candidate predicts out of process."""
    there: Future[list[list[Prediction]]]
    now: datetime

    def result(self) -> tuple[_Prepared, list[list[Prediction]]]:
        """The batch and each call's predictions, once those out of process are in; the
        calls of candidates in this process are made here, now."""
        calls, away = self.prepared.calls, self.away
        here = iter(_predict_all([call for call, out in zip(calls, away, strict=True)
                                  if not out], self.now))
        there = iter(self.there.result())
        return self.prepared, [next(there) if out else next(here) for out in away]


class ColumnarPipeline(Pipeline):
    """A :class:`Pipeline` whose event batches go through columns (see the module).

    With a rollout, batches take the per-record path: routing needs the events as they
    come, and those batches are small.
    """

    def _step(self, source: Source, prepare: Prepare) -> int:
        """As :meth:`Pipeline._step`; a Kafka source's events are read as one batch."""
        poll_batch = getattr(source, "poll_batch", None)
        if poll_batch is None or self.rollout is not None or prepare != self._prepare_events:
            return super()._step(source, prepare)
        polled: KafkaBatch = poll_batch(self._batch_limit())
        if not len(polled):
            return 0
        now = self.now()
        batch = self._write_batch(len(polled), *self._map_kafka(polled, now), now)
        self.store.write(batch)
        source.commit(polled.last_position)
        return len(polled)

    def _prepare_events(self, records: list[RawRecord]) -> tuple[WriteBatch, Done | None]:
        if self.rollout is not None:
            return super()._prepare_events(records)
        now = self.now()
        return self._write_batch(len(records), *self._map(records, now), now), None

    def _write_batch(self, read: int, rows: list[Row], places: list[RawRecord],
                     dead: list[DeadLetter], now: datetime) -> WriteBatch:
        """What to write for a batch of ``read`` records mapped into rows and dead letters."""
        prepared = self._deduplicate(rows, places, dead)
        predictions = [checked_predictions(c, events, now) for c, events in prepared.calls]
        return self._completed(prepared, predictions, read, len(rows))

    def _deduplicate(self, rows: list[Row], places: list[RawRecord], dead: list[DeadLetter],
                     unwritten: _Prepared | None = None) -> _Prepared:
        """The batch's new events and dead letters, and each candidate's events to predict:
        the new ones and those stored before that it has not predicted.

        ``unwritten`` is a batch predicted but not written yet: its new events count as
        stored, and the events it predicts as predicted.
        """
        batch = WriteBatch(dead_letters=dead)
        fresh, known = self._split(rows, places, batch,
                                   {} if unwritten is None else unwritten.placed())
        batch.events_table = events_table([rows[i] for i in fresh],
                                          [places[i].source for i in fresh],
                                          [places[i].position for i in fresh])
        events = events_of(rows, fresh)
        calls: list[tuple[Candidate, list[Event]]] = []
        for candidate in self.candidates:
            pending = known
            if unwritten is not None and known:
                predicted = unwritten.predicted(candidate)
                pending = [i for i in known if i not in predicted]
            to_predict = events + self._unpredicted_ids(pending, candidate)
            if to_predict:
                calls.append((candidate, to_predict))
        return _Prepared(batch, len(fresh), calls)

    def _completed(self, prepared: _Prepared, predictions: list[list[Prediction]],
                   read: int, mapped: int) -> WriteBatch:
        """The batch with its predictions (one list per call), counted in the summary."""
        batch = prepared.batch
        for (_, events), made in zip(prepared.calls, predictions, strict=True):
            batch.predictions.extend(made)
            log_failures(made, events)
        s = self.summary
        s.events_read += read
        s.events_stored += prepared.stored
        s.duplicates += mapped - prepared.stored
        s.dead_letters += len(batch.dead_letters)
        s.events_skipped += read - mapped - len(batch.dead_letters)
        s.count_predictions(batch.predictions)
        return batch

    # -- batches overlapped with predictions out of process ---------------------------

    def _drain(self, source: Source, prepare: Prepare) -> None:
        """As :meth:`Pipeline._drain`; with a candidate that predicts out of process, a
        file's batches overlap (see the module).

        Batch N+1 is polled and mapped while N is predicted; as soon as N's predictions
        are in, N+1 is deduplicated (against the store and N's new events, which are not
        written yet) and handed to the workers, and only then is N written and its
        position committed, so the workers wait for no write. The first batches are
        smaller (:meth:`_ramp`): the workers wait for an eighth of a batch to be read,
        not a whole one. Should anything raise, the batch being predicted is waited for
        before the source closes, and nothing after the last written batch is committed.
        """
        if not self._overlaps(source, prepare):
            super()._drain(source, prepare)
            return
        self.summary.sources.append(source.name)
        handed_out = 0
        with (source, collect_between_batches(),
              ThreadPoolExecutor(1, thread_name_prefix="shadow-predict") as thread):
            limits = self._ramp(prepare)
            current = self._read_ahead(source, next(limits))
            predicting = None if current is None else self._predicting(current, None, thread)
            while current is not None and predicting is not None:
                ahead = self._read_ahead(source, next(limits))
                # Between batches as in a serial replay (the batch written before is
                # unreachable), but while the workers predict: they wait for nothing.
                gc.collect(1)
                prepared, predictions = predicting.result()
                following = None if ahead is None else self._predicting(ahead, prepared, thread)
                batch = self._completed(prepared, predictions, current.records,
                                        len(current.rows))
                self.store.write(batch)
                source.commit(current.position)
                handed_out += current.records
                if self.progress:
                    self.progress(source.name, handed_out, current.fraction)
                current, predicting = ahead, following
            gc.collect(1)

    def _predicting(self, read: _Read, unwritten: _Prepared | None,
                    thread: ThreadPoolExecutor) -> _Predicting:
        """``read`` deduplicated, and its predictions under way: the calls of candidates out
        of process in ``thread``, the others here once those are handed out.

        ``unwritten`` is the batch before, predicted but not written: its new events count
        as stored, and what it predicts as predicted.
        """
        prepared = self._deduplicate(read.rows, read.places, read.dead, unwritten)
        away = [c.predicts_out_of_process for c, _ in prepared.calls]
        there = thread.submit(_predict_all, [call for call, out in
                                             zip(prepared.calls, away, strict=True) if out],
                              read.now)
        return _Predicting(prepared, away, there, read.now)

    def _overlaps(self, source: Source, prepare: Prepare) -> bool:
        """Whether a source's batches overlap with predictions: events from a file (not a
        Kafka batch), no rollout, and a candidate that predicts out of process."""
        return (prepare == self._prepare_events and self.rollout is None
                and getattr(source, "poll_batch", None) is None
                and any(c.predicts_out_of_process for c in self.candidates))

    def _ramp(self, prepare: Prepare) -> Iterator[int]:
        """The sizes of overlapped batches: an eighth of a batch, a quarter, a half, then
        whole ones, so that the workers have work once the first eighth is read."""
        limit = self._poll_limit(prepare)
        for shift in (3, 2, 1):
            yield max(1, limit >> shift)
        while True:
            yield limit

    def _read_ahead(self, source: Source, limit: int) -> _Read | None:
        """The source's next batch of up to ``limit`` records, polled and mapped; ``None``
        once it is exhausted."""
        while True:
            records = source.poll(limit)
            if records:
                now = self.now()
                rows, places, dead = self._map(records, now)
                return _Read(len(records), rows, places, dead, now, records[-1].position,
                             source.fraction_done())
            if source.exhausted:
                return None

    def _map(
        self, records: list[RawRecord], now: datetime
    ) -> tuple[list[Row], list[RawRecord], list[DeadLetter]]:
        """The batch's events as rows, each with its record, and its dead letters, in the
        order and with the reasons of :func:`~connectors.mapping.map_records`."""
        mapper = self.event_mapper
        when, shape = mapper.when, mapper.shape
        rows: list[Row] = []
        places: list[RawRecord] = []
        dead: list[DeadLetter] = []
        kind = RecordKind.EVENT
        for record in records:
            value = record.value
            if value is None:
                if record.raw is None and record.error is None:
                    continue  # a tombstone: nothing to map
                dead.append(dead_letter(record, kind, record.error or "undecodable record", now))
                continue
            if when is not None and not when(value):
                continue
            row = fast_row(shape(value)) or _mapped_row(mapper, value, record, now, dead)
            if row is None:
                continue
            rows.append(row)
            places.append(record)
        return rows, places, dead

    def _map_kafka(
        self, polled: KafkaBatch, now: datetime
    ) -> tuple[list[Row], list[RawRecord], list[DeadLetter]]:
        """As :meth:`_map` for the records of ``polled``, building what the per-record
        path builds for every record only where it is used.

        Values are decoded here; a record whose value is not a JSON object, or that the
        fast test leaves to the mapping, is taken as :meth:`KafkaBatch.record` gives it,
        metadata and all, so its dead letter or event is the per-record path's. The
        ``_kafka`` metadata is added to every value when the mapping or its ``when`` may
        read it, and otherwise only to those records.
        """
        mapper = self.event_mapper
        when, shape = mapper.when, mapper.shape
        metadata = not mapper.canonical or when is not None
        source, loads = polled.source, orjson.loads
        rows: list[Row] = []
        places: list[RawRecord] = []
        dead: list[DeadLetter] = []
        kind = RecordKind.EVENT
        for i, raw in enumerate(polled.values()):
            if raw is None:
                continue  # a tombstone: nothing to map
            try:
                value = loads(raw)
            except orjson.JSONDecodeError:
                value = None
            if type(value) is not dict:
                record = polled.record(i)
                dead.append(dead_letter(record, kind, record.error or "undecodable record", now))
                continue
            if metadata:
                value[METADATA_KEY] = polled.metadata(i)
                if when is not None and not when(value):
                    continue
            row = fast_row(shape(value))
            if row is None:
                record = polled.record(i)
                row = _mapped_row(mapper, record.value or {}, record, now, dead)
                if row is None:
                    continue
                places.append(record)
            else:
                places.append(RawRecord(source, polled.position(i), value, raw))
            rows.append(row)
        return rows, places, dead

    def _split(
        self, rows: list[Row], places: list[RawRecord], batch: WriteBatch,
        unwritten: dict[str, tuple[str, str]],
    ) -> tuple[list[int], list[str]]:
        """The rows new to the store (by index) and the ids of those it holds already.

        As :meth:`Pipeline._classify`: a record read again at the position its event was
        stored from is a re-read, any other repeat a duplicate. ``unwritten`` holds the
        events of a batch about to be written, with their sources and positions: a row
        repeating one of them is a repeat as if that batch were stored.
        """
        if not rows:
            return [], []
        repeats, sources, positions = stored_before(
            self.store.db, pa.array([r.event_id for r in rows], pa.string()))
        # Each repeat's index: where its event was first stored, and whether by this batch.
        found = {i: (source, position, True)
                 for i, source, position in zip(repeats, sources, positions, strict=True)}
        if unwritten:
            for i, row in enumerate(rows):
                place = unwritten.get(row.event_id)
                if place is not None:
                    found[i] = (*place, False)
        if not found:
            return list(range(len(rows))), []
        known: list[str] = []
        look_up = self._look_up_stored
        for i in sorted(found):
            source, position, in_store = found[i]
            record = places[i]
            first = (source, position) if look_up and source is not None else None
            if first is None or first != (record.source, record.position):
                batch.duplicates.append(Duplicate(rows[i].event_id, record.source,
                                                  record.position))
            else:
                self.summary.already_stored += 1
            if first is not None and in_store:
                known.append(rows[i].event_id)
        return [i for i in range(len(rows)) if i not in found], known

    def _unpredicted_ids(self, known: Sequence[str], candidate: Candidate) -> list[Event]:
        """Stored events this candidate has not predicted yet, as first stored."""
        if not known:
            return []
        done = self.store.predicted(list(known), candidate.name, candidate.version)
        pending = list(dict.fromkeys(i for i in known if i not in done))
        return self.store.events_by_id(pending) if pending else []


def _predict_all(calls: list[tuple[Candidate, list[Event]]], now: datetime
                 ) -> list[list[Prediction]]:
    """Each call's predictions, checked, in the order of ``calls``."""
    return [checked_predictions(candidate, events, now) for candidate, events in calls]
