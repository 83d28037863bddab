"""Real traffic for the rollout tests, and the statistics it is checked against.

A stream is a list of :class:`Case` values (keys): each has one or more events,
one outcome, a candidate answer that agrees with the truth or not, and times in
*data* time. :func:`sources` delivers them through ``ListSource``s in rounds of
data time, so that an outcome reaches the pipeline in the round it was decided,
after its events. :class:`TrafficRun` runs the real pipeline (sources → store →
compare → controller) over a DuckDB file.

The reference statistics below are computed from their definitions (numeric
integration, a CUSUM written out, the router's keyed hash), never by calling
``rollout.statistics``: they are what the pipeline is checked against.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from connectors.base import RawRecord, Source
from rollout import audit
from rollout.controller import Controller
from rollout.runtime import LiveRollout
from rollout.state import Action
from rollout.views import status_view
from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.compare.step import compare
from shadow.config.comparators import ExactSpec
from shadow.config.rollout import RolloutSpec
from shadow.core.models import Event
from shadow.pipeline.runner import Pipeline
from shadow.store.database import Store
from shadow.testing import ListSource, RecordingSink
from tests.clock import SteppingClock

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LABELS = ("billing", "login", "refund", "shipping")
ROLLOUT = "triage"
COMPARATOR = build_comparator(ExactSpec())


# -- the traffic ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """One key: its events, the candidate's answer and the outcome a source reports."""

    index: int
    occurred_at: datetime
    agrees: bool
    """Whether the candidate's answer is the truth."""
    decided_at: datetime
    events: int = 1
    segment: str = "main"
    echo: bool = False
    """The outcome source reports the candidate's answer instead of the truth."""

    @property
    def key(self) -> str:
        return f"k{self.index:05d}"

    @property
    def truth(self) -> str:
        return LABELS[self.index % 4]

    @property
    def answer(self) -> str:
        return self.truth if self.agrees else LABELS[(self.index + 1) % 4]

    @property
    def outcome(self) -> str:
        return self.answer if self.echo else self.truth

    def event_records(self) -> list[dict[str, Any]]:
        return [{"event_id": f"e{self.index:05d}-{j}", "key": self.key,
                 "occurred_at": (self.occurred_at + timedelta(seconds=j)).isoformat(),
                 "segment": {"tier": self.segment}, "payload": {"j": j}}
                for j in range(self.events)]

    def outcome_record(self) -> dict[str, Any]:
        return {"key": self.key, "outcome": self.outcome, "decided_at": self.decided_at.isoformat()}


def cases(n: int, *, agreement: float | Callable[[int, str], float], seed: int,
          events: int = 1, every: timedelta = timedelta(minutes=1),
          delay: Callable[[bool, random.Random], timedelta] | None = None,
          segment: Callable[[random.Random], str] | None = None,
          echo: Callable[[int], bool] | None = None) -> list[Case]:
    """``n`` keys, one every ``every``; key ``i`` of segment ``segment(rng)`` agrees with
    probability ``agreement(i, segment)`` (or ``agreement``); its outcome is decided
    ``delay(agrees, rng)`` after its first event (10 seconds by default)."""
    rng = random.Random(seed)
    found = []
    for i in range(n):
        tier = segment(rng) if segment is not None else "main"
        rate = agreement(i, tier) if callable(agreement) else agreement
        agrees = rng.random() < rate
        occurred = START + i * every
        wait = delay(agrees, rng) if delay is not None else timedelta(seconds=10)
        found.append(Case(index=i, occurred_at=occurred, agrees=agrees,
                          decided_at=occurred + wait, events=events, segment=tier,
                          echo=echo(i) if echo is not None else False))
    return found


class Rounds(ListSource):
    """A ``ListSource`` that hands out one round of its records per poll, like a live
    feed that had that much to give within its poll timeout.

    A round may be empty (nothing arrived then): the poll returns nothing although
    the source is not exhausted, as a Kafka consumer's would; ``exhausted`` says
    when it is done.
    """

    def __init__(self, rounds: Sequence[Sequence[dict[str, Any]]], *, name: str) -> None:
        super().__init__([value for r in rounds for value in r], name=name)
        self._sizes = [len(r) for r in rounds]
        self._round = 0
        self._left = self._sizes[0] if self._sizes else 0

    def _poll(self, max_records: int) -> list[RawRecord]:
        if self._round >= len(self._sizes):
            return []
        chunk = super()._poll(min(max_records, self._left))
        self._left -= len(chunk)
        if self._left == 0:
            self._round += 1
            self._left = self._sizes[self._round] if self._round < len(self._sizes) else 0
        return chunk


Round = list[dict[str, Any]]


