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

A file's batches are written in transactions of at least :data:`GROUP_EVENTS` new
events, held as Arrow tables until then; each batch is deduplicated against the store
and the batches not written yet, whose events count as stored and whose predictions as
made. When a candidate predicts out of process
(:attr:`Candidate.predicts_out_of_process`: a callable with ``workers`` above 1), a
file's batches also overlap: while the workers predict batch N (called from a thread
that mostly waits on their pipes), this thread polls and maps batch N+1, and hands it
to the workers as soon as N's predictions are in, before anything is written.

What a replay stores is the same as :class:`Pipeline` stores from the same input
(``tests/pipeline/test_columnar.py`` compares the two stores table by table,
``tests/pipeline/test_columnar_kafka.py`` does for topics and
``tests/pipeline/test_columnar_workers.py`` with batches overlapped).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

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
    arrow_tables,
    stored_before,
)

GROUP_EVENTS = 122_880
"""New events a replay gathers into one transaction, at least: DuckDB's row group. From
there DuckDB writes a transaction's rows to the database file, not to its write-ahead log
first, and a checkpoint does not copy them again."""
GROUP_BYTES = 256 * 2**20
"""Or the bytes of the tables gathered, whichever comes first."""


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


@dataclass(slots=True)
class _Unwritten:
    """Batches predicted and not written yet, as the tables one transaction will write.

    The batches read after them take their events as stored and their predictions as
    made (:meth:`ColumnarPipeline._deduplicate`).
    """

    tables: list[dict[str, pa.Table]] = field(default_factory=list)
    events: int = 0
    size: int = 0
    """The tables' bytes."""

    def add(self, batch: WriteBatch) -> None:
        """A batch completed with its predictions."""
        tables = arrow_tables(batch)
        self.tables.append(tables)
        self.size += sum(table.nbytes for table in tables.values())
        if "events" in tables:
            self.events += tables["events"].num_rows

    @property
    def full(self) -> bool:
        """Whether the batches make a transaction of their own: enough events for DuckDB
        to write them to the database file directly, or enough bytes held."""
        return self.events >= GROUP_EVENTS or self.size >= GROUP_BYTES

    def stored(self) -> pa.Table | None:
        """The rows of table ``events`` the batches hold, if any."""
        events = [t["events"] for t in self.tables if "events" in t]
        return pa.concat_tables(events) if events else None

    def predicted(self, candidate: Candidate, event_ids: Sequence[str]) -> set[str]:
        """Which of ``event_ids`` the batches hold a prediction of by ``candidate``."""
        wanted = pa.array(event_ids, pa.string())
        found: set[str] = set()
        for tables in self.tables:
            predictions = tables.get("predictions")
            if predictions is None:
                continue
            rows = predictions.filter(pc.is_in(predictions["event_id"], wanted))
            found.update(event_id for event_id, name, version in zip(
                rows["event_id"].to_pylist(), rows["candidate"].to_pylist(),
                rows["version"].to_pylist(), strict=True)
                if (name, version) == (candidate.name, candidate.version))
        return found


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
                     dead: list[DeadLetter], now: datetime,
                     unwritten: _Unwritten | None = None) -> WriteBatch:
        """What to write for a batch of ``read`` records mapped into rows and dead letters
        (``unwritten``: as :meth:`_deduplicate`)."""
        prepared = self._deduplicate(rows, places, dead, unwritten)
        return self._completed(prepared, _predict_all(prepared.calls, now), read, len(rows))

    def _deduplicate(self, rows: list[Row], places: list[RawRecord], dead: list[DeadLetter],
                     unwritten: _Unwritten | None = None) -> _Prepared:
        """The batch's new events and dead letters, and each candidate's events to predict:
        the new ones and those stored before that it has not predicted.

        ``unwritten`` are batches predicted but not written yet: their new events count as
        stored, and the events they predict as predicted.
        """
        batch = WriteBatch(dead_letters=dead)
        fresh, known = self._split(rows, places, batch,
                                   None if unwritten is None else unwritten.stored())
        batch.events_table = events_table([rows[i] for i in fresh],
                                          [places[i].source for i in fresh],
                                          [places[i].position for i in fresh])
        events = events_of(rows, fresh)
        calls: list[tuple[Candidate, list[Event]]] = []
        for candidate in self.candidates:
            pending = known
            if unwritten is not None and known:
                predicted = unwritten.predicted(candidate, known)
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

    # -- a file's batches: gathered into transactions, overlapped with workers ----------

    def _drain(self, source: Source, prepare: Prepare) -> None:
        """As :meth:`Pipeline._drain`; a file's events (without a rollout) are written in
        transactions of several batches, and overlap with candidates out of process.

        Each batch is deduplicated against the store and against the batches read before
        it and not written yet (:class:`_Unwritten`), whose new events count as stored and
        whose predictions as made. Batches are written together once they hold
        :data:`GROUP_EVENTS` new events (or :data:`GROUP_BYTES`), or the source is
        exhausted, and only then is the last one's position committed. Should anything
        raise, nothing after the last written transaction is committed.
        """
        if not self._gathers(source, prepare):
            super()._drain(source, prepare)
            return
        if any(c.predicts_out_of_process for c in self.candidates):
            self._drain_overlapped(source, prepare)
            return
        self.summary.sources.append(source.name)
        handed_out, limit, unwritten = 0, self._poll_limit(prepare), _Unwritten()
        position: str | None = None
        with source, collect_between_batches():
            while (gathered := self._gather(source, limit, unwritten)) is not None:
                records, position, fraction = gathered
                if unwritten.full:
                    unwritten = self._write_gathered(unwritten, source, position)
                handed_out += records
                if self.progress:
                    self.progress(source.name, handed_out, fraction)
                gc.collect(1)  # the batch is unreachable by now, its tables held: cheap
            if position is not None and unwritten.tables:
                self._write_gathered(unwritten, source, position)

    def _gather(self, source: Source, limit: int, unwritten: _Unwritten
                ) -> tuple[int, str, float | None] | None:
        """Read, deduplicate and predict the source's next batch into ``unwritten``;
        returns its records, its last position and the share read, ``None`` once the
        source is exhausted. (Its objects are unreachable once this returns.)"""
        read = self._read_ahead(source, limit)
        if read is None:
            return None
        unwritten.add(self._write_batch(read.records, read.rows, read.places, read.dead,
                                        read.now, unwritten))
        return read.records, read.position, read.fraction

    def _write_gathered(self, unwritten: _Unwritten, source: Source, position: str
                        ) -> _Unwritten:
        """Write the batches gathered in one transaction and commit ``position``, the
        last one's; returns what gathers the next ones."""
        self.store.write_tables(unwritten.tables)
        source.commit(position)
        return _Unwritten()

    def _drain_overlapped(self, source: Source, prepare: Prepare) -> None:
        """:meth:`_drain` with a candidate that predicts out of process: batch N+1 is
        polled and mapped while N is predicted, and handed to the workers as soon as N's
        predictions are in, before anything is written, so the workers wait on no write.
        The first batches are smaller (:meth:`_ramp`): the workers wait for an eighth of
        a batch to be read, not a whole one. Should anything raise, the batch being
        predicted is waited for before the source closes."""
        self.summary.sources.append(source.name)
        handed_out, unwritten = 0, _Unwritten()
        with (source, collect_between_batches(),
              ThreadPoolExecutor(1, thread_name_prefix="shadow-predict") as thread):
            limits = self._ramp(prepare)
            current = self._read_ahead(source, next(limits))
            predicting = (None if current is None
                          else self._predicting(current, unwritten, thread))
            while current is not None and predicting is not None:
                ahead = self._read_ahead(source, next(limits))
                # Between batches, as in a serial replay, but while the workers predict:
                # they wait for nothing.
                gc.collect(1)
                prepared, predictions = predicting.result()
                unwritten.add(self._completed(prepared, predictions, current.records,
                                              len(current.rows)))
                following = (None if ahead is None
                             else self._predicting(ahead, unwritten, thread))
                if ahead is None or unwritten.full:
                    unwritten = self._write_gathered(unwritten, source, current.position)
                handed_out += current.records
                if self.progress:
                    self.progress(source.name, handed_out, current.fraction)
                current, predicting = ahead, following
            gc.collect(1)

    def _predicting(self, read: _Read, unwritten: _Unwritten,
                    thread: ThreadPoolExecutor) -> _Predicting:
        """``read`` deduplicated, and its calls of candidates out of process under way in
        ``thread`` (the others are made by :meth:`_Predicting.result`)."""
        prepared = self._deduplicate(read.rows, read.places, read.dead, unwritten)
        away = [c.predicts_out_of_process for c, _ in prepared.calls]
        there = thread.submit(_predict_all, [call for call, out in
                                             zip(prepared.calls, away, strict=True) if out],
                              read.now)
        return _Predicting(prepared, away, there, read.now)

    def _gathers(self, source: Source, prepare: Prepare) -> bool:
        """Whether a source's batches are gathered into transactions (and overlap with
        candidates out of process): events from a file (not a Kafka batch), no rollout."""
        return (prepare == self._prepare_events and self.rollout is None
                and getattr(source, "poll_batch", None) is None)

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
        unwritten: pa.Table | None,
    ) -> tuple[list[int], list[str]]:
        """The rows new to the store (by index) and the ids of those it holds already.

        As :meth:`Pipeline._classify`: a record read again at the position its event was
        stored from is a re-read, any other repeat a duplicate. ``unwritten`` are events
        about to be written (rows of table ``events``): a row repeating one is a repeat as
        if it were stored, though not one the store holds.
        """
        if not rows:
            return [], []
        repeats, sources, positions, in_store = stored_before(
            self.store.db, pa.array([r.event_id for r in rows], pa.string()), unwritten)
        if not repeats:
            return list(range(len(rows))), []
        known: list[str] = []
        look_up = self._look_up_stored
        for i, source, position, held in zip(repeats, sources, positions, in_store,
                                             strict=True):
            record = places[i]
            first = (source, position) if look_up and source is not None else None
            if first is None or first != (record.source, record.position):
                batch.duplicates.append(Duplicate(rows[i].event_id, record.source,
                                                  record.position))
            else:
                self.summary.already_stored += 1
            if first is not None and held:
                known.append(rows[i].event_id)
        repeated = set(repeats)
        return [i for i in range(len(rows)) if i not in repeated], known

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
