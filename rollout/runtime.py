"""The rollout inside the pipeline: route each batch, publish live decisions, evaluate.

Live decisions are published from the store, not from memory (an outbox):
a batch's predictions are committed first, then every live decision not yet
published goes to the sink and is marked published. A crash between the two
publishes those decisions again on restart (at-least-once; every message
carries its ``event_id`` so production can drop repeats); none is lost. A
prediction that errored, abstained or violated a hard constraint is never
published: that case stays with the humans (so is one with a malformed action,
which is a violation). A decision whose output proposes actions goes out as an
action request (:class:`connectors.sinks.Decision`): its valid actions and an
``idempotency_key`` a republish after a restart repeats.

Before anything is published, every stored prediction of the candidate is given its
tier (:mod:`rollout.tiers`), in shadow as in live, and the proposals of tier
``review`` are stored (:mod:`rollout.reviews`). Only tier ``auto`` reaches the
action sink; a live proposal goes to the review sink through the same outbox;
tier ``human`` is never published. A proposal a person approved or edited reaches the
action sink through an outbox of its own (:mod:`rollout.verdicts`).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

import orjson
import structlog

from connectors.sinks import Decision, FileSink, Sink, SinkError, WebhookSink
from rollout.controller import Assessment, Controller
from rollout.notify import KafkaNotifier, Notifier, WebhookNotifier
from rollout.outbox import withdraw
from rollout.reviews import Proposal, propose
from rollout.router import Router
from rollout.tier_health import effective
from rollout.tiers import FALLBACK, Policy
from rollout.tiers import Assessment as TierAssessment
from rollout.verdicts import publish_approved
from shadow.candidates import Candidate
from shadow.compare.comparators import Comparator
from shadow.config.rollout import NotifySpec, RolloutSpec, SinkSpec
from shadow.config.tiers import Tier
from shadow.core.errors import ConfigError
from shadow.core.models import Event, Mode, Prediction, utc_now
from shadow.store import reviews
from shadow.store.database import Store

if TYPE_CHECKING:
    from rollout.state_topic import StatePublisher

log = structlog.get_logger(__name__)

_UNPUBLISHED = """
SELECT p.event_id, e.key, p.output, p.review, p.rollout_step, p.predicted_at
FROM predictions p JOIN events e USING (event_id)
WHERE p.candidate = ? AND p.version IS NOT DISTINCT FROM ? AND p.mode = 'live'
  AND p.published_at IS NULL AND p.error_type IS NULL AND NOT p.abstained
  AND p.violations IS NULL AND p.withdrawn_at IS NULL AND p.tier = 'auto'