def rounds(found: Sequence[Case], span: timedelta, *,
           limit: int = 100) -> tuple[list[Round], list[Round]]:
    """Events and outcomes in rounds of ``span`` of data time (``[START + r·span,
    START + (r+1)·span)``). The pipeline polls the events, then the outcomes, one round
    each, so every outcome arrives in the round it was decided, after its events, and no
    record arrives before the data time of an earlier round.

    Raises:
        ValueError: a round holds more than ``limit`` records of one kind (the pipeline
            would split it, and the two streams would drift apart).
    """
    def index(at: datetime) -> int:
        return int((at - START) / span)

    events: dict[int, Round] = {}
    outcomes: dict[int, list[tuple[datetime, dict[str, Any]]]] = {}
    for case in found:
        for record in case.event_records():
            events.setdefault(index(datetime.fromisoformat(record["occurred_at"])),
                              []).append(record)
        outcomes.setdefault(index(case.decided_at), []).append(
            (case.decided_at, case.outcome_record()))
    event_rounds = [events.get(r, []) for r in range(max(events) + 1)]
    outcome_rounds = [[o for _, o in sorted(outcomes.get(r, []), key=lambda x: x[0])]
                      for r in range(max(outcomes) + 1)]
    if max(len(r) for r in [*event_rounds, *outcome_rounds]) > limit:
        raise ValueError(f"a round of {span} holds more than {limit} records")
    return event_rounds, outcome_rounds


def sources(found: Sequence[Case], span: timedelta) -> tuple[Rounds, Rounds]:
    """The events and outcomes of :func:`rounds` as two sources."""
    event_rounds, outcome_rounds = rounds(found, span)
    return Rounds(event_rounds, name="events"), Rounds(outcome_rounds, name="outcomes")


def flat(found: Sequence[Case]) -> tuple[ListSource, ListSource]:
    """Events and outcomes as two plain lists, in key order."""
    return (ListSource([r for c in found for r in c.event_records()], name="events"),
            ListSource([c.outcome_record() for c in found], name="outcomes"))


# -- the pipeline ----------------------------------------------------------------------


def plan(**extra: Any) -> RolloutSpec:
    """Shadow, then 100 %; agreement 0.90, rollback 0.95 → 0.80; ``extra`` overrides."""
    return RolloutSpec.model_validate({
        "name": ROLLOUT, "steps": [{"percent": 0, "min_compared": 1},
                                   {"percent": 100, "min_compared": 1}],
        "sink": {"kind": "file", "path": "unused.jsonl"},
        "gates": {"agreement": 0.9}, "rollback": {"healthy": 0.95, "degraded": 0.8},
        **extra,
    })


def ticking() -> SteppingClock:
    return SteppingClock(START, timedelta(seconds=30))


@dataclass
class TrafficRun:
    """The real pipeline of one rollout over one DuckDB file; reopen it to restart."""

    db: Path
    spec: RolloutSpec
    found: Sequence[Case]
    clock: SteppingClock = field(default_factory=ticking)
    batch_size: int = 100
    probe_every: int = 0
    """Every this many compares, record what ``status`` shows (0: never)."""
    probes: list[dict[str, Any]] = field(default_factory=list)
    store: Store | None = None
    controller: Controller | None = None

    def open(self) -> Controller:
        self.store = Store(self.db)
        self.store.open()
        self.controller = Controller(self.store, self.spec, rollout=ROLLOUT, candidate="triage",
                                     version="1", comparator=COMPARATOR.name, now=self.clock)
        self.controller.sync()
        return self.controller

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        self.store = self.controller = None

    def force_live(self) -> None:
        """A person promotes to the last step before any traffic (as the tests do)."""
        assert self.controller is not None
        self.controller.command(Action.PROMOTE, actor="dana", reason="test", force=True,
                                to_step=self.spec.last)

    def run(self, events: Source, outcomes: Source) -> None:
        """``Pipeline.run``: everything read, then a last forced evaluation."""
        replay, candidate = self._replay()
        with candidate:
            replay.run([events], [outcomes])

    def pump(self, events: Source, outcomes: Source) -> None:
        """The daemon's loop over the sources, without a last evaluation: what a process
        that stops (or dies) mid-step leaves behind."""
        replay, candidate = self._replay()
        feeds = replay.feeds([events], [outcomes])
        with candidate, events, outcomes:
            while not (events.exhausted and outcomes.exhausted):
                replay.pump(feeds)

    def status(self) -> dict[str, Any]:
        assert self.controller is not None
        return status_view(self.controller, self.controller.assess(), {}, None)

    def history(self) -> list[audit.AuditRecord]:
        assert self.store is not None
        return audit.history(self.store, ROLLOUT)

    def evaluations(self, kind: str = "promotion", step: int = 0) -> list[dict[str, Any]]:
        """The stored evaluations of one kind at one step, oldest first, with their checks
        by name."""
        assert self.store is not None
        rows = self.store.db.execute(
            "SELECT phase, evidence FROM gate_evaluations WHERE rollout = ? AND kind = ? "
            "AND step = ? ORDER BY evaluated_at", [ROLLOUT, kind, step]).fetchall()
        return [{"phase": phase, **{c["name"]: c for c in orjson.loads(evidence)["checks"]}}
                for phase, evidence in rows]

    def progress(self) -> tuple[Any, ...]:
        """The stored detector state: statistic, seen, alarmed_at, labels, fed."""
        assert self.store is not None
        row = self.store.db.execute(
            "SELECT statistic, seen, alarmed_at, labels, fed FROM rollout_progress "
            "WHERE rollout = ?", [ROLLOUT]).fetchone()
        assert row is not None
        return tuple(row)

    def _replay(self) -> tuple[Pipeline, CallableCandidate]:
        store, controller, clock = self.store, self.controller, self.clock
        assert store is not None and controller is not None
        answers = {c.key: c.answer for c in self.found}

        def answer(event: Event) -> str:
            return answers[event.key]

        comparator = COMPARATOR
        compares = 0

        def compare_and_probe() -> int:
            nonlocal compares
            made = compare(store, comparator, now=clock)
            compares += 1
            if self.probe_every and compares % self.probe_every == 0:
                self.probes.append(self.status())
            return made

        sink = RecordingSink()
        sink.open()
        live = LiveRollout(controller, sink, compare=compare_and_probe)
        candidate = CallableCandidate(answer, name="triage", version="1")
        return Pipeline(store, candidate, comparator, batch_size=self.batch_size, now=clock,
                      rollout=live), candidate


