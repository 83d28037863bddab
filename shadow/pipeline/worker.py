"""A candidate worker: events from a Kafka consumer group in, predictions to the recorder out.

Each batch a worker polls goes through the same steps as in a single process
(mapping, the candidates, their checks), and then:

1. **routing** by the rollout's state as the worker last heard it on
   ``rollout.state_topic`` (:class:`rollout.state_topic.StateFollower`). A worker
   that has not heard the current state within ``max_age``, or that runs another
   version of the candidate than the state names, routes everything to shadow;
2. **publishing** the live decisions of tier ``auto`` to the action sink itself, at
   once (a decision the sink refuses is left to the recorder's outbox, which
   withdraws it if the rollout changed since it was routed);
3. **handing over** every event with its predictions, and every dead letter, to the
   workers' topic (:mod:`shadow.pipeline.handoff`), waiting until the broker holds
   them all;
4. **committing** the batch's offsets, only then.

A worker killed between any two steps loses nothing: its partitions move to another
worker, which reads the records again; the recorder stores each event and its
predictions once, and a live decision published twice carries the same ``event_id``
(at least once, as everywhere). Workers keep no state of their own.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

import structlog

from connectors.base import RawRecord, Source
from connectors.mapping import EventMapper, map_records
from connectors.sinks import Decision, Sink
from rollout.router import router_for
from rollout.state import RolloutState
from rollout.state_topic import StateFollower
from rollout.tier_health import effective
from rollout.tiers import Policy
from shadow.candidates import Candidate
from shadow.config.rollout import RolloutSpec
from shadow.config.tiers import Tier
from shadow.core.errors import ShadowError, SinkError
from shadow.core.models import Event, Mode, Prediction, RecordKind, utc_now
from shadow.pipeline.handoff import Published, dead_letter_item, event_item
from shadow.pipeline.handoff import messages as handoff_messages
from shadow.pipeline.runner import checked_predictions, log_failures

log = structlog.get_logger(__name__)


class Stopped(ShadowError):
    """The worker was told to stop before a batch was handed over (nothing was committed)."""


@dataclass(slots=True)
class WorkerCounts:
    """What a worker has done since it started."""

    records: int = 0
    events: int = 0
    dead_letters: int = 0
    predictions: int = 0
    errors: int = 0
    live: int = 0
    published: int = 0
    held: int = 0
    """Predictions routed to shadow because the state was not heard within ``max_age``."""
    handed_over: int = 0
    batches: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    """Predictions by candidate."""


@dataclass(frozen=True, slots=True)
class RolloutRoute:
    """What a worker needs to route the rolled-out candidate's predictions."""

    plan: RolloutSpec
    rollout: str
    candidate: str
    version: str | None
    follower: StateFollower
    sink: Sink
    policy: Policy