ORDER BY p.predicted_at, p.event_id
LIMIT ?
"""


class LiveRollout:
    """Routes the rolled-out candidate's predictions and publishes the live ones."""

    def __init__(self, controller: Controller, sink: Sink, *,
                 compare: Callable[[], int], publish_batch: int = 1000,
                 policy: Policy | None = None, review_sink: Sink | None = None) -> None:
        self.controller = controller
        self.sink = sink
        self.compare = compare
        self.publish_batch = publish_batch
        self.policy = policy if policy is not None else Policy()
        """Without one, every usable decision is tier ``auto``."""
        self.review_sink: Sink = review_sink if review_sink is not None else _NoSink.opened()
        self.published = 0
        self.reviewed = 0
        """Approved and edited proposals published to the action sink."""
        self.proposed = 0
        """Live proposals the review sink took."""
        self.live = 0
        self.assessments: deque[Assessment] = deque(maxlen=1000)
        """The latest evaluations (a daemon runs for years: only the newest are kept)."""

    @property
    def batch_limit(self) -> int:
        """The largest batch a replay writes: the gates are evaluated at every
        ``evaluate_every_compared`` labels whatever the batch, but routing changes only
        between batches, so a rollback reaches the routing within this many records."""
        return 10 * self.controller.plan.evaluate_every_compared

    @property
    def store(self) -> Store:
        return self.controller.store

    def route(self, predictions: list[Prediction], events: Sequence[Event]) -> list[Prediction]:
        """Mark the rolled-out candidate's predictions live or shadow, by the current router."""
        router: Router = self.controller.router()
        step = self.controller.state.step
        self.controller.units.note(events, (p.event_id for p in predictions))
        keys = {e.event_id: e.route for e in events}
        candidate, version = self.controller.candidate, self.controller.version
        routed = []
        for p in predictions:
            if p.candidate != candidate or p.version != version:
                routed.append(p)
                continue
            route = router.route(keys[p.event_id])
            if route.mode is Mode.LIVE:
                self.live += 1
            routed.append(replace(p, mode=route.mode, review=route.review, step=step))
        return routed

    def withdraw_handed_over(self) -> int:
        """Withdraw the live decisions candidate workers routed before the rollout's last
        transition and did not publish: a recorder stores them only after the transition,
        which withdrew what was stored by then. Returns how many."""
        c = self.controller
        return withdraw(self.store, c.candidate, c.version, at=c.now(),
                        older_than=c.state.updated_at,
                        reason="routed by a worker before the rollout's last transition")

    def publish_pending(self) -> int:
        """Assess the tiers of new predictions, then publish committed live decisions of
        tier ``auto`` and live proposals not yet published; returns how many decisions
        went to the action sink.

        A sink that refuses leaves them pending for the next call.
        """
        self.assess_pending()
        c = self.controller
        max_age = c.plan.max_decision_age
        if max_age is not None:
            withdraw(self.store, c.candidate, c.version, reason="older than max_decision_age",
                     at=c.now(), older_than=c.now() - max_age)
        sent = self._publish_decisions()
        self.proposed += self._publish_proposals()
        self.reviewed += publish_approved(self.store, self.sink, rollout=c.rollout, now=c.now,
                                          batch=self.publish_batch)
        return sent

    def assess_pending(self) -> int:
        """Give every stored prediction of the candidate without a tier its tier, and
        store the proposals of tier ``review``; returns how many were assessed."""
        c, done = self.controller, 0
        if self.policy.all_auto and Tier.AUTO.value not in c.state.fallen:
            return reviews.assess_all_auto(self.store, c.candidate, c.version)
        while True:
            rows = reviews.unassessed(self.store, c.candidate, c.version, self.publish_batch)
            if not rows:
                return done
            assessed = []
            for row in rows:
                a = self.policy.assess(row.output, row.confidence, error=row.error,
                                       abstained=row.abstained, violations=row.violations)
                taken = effective(a.tier, c.state.fallen)
                if taken is not a.tier:
                    a = TierAssessment(taken, FALLBACK)
                proposal = None
                if a.tier is Tier.REVIEW:
                    step = c.plan.steps[min(row.step or 0, c.plan.last)]
                    proposal = propose(row, a, self.policy, rollout=c.rollout,
                                       candidate=c.candidate, version=c.version,
                                       percent=step.percent if row.live else 0.0)
                assessed.append(reviews.Assessed(row.event_id, a.tier.value, a.rule, proposal))
            reviews.record_assessed(self.store, c.candidate, c.version, assessed)
            done += len(rows)

    def _publish_proposals(self) -> int:
        c, sent = self.controller, 0
        while True:
            rows = reviews.unpublished(self.store, c.candidate, c.version, c.rollout,
                                       self.publish_batch)
            if not rows:
                return sent
            proposals = [Proposal.stored(review_id, body) for review_id, body in rows]
            try:
                self.review_sink.publish(proposals)
            except SinkError as exc:
                log.warning("proposals not published; retrying later",
                            pending=len(proposals), error=str(exc))
                return sent
            reviews.mark_published(self.store, [p.review_id for p in proposals], c.now())
            sent += len(proposals)

    def _publish_decisions(self) -> int:
        sent = 0
        c = self.controller
        while True:
            rows = self.store.db.execute(
                _UNPUBLISHED, [c.candidate, c.version, self.publish_batch]).fetchall()
            if not rows:
                return sent
            decisions = [
                Decision(event_id=r[0], key=r[1], candidate=c.candidate, version=c.version,
                         output=orjson.loads(r[2]), rollout=c.rollout, step=r[4] or 0,
                         percent=c.plan.steps[min(r[4] or 0, c.plan.last)].percent,
                         review=r[3], predicted_at=r[5])
                for r in rows
            ]
            try:
                self.sink.publish(decisions)
            except SinkError as exc:
                log.warning("live decisions not published; retrying later",
                            pending=len(decisions), error=str(exc))
                return sent
            self._mark_published([d.event_id for d in decisions], c.now())
            sent += len(decisions)
            self.published += len(decisions)

    def _mark_published(self, event_ids: list[str], at: datetime) -> None:
        c = self.controller
        self.store.mark_published([(e, c.candidate, c.version, at) for e in event_ids])

    def after_batch(self, *, force: bool = False) -> Assessment | None:
        """Publish, compare what can be compared, and let the controller act at every
        ``evaluate_every_compared`` labels the batch brought, in the order they arrived
        (and once more when forced).

        Returns the last assessment, or ``None`` when no evaluation was due.
        """
        self.publish_pending()
        self.compare()
        return self.evaluate(force=force)

    def evaluate(self, *, force: bool = False) -> Assessment | None:
        """Let the controller act at every ``evaluate_every_compared`` new labels, in the
        order they arrived, until none wait (at least once when forced)."""
        controller, last = self.controller, None
        while True:
            progress = controller.progress()  # one sync serves the check and the evaluation
            if not (controller.due(progress) or (force and last is None)):
                return last
            last = controller.evaluate(progress)
            self.assessments.append(last)