# -- the reference statistics ------------------------------------------------------------


def _log_integral(successes: float, n: int, t: float, low: float, high: float,
                  points: int) -> float:
    """``ln ∫_low^high (q/t)^S ((1−q)/(1−t))^(n−S) dq`` by the midpoint rule, in logs."""
    h = (high - low) / points
    q = low + h * (np.arange(points) + 0.5)
    f = successes * np.log(q / t) + (n - successes) * np.log((1 - q) / (1 - t))
    top = float(f.max())
    return top + math.log(h * float(np.exp(f - top).sum()))


def log_above(successes: float, n: int, t: float) -> float:
    """``ln M⁺_n(t) = ln ∫_t^1 (q/t)^S ((1−q)/(1−t))^(n−S) dq/(1−t)``."""
    return _log_integral(successes, n, t, t, 1.0, 200_000) - math.log(1 - t)


def shown_above(successes: float, n: int, t: float, alpha: float = 0.05) -> bool:
    """The one-sided mixture passes: ``M⁺_n(t) ≥ 1/α``."""
    return n > 0 and log_above(successes, n, t) >= math.log(1 / alpha)


def naive_low_at_least(successes: float, n: int, t: float, alpha: float = 0.05) -> bool:
    """The two-sided beta-binomial sequence's lower end is at or above ``t``: ``S/n ≥ t``
    and ``M_n(t) = ∫_0^1 (q/t)^S ((1−q)/(1−t))^(n−S) dq ≥ 1/α``."""
    return (n > 0 and successes >= t * n
            and _log_integral(successes, n, t, 0.0, 1.0, 400_000) >= math.log(1 / alpha))


def binomial_bound(runs: int, rate: float, beyond: float = 0.01) -> int:
    """The smallest count ``c`` with ``P(Binomial(runs, rate) > c) ≤ beyond``."""
    tail = 1.0
    for c in range(runs + 1):
        tail -= math.comb(runs, c) * rate**c * (1 - rate) ** (runs - c)
        if tail <= beyond:
            return c
    return runs


@dataclass(frozen=True, slots=True)
class Detector:
    """A Bernoulli CUSUM written out: an agreement moves it down one (not below 0), a
    disagreement up ``up``; it alarms on reaching ``threshold``. The defaults are the
    design docs/statistics.md gives for healthy 0.95, degraded 0.80, 1 % over 100,000."""

    up: int = 8
    threshold: int = 77

    def run(self, agreements: Iterable[bool]) -> tuple[int, int, int | None]:
        """``(statistic, seen, alarmed_at)`` after feeding ``agreements`` in order."""
        statistic = seen = 0
        for agree in agreements:
            seen += 1
            statistic = max(statistic - 1, 0) if agree else statistic + self.up
            if statistic >= self.threshold:
                return statistic, seen, seen
        return statistic, seen, None


def bucket(key: str, salt: str = ROLLOUT) -> int:
    """The router's bucket of ``key`` (BLAKE2b keyed with the salt, mod 10,000)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, key=salt.encode()).digest()
    return int.from_bytes(digest, "big") % 10_000


def held_out(key: str, holdout: float) -> bool:
    return bucket(key) >= 10_000 - round(holdout * 10_000)
