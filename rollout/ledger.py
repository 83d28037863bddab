"""The step's ledger: its units and tallies, kept in memory and changed one row at a time.

Everything here is pure bookkeeping, no I/O: :mod:`rollout.units` feeds it the
rows that are new since it last looked and persists what it must. Counting a
step's million units again at every evaluation costs tens of milliseconds in
DuckDB (one scan); moving the counts by what changed costs microseconds a row.

A unit is one key of the step (see :mod:`rollout.units` for the rules). It
*counts* when it is eligible (routed apart from the AI, or any live unit
while some outcome source is declared independent), past its label window
(*mature*), and either labelled by an independent outcome or unlabelled but
not yet expired. A counted unit adds one key to the judged ones, and, when
labelled, its agreement to the agreed sum. Every change to a unit removes
its old contribution and adds the new one, so the totals can never drift
from a recount; the tests recount.

The label window and the expiry only move forward (each cutoff is the
largest seen): a unit once mature stays mature, so the judged units are
always a growing prefix of the units in ``occurred_at`` order.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from rollout.histogram import Histogram
from shadow.config.rollout import Unit

Segment = tuple[str, str]


@dataclass(slots=True)
class Totals:
    """Counted units: judged (mature), labelled among them, and their summed agreement."""

    mature: int = 0
    labelled: int = 0
    agreed: float = 0.0

    def add(self, labelled: bool, agree: float, sign: int) -> None:
        self.mature += sign
        if labelled:
            self.labelled += sign
            self.agreed += sign * agree


@dataclass(slots=True)
class UnitRow:
    """One key of the step."""

    key: str
    event_id: str
    """The event of the key's first successful prediction in the step."""
    occurred_at: float
    """Epoch seconds of that event: when the key's label window starts."""
    shadow: bool
    """Routed apart from the AI (shadow share, holdout) or into the review sample."""
    eligible: bool
    segments: tuple[Segment, ...] = ()
    agree: float | None = None
    independent: bool = False
    decided_at: float | None = None
    seq: int | None = None
    """The order of the key's first label among the step's labels (1-based)."""
    mature: bool = False
    expired: bool = False
    verdicts: dict[str, tuple[float, float, float]] | None = None
    """``last`` and ``mean`` units: each compared event's (occurred_at, agree, decided_at)."""

    @property
    def counted(self) -> bool:
        if not (self.eligible and self.mature):
            return False
        return self.independent if self.agree is not None else not self.expired


@dataclass(slots=True)
class Tally:
    """The step's predictions, for the error, latency, coverage and violation gates."""

    predictions: int = 0
    errors: int = 0
    abstained: int = 0
    violations: int = 0
    latency: Histogram = field(default_factory=Histogram)
    """Latencies of successful predictions, in milliseconds."""