def build_sink(spec: SinkSpec) -> Sink:
    """The sink a configuration names; nothing connects until it is opened."""
    if spec.kind == "file":
        assert spec.path is not None
        return FileSink(spec.path)
    if spec.kind == "webhook":
        assert spec.url is not None
        return WebhookSink(spec.url, secret=_secret(spec))
    from connectors.kafka import KafkaSink

    assert spec.bootstrap is not None and spec.topic is not None
    return KafkaSink(bootstrap=spec.bootstrap, topic=spec.topic)


def build_notifiers(specs: Sequence[NotifySpec]) -> list[Notifier]:
    notifiers: list[Notifier] = []
    for spec in specs:
        if spec.kind == "webhook":
            assert spec.url is not None
            notifiers.append(WebhookNotifier(spec.url, secret=_secret(spec)))
        else:
            assert spec.bootstrap is not None and spec.topic is not None
            notifiers.append(KafkaNotifier(spec.bootstrap, spec.topic))
    return notifiers


def _secret(spec: SinkSpec | NotifySpec) -> str | None:
    if spec.secret_env is None:
        return None
    value = os.environ.get(spec.secret_env)
    if not value:
        raise ConfigError(f"rollout: environment variable {spec.secret_env} (secret_env) is "
                          f"not set")
    return value


def open_rollout(
    spec: RolloutSpec, store: Store, candidates: Sequence[Candidate], comparator: Comparator,
    opened: ExitStack, *, now: Callable[[], datetime] = utc_now,
) -> LiveRollout:
    """Wire the configured rollout to this run: its controller, sink and notifiers.

    Raises:
        ConfigError: the rollout names no candidate that is configured.
    """
    candidate = rolled_out(spec, candidates)
    controller = Controller(
        store, spec, rollout=spec.name or candidate.name, candidate=candidate.name,
        version=candidate.version, comparator=comparator.name,
        notifiers=[opened.enter_context(n) for n in build_notifiers(spec.notify)], now=now,
        state_topic=_state_publisher(spec, opened))
    controller.sync()
    sink = opened.enter_context(build_sink(spec.sink)) if spec.sink else _NoSink()
    review_sink = opened.enter_context(
        build_sink(spec.review_sink) if spec.review_sink else _NoSink())

    def compare_now() -> int:
        from shadow.compare.step import compare

        return compare(store, comparator, now=now)

    return LiveRollout(controller, sink, compare=compare_now, policy=Policy(spec.tiers),
                       review_sink=review_sink)


def _state_publisher(spec: RolloutSpec, opened: ExitStack) -> StatePublisher | None:
    """The publisher of ``rollout.state_topic``, started (it connects on its first message).

    Its messages carry the wall-clock time they were published, whatever clock the
    controller runs on."""
    if spec.state_topic is None:
        return None
    from rollout.state_topic import StatePublisher  # imports kafka-python: only when used

    return opened.enter_context(StatePublisher.from_spec(spec.state_topic))


def rolled_out(spec: RolloutSpec, candidates: Sequence[Candidate]) -> Candidate:
    if spec.candidate is None:
        if len(candidates) != 1:
            raise ConfigError("rollout.candidate: several candidates are configured; name the "
                              "one whose output is acted on")
        return candidates[0]
    for candidate in candidates:
        if candidate.name == spec.candidate:
            return candidate
    names = sorted(c.name for c in candidates)
    raise ConfigError(f"rollout.candidate: no candidate named {spec.candidate!r}; expected "
                      f"one of {names}")


class _NoSink(Sink):
    """A shadow-only plan has no sink; its router never routes anything live."""

    name = "none"

    @classmethod
    def opened(cls) -> _NoSink:
        sink = cls()
        sink.open()
        return sink

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _publish(self, decisions: Sequence[Decision]) -> None:
        raise SinkError(f"{len(decisions)} live decisions but no sink is configured")