class Writer(Protocol):
    """Where a worker hands its messages over (:class:`connectors.kafka.TopicWriter`)."""

    def write_all(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        """Return once every ``(key, value)`` is held; raise ``SinkError`` otherwise."""


class Worker:
    """Predicts the records of ``sources`` and hands them to the recorder through ``writer``.

    The sources, the candidates, the follower and the sink must be open; the worker
    opens and closes nothing. One thread calls :meth:`step`.
    """

    def __init__(self, sources: Sequence[Source], candidates: Sequence[Candidate],
                 writer: Writer, *, name: str, event_mapper: EventMapper | None = None,
                 route: RolloutRoute | None = None, batch_size: int = 500,
                 now: Callable[[], datetime] = utc_now,
                 stopping: threading.Event | None = None) -> None:
        self.sources, self.candidates, self.writer = list(sources), list(candidates), writer
        self.stopping = stopping if stopping is not None else threading.Event()
        """Set when the worker should stop: a batch the broker does not take is given up."""
        self.name, self.route, self.batch_size, self.now = name, route, batch_size, now
        self.event_mapper = event_mapper or EventMapper()
        self.counts = WorkerCounts()

    def step(self) -> int:
        """One batch from each source: predicted, routed, published, handed over and
        committed; returns the records read."""
        total = 0
        for source in self.sources:
            records = source.poll(self.batch_size)
            if not records:
                continue
            self._handle(records)
            source.commit(records[-1].position)
            total += len(records)
        return total

    def state(self) -> RolloutState | None:
        """The rollout's state as this worker last read it (``None``: none yet, or no
        rollout)."""
        return None if self.route is None else self.route.follower.current(self.route.rollout)

    def live_allowed(self) -> bool:
        """Whether this worker may publish live decisions now."""
        state = self.state()
        return state is not None and state.live and self._may_act(state)

    def state_age(self) -> float | None:
        """Seconds since the rollout's current state was heard (``None``: never, or no
        rollout)."""
        return None if self.route is None else self.route.follower.age(self.route.rollout)

    def _handle(self, records: list[RawRecord]) -> None:
        now = self.now()
        mapped, dead = map_records(records, self.event_mapper, RecordKind.EVENT, now)
        first: dict[str, Event] = {}
        for event, _ in mapped:
            first.setdefault(event.event_id, event)
        events = list(first.values())  # a record repeated in the batch is predicted once
        by_event: dict[str, list[Prediction]] = {e.event_id: [] for e in events}
        for candidate in self.candidates:
            if not events:
                break
            predictions = checked_predictions(candidate, events, now)
            if self.route is not None and candidate.name == self.route.candidate:
                predictions = self._routed(predictions, events)
            log_failures(predictions, events)
            self.counts.calls[candidate.name] += len(predictions)
            self.counts.predictions += len(predictions)
            self.counts.errors += sum(1 for p in predictions if p.error is not None)
            for p in predictions:
                by_event[p.event_id].append(p)
        published = self._publish(by_event, first)
        items = [dead_letter_item(d) for d in dead]
        for event, record in mapped:
            # Only the first copy of an event in the batch carries the predictions.
            predictions = by_event.pop(event.event_id, [])
            items.append(event_item(event, record.source, record.position, predictions,
                                    published=published.get(event.event_id)))
        # Keyed by the worker and the batch's first position: any partition will do, the
        # recorder needs no order (it recognises each item by its source and position).
        key = f"{self.name} {records[0].position}".encode()
        messages = [(key, message) for message in handoff_messages(items, worker=self.name)]
        self._hand_over(messages)
        c = self.counts
        c.batches += 1
        c.records += len(records)
        c.events += len(mapped)
        c.dead_letters += len(dead)
        c.handed_over += len(items)

    def _hand_over(self, messages: list[tuple[bytes, bytes]]) -> None:
        """Write the batch's messages, again and again while the broker does not take them:
        its offsets are committed only after. A worker told to stop meanwhile gives up
        (:class:`Stopped`), and the records are read again by whoever holds them next."""
        delay = 0.5
        while True:
            try:
                self.writer.write_all(messages)
                return
            except SinkError as exc:
                log.warning("records not handed over; trying again", error=str(exc),
                            messages=len(messages), retry_in_s=delay)
            if self.stopping.wait(delay):
                raise Stopped("stopped with a batch not handed over; its records will be "
                              "read again")
            delay = min(delay * 2, 10.0)

    def _routed(self, predictions: list[Prediction], events: list[Event]) -> list[Prediction]:
        """The rolled-out candidate's predictions, live or shadow by the state last heard."""
        route = self.route
        assert route is not None
        state = route.follower.current(route.rollout)
        if state is None or not self._may_act(state):
            held = state is not None and state.live
            self.counts.held += len(predictions) if held else 0
            step = state.step if state is not None else None
            return [replace(p, mode=Mode.SHADOW, step=step) for p in predictions]
        router = router_for(route.plan, state)
        keys = {e.event_id: e.route for e in events}
        routed = []
        for p in predictions:
            chosen = router.route(keys[p.event_id])
            routed.append(replace(p, mode=chosen.mode, review=chosen.review, step=state.step))
        return routed

    def _may_act(self, state: RolloutState) -> bool:
        route = self.route
        assert route is not None
        return (state.candidate == route.candidate and state.version == route.version
                and route.follower.live_allowed(route.rollout))

    def _publish(self, by_event: dict[str, list[Prediction]],
                 events: dict[str, Event]) -> dict[str, Published]:
        """Publish the usable live decisions of tier ``auto``; returns those the sink took.

        The state is checked again right before: a rollback heard while the candidate
        was called stops them here."""
        route = self.route
        if route is None:
            return {}
        state = route.follower.current(route.rollout)
        live = [p for ps in by_event.values() for p in ps
                if p.candidate == route.candidate and p.mode is Mode.LIVE]
        self.counts.live += len(live)
        if not live or state is None or not state.live or not self._may_act(state):
            return {}
        percent = route.plan.steps[min(state.step, route.plan.last)].percent
        decisions = []
        for p in live:
            if p.error is not None or p.abstained or p.violations or p.step != state.step:
                continue
            assessed = route.policy.assess(p.output, p.confidence)
            if effective(assessed.tier, state.fallen) is not Tier.AUTO:
                continue  # proposals and people's cases: the recorder's to send
            decisions.append(Decision.of(p, events[p.event_id], rollout=route.rollout,
                                         step=state.step, percent=percent))
        if not decisions:
            return {}
        try:
            route.sink.publish(decisions)
        except SinkError as exc:
            log.warning("live decisions not published; the recorder's outbox has them",
                        pending=len(decisions), error=str(exc))
            return {}
        at = self.now()
        self.counts.published += len(decisions)
        return {d.event_id: Published(d.event_id, d.candidate, d.version, at)
                for d in decisions}