@dataclass(slots=True)
class Ledger:
    """The units and tallies of one step."""

    unit: Unit = Unit.FIRST
    units: dict[str, UnitRow] = field(default_factory=dict)
    events: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Event id → (key, occurred_at), for the events whose comparisons move a unit."""
    totals: Totals = field(default_factory=Totals)
    segments: dict[Segment, Totals] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)
    delays: Histogram = field(default_factory=lambda: Histogram(floor=1.0))
    """Label delays in seconds (first labels, data time)."""
    verdict_delays: dict[bool, Histogram] = field(default_factory=dict)
    clock: float | None = None
    mature_cutoff: float = float("-inf")
    expiry_cutoff: float = float("-inf")
    labels: int = 0
    """The last label number handed out."""
    dependent: int = 0
    """Labelled live units whose outcome may echo the AI: left out."""
    expired: int = 0
    """Unlabelled units past their expiry: left out."""
    feed: list[tuple[int, str, bool]] = field(default_factory=list)
    """Independent first labels not yet fed to the detector: (number, key, agreed)."""
    _waiting: list[tuple[float, str]] = field(default_factory=list)
    _unlabelled: list[tuple[float, str]] = field(default_factory=list)

    # -- changes ----------------------------------------------------------------

    def add_unit(self, row: UnitRow) -> bool:
        """A key's first successful prediction of the step; ``False`` if the key has one."""
        if row.key in self.units:
            return False
        self.units[row.key] = row
        self.events[row.event_id] = (row.key, row.occurred_at)
        self._tick(row.occurred_at)
        if row.occurred_at <= self.mature_cutoff:
            self._change(row, mature=True)
            if row.occurred_at <= self.expiry_cutoff:
                self._change(row, expired=True)
            else:
                heapq.heappush(self._unlabelled, (row.occurred_at, row.key))
        else:
            heapq.heappush(self._waiting, (row.occurred_at, row.key))
        return True

    def add_event(self, event_id: str, key: str, occurred_at: float) -> None:
        """Another event of a known key (``last`` and ``mean`` units judge them all); it
        moves the data clock like any event of the step."""
        self._tick(occurred_at)
        if self.unit is not Unit.FIRST and key in self.units:
            self.events[event_id] = (key, occurred_at)

    def label(self, event_id: str, agree: bool, decided_at: float, occurred_at: float,
              independent: bool) -> UnitRow | None:
        """A comparison of one of the step's events; returns the unit it moved."""
        found = self.events.get(event_id)
        if found is None:
            return None
        key = found[0]
        row = self.units[key]
        value = 1.0 if agree else 0.0
        if self.unit is not Unit.FIRST:
            if row.verdicts is None:
                row.verdicts = {}
            row.verdicts[event_id] = (occurred_at, value, decided_at)
            value, decided_at = _judge(self.unit, row.verdicts)
        elif event_id != row.event_id:
            return None
        independent = row.shadow or independent
        if (row.agree, row.decided_at, row.independent) == (value, decided_at, independent):
            return row
        first = row.agree is None and row.seq is None
        self._change(row, agree=value, decided_at=decided_at, independent=independent)
        self._tick(decided_at)
        if first:
            self.labels += 1
            row.seq = self.labels
            delay = max(decided_at - row.occurred_at, 0.0)
            self.delays.add(delay)
            self.verdict_delays.setdefault(value >= 0.5, Histogram(floor=1.0)).add(delay)
            if independent:
                self.feed.append((row.seq, key, value >= 0.5))
        return row

    def advance(self, window: float, expiry: float | None) -> None:
        """Move the cutoffs to the data clock less ``window`` (and ``expiry``)."""
        if self.clock is None:
            return
        self.mature_cutoff = max(self.mature_cutoff, self.clock - window)
        while self._waiting and self._waiting[0][0] <= self.mature_cutoff:
            _, key = heapq.heappop(self._waiting)
            row = self.units[key]
            self._change(row, mature=True)
            if row.agree is None:
                heapq.heappush(self._unlabelled, (row.occurred_at, key))
        if expiry is None:
            return
        self.expiry_cutoff = max(self.expiry_cutoff, self.clock - expiry)
        while self._unlabelled and self._unlabelled[0][0] <= self.expiry_cutoff:
            _, key = heapq.heappop(self._unlabelled)
            row = self.units[key]
            if row.agree is None and not row.expired:
                self._change(row, expired=True)

    def restore(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Rebuild ``first`` units as stored, with the cutoffs already set: each row is a
        unit (key, event id, occurred_at, shadow, eligible, its segments as a JSON list of
        ``[field, value]`` pairs), its latest label (agree,
        decided_at, independent) and its first (stored label row number, agree,
        independent, decided_at); ``None`` where it has none. The same state as adding
        the units and replaying their labels, in one pass."""
        firsts: list[tuple[int, UnitRow, bool, bool, float]] = []
        waiting, unlabelled = self._waiting, self._unlabelled
        for (key, event_id, occurred, shadow, eligible, text, agree, decided,
             independent, first_row, first_agree, first_independent, first_decided) in rows:
            row = UnitRow(key=key, event_id=event_id, occurred_at=occurred, shadow=shadow,
                          eligible=eligible, segments=parse_segments(text))
            self.units[key] = row
            self.events[event_id] = (key, occurred)
            self._tick(occurred)
            if agree is not None:
                row.agree, row.decided_at = (1.0 if agree else 0.0), decided
                row.independent = shadow or independent
                self._tick(decided)
                firsts.append((first_row, row, first_agree, shadow or first_independent,
                               max(first_decided - occurred, 0.0)))
            row.mature = occurred <= self.mature_cutoff
            row.expired = row.mature and agree is None and occurred <= self.expiry_cutoff
            self._count(row, 1)
            if not row.mature:
                waiting.append((occurred, key))
            elif agree is None and not row.expired:
                unlabelled.append((occurred, key))
        heapq.heapify(waiting)
        heapq.heapify(unlabelled)
        firsts.sort(key=lambda f: f[0])
        for seq, (_, row, agreed, independent, delay) in enumerate(firsts, start=1):
            row.seq = seq
            self.delays.add(delay)
            self.verdict_delays.setdefault(agreed, Histogram(floor=1.0)).add(delay)
            if independent:
                self.feed.append((seq, row.key, agreed))
        self.labels = len(firsts)

    # -- bookkeeping --------------------------------------------------------------

    def _tick(self, at: float) -> None:
        if self.clock is None or at > self.clock:
            self.clock = at

    def _change(self, row: UnitRow, **values: object) -> None:
        self._count(row, -1)
        for name, value in values.items():
            setattr(row, name, value)
        self._count(row, 1)

    def _count(self, row: UnitRow, sign: int) -> None:
        # UnitRow.counted, unrolled: this runs twice for every change of every unit.
        agree = row.agree
        if agree is None:
            if row.expired:
                self.expired += sign
                return
        elif not row.independent:
            self.dependent += sign
            return
        if not (row.eligible and row.mature):
            return
        labelled = agree is not None
        value = agree or 0.0
        self.totals.add(labelled, value, sign)
        for segment in row.segments:
            totals = self.segments.get(segment)
            if totals is None:
                totals = self.segments[segment] = Totals()
            totals.add(labelled, value, sign)


@functools.lru_cache(maxsize=4096)
def parse_segments(text: str | None) -> tuple[Segment, ...]:
    """A unit's segments as stored: a JSON list of ``[field, value]`` pairs. Units mostly
    share a few combinations, so each text is parsed once."""
    return () if text is None else tuple((f, v) for f, v in orjson.loads(text))


def _judge(unit: Unit, verdicts: dict[str, tuple[float, float, float]]) -> tuple[float, float]:
    """A ``last`` or ``mean`` unit's agreement and the decision it was judged against."""
    decided = max(d for _, _, d in verdicts.values())
    if unit is Unit.MEAN:
        return sum(a for _, a, _ in verdicts.values()) / len(verdicts), decided
    before = [(o, a) for o, a, _ in verdicts.values() if o <= decided]
    chosen = max(before) if before else min((o, a) for o, a, _ in verdicts.values())
    return chosen[1], decided
