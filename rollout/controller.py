"""The controller: reacts to gate phases by moving the rollout, and audits every move.

It owns no statistics (``rollout/gates.py``) and no SQL (``rollout/measure.py``,
``rollout/audit.py``). Each :meth:`Controller.evaluate` measures the current
step, asks the rollback gate first (while anything is live) and then the
promotion gate, stores both evaluations, and makes at most one transition.
The router it hands out reflects every transition at once, so a rollback
takes effect for the very next routed event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from rollout import audit
from rollout.gates import Evaluation, Phase, StepStats, detector, promotion, rollback
from rollout.measure import measure
from rollout.notify import Announcement, Notifier
from rollout.outbox import withdraw
from rollout.router import Router, router_for
from rollout.state import (
    CONTROLLER,
    Action,
    Refused,
    RolloutState,
    Status,
    Transition,
    initial,
    transition,
)
from rollout.statistics import Cusum
from rollout.tier_health import TierHealth, effective, tier_health
from rollout.unit_store import later_disagreements
from rollout.units import Independence, LabelDelay, Progress, Units
from shadow.config.rollout import RolloutSpec
from shadow.config.tiers import Tier
from shadow.core.models import utc_now
from shadow.store.database import Store

if TYPE_CHECKING:  # kafka-python is imported only where a state topic is configured
    from rollout.state_topic import StatePublisher

log = structlog.get_logger(__name__)

# How each interface says "promote although the gates have not passed", for the refusal to
# name: the command line's option and the control API's field.
FORCE_OPTION = "--force"
FORCE_FIELD = '"force": true'


@dataclass(frozen=True, slots=True)
class Assessment:
    """What one evaluation found and did."""

    state: RolloutState
    promotion: Evaluation | None = None
    rollback: Evaluation | None = None
    transition: Transition | None = None
    warnings: tuple[str, ...] = field(default=())
    stats: StepStats | None = field(default=None, repr=False)
    delays: tuple[LabelDelay, ...] = field(default=(), repr=False)
    """Label delays of the step's units by verdict."""


@dataclass(frozen=True, slots=True)
class Detection:
    """Whether the rollback detector gets labels fast enough to matter."""

    per_day: float
    """Independent labels per day in the current step."""
    needed: float
    """Mean independent labels from a drop to the degraded level until the alarm."""
    in_time: bool
    """Whether ``needed`` labels arrive within ``rollback.detect_within``."""


def _counted(stats: StepStats, keep: int = 200) -> dict[str, Any]:
    """The labels the detector counted in this evaluation, up to the alarm (the last
    ``keep`` of them by key), for the audit trail."""
    fed = list(stats.fed)
    alarm = stats.detector.alarmed_at
    return {"labels_seen": stats.detector.seen, "alarmed_at": alarm,
            "keys": [k for k, _ in fed[-keep:]],
            "disagreed": [k for k, agreed in fed[-keep:] if not agreed]}


def _late_disagreements(delays: tuple[LabelDelay, ...]) -> list[str]:
    later = later_disagreements(delays)
    if later is None:
        return []
    disagreed, agreed = later
    return [f"disagreements are labelled later than agreements (median "
            f"{_hours(disagreed.median)} against {_hours(agreed.median)}): keys younger than "
            f"the label window are not judged, and unlabelled older ones count against the "
            f"candidate, so this cannot flatter it, but it slows promotion"]


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:g} d" if hours >= 48 else f"{hours:.3g} h"


class Controller:
    """Drives one rollout of one candidate over one store."""

    def __init__(
        self, store: Store, plan: RolloutSpec, *, rollout: str, candidate: str,
        version: str | None, comparator: str, notifiers: Sequence[Notifier] = (),
        now: Callable[[], datetime] = utc_now, state_topic: StatePublisher | None = None,
    ) -> None:
        self.store, self.plan = store, plan
        self.rollout, self.candidate, self.version = rollout, candidate, version
        self.comparator = comparator
        self.notifiers = list(notifiers)
        self.now = now
        self.state_topic = state_topic
        """Where every state this controller holds is published for other processes."""
        self.detector: Cusum = detector(plan)
        self.units = Units(store, plan, rollout=rollout, comparator=comparator)
        self._state: RolloutState | None = None
        self._router: Router | None = None

    # -- state ----------------------------------------------------------------

    @property
    def state(self) -> RolloutState:
        if self._state is None:
            self._state = self.sync()
        return self._state

    def attach(self) -> RolloutState | None:
        """Load the stored state without writing anything; ``None`` when never started."""
        state = audit.load(self.store, self.rollout)
        if state is not None:
            self._set(state)
        return state

    def sync(self) -> RolloutState:
        """Load the stored state, starting the rollout when there is none.

        A candidate version other than the one being rolled out has passed no
        gate: the rollout restarts from shadow for it.
        """
        now = self.now()
        state = audit.load(self.store, self.rollout)
        if state is None:
            self._commit(initial(self.plan, rollout=self.rollout, candidate=self.candidate,
                                 version=self.version, at=now))
        elif (state.candidate, state.version) != (self.candidate, self.version) \
                or state.step > self.plan.last:
            reason = (f"plan has {len(self.plan.steps)} steps, the rollout was at step "
                      f"{state.step}" if state.step > self.plan.last else
                      f"candidate changed from {state.candidate} {state.version} to "
                      f"{self.candidate} {self.version}")
            t = transition(state, Action.RESTART, self.plan, actor=CONTROLLER, reason=reason,
                           at=now, new_candidate=True)
            self._commit(t, replace_candidate=True)
        else:
            self._set(state)
        assert self._state is not None
        return self._state

    def router(self) -> Router:
        """The router for the current state; a new one after every transition."""
        if self._router is None:
            self._router = router_for(self.plan, self.state)
        return self._router

    def _set(self, state: RolloutState) -> None:
        self._state, self._router = state, None
        # Every state held, not only those of transitions (which come here right after
        # audit.save): the state found at start, or written by another process, is
        # then heartbeaten too. Never blocks, never raises.
        if self.state_topic is not None:
            self.state_topic.publish(state)

    # -- evaluation -------------------------------------------------------------

    def progress(self) -> Progress:
        """Where the step's units stand, brought up to date as far as the next evaluation
        (in memory only over a read-only store): labels are taken in up to the next
        ``evaluate_every_compared``; any beyond it wait for the sync after that evaluation."""
        current = self.units.current(self.state)
        room = self.plan.evaluate_every_compared - (current.labels - current.evaluated_labels)
        return self.units.sync(self.state, max_labels=max(room, 0))

    def due(self, progress: Progress | None = None) -> bool:
        """Whether ``evaluate_every_compared`` keys were labelled since the last evaluation."""
        p = progress if progress is not None else self.progress()
        return p.labels - p.evaluated_labels >= self.plan.evaluate_every_compared

    def measure(self, progress: Progress | None = None) -> StepStats:
        return measure(self.store, self.state, self.units,
                       progress if progress is not None else self.progress(), self.detector,
                       now=self.now(), window=self.plan.rollback.window)

    def assess(self, progress: Progress | None = None) -> Assessment:
        """Measure and judge the current step; records no decision, changes nothing
        (it brings the step's units up to date, which any later evaluation would do)."""
        state = self.state
        stats = self.measure(progress)
        back = forward = None
        if state.live:
            back = rollback(stats, self.plan.rollback, self.detector)
        if state.step < self.plan.last and state.status not in (Status.ROLLED_BACK,
                                                                 Status.ABORTED):
            forward = promotion(stats, self.plan, self.plan.steps[state.step])
        delays = self.units.label_delays()
        return Assessment(state, forward, back, None, self.warnings(stats, delays), stats,
                          delays)

    def evaluate(self, progress: Progress | None = None) -> Assessment:
        """Assess, store the evaluations and the detector's state, and make at most one
        transition; ``progress`` is a sync just made (else one is made here)."""
        progress = progress if progress is not None else self.progress()
        a = self.assess(progress)
        state, now = a.state, self.now()
        assert a.stats is not None
        self.units.save(replace(progress, detector=a.stats.detector, fed=progress.labels,
                                evaluated_labels=progress.labels))
        if a.rollback is not None:
            audit.record_evaluation(self.store, state, "rollback", a.rollback, now)
        if a.promotion is not None:
            audit.record_evaluation(self.store, state, "promotion", a.promotion, now)
        t = None
        if a.rollback is not None and a.rollback.phase is Phase.FAIL:
            reason = "; ".join(c.detail for c in a.rollback.failed())
            t = self._move(Action.ROLLBACK, CONTROLLER, f"automatic: {reason}",
                           {**a.rollback.as_dict(), "counted": _counted(a.stats)})
        elif a.promotion is not None and a.promotion.phase is Phase.PASS \
                and state.status is Status.PROGRESSING:
            if self.plan.steps[state.step].approval:
                t = self._move(Action.AWAIT_APPROVAL, CONTROLLER,
                               "gates passed; this step waits for a person's promote",
                               a.promotion.as_dict())
            else:
                t = self._move(Action.PROMOTE, CONTROLLER, "gates passed",
                               a.promotion.as_dict())
        if t is None and self.plan.tiers is not None and self.state.live:
            t = self._tier_fallback()
        return replace(a, state=self.state, transition=t)

    def tier_health(self) -> dict[Tier, TierHealth]:
        """Each watched tier's units of the current step and its detector
        (:mod:`rollout.tier_health`)."""
        return tier_health(self.store, candidate=self.candidate, version=self.version,
                           comparator=self.comparator, since=self.state.step_started_at,
                           detector=self.detector, independence=Independence.of(self.plan))

    def _tier_fallback(self) -> Transition | None:
        """Take back the first watched tier whose detector alarmed, if one has not fallen."""
        fallen = self.state.fallen
        for tier, health in self.tier_health().items():
            if not health.alarmed or tier.value in fallen:
                continue
            to = effective(tier, (*fallen, tier.value))
            reason = (f"automatic: tier {tier.value} agreed on {health.agreed} of "
                      f"{health.units} units and its detector reached {health.threshold}; "
                      f"its decisions now go to tier {to.value}")
            return self._move(Action.TIER_FALLBACK, CONTROLLER, reason,
                              {**health.as_dict(), "to": to.value}, tier=tier.value)
        return None

    def warnings(self, stats: StepStats,
                 delays: tuple[LabelDelay, ...] = ()) -> tuple[str, ...]:
        """What an operator should know about the evidence itself."""
        found = []
        spec = self.plan.rollback
        healthy, degraded = spec.levels(self.plan.gates.agreement)
        detection = self.detection(stats)
        if detection is not None and not detection.in_time:
            found.append(
                f"independent labels arrive at {detection.per_day:.1f} keys per day; catching "
                f"a drop to {degraded:.0%} agreement takes about {detection.needed:.0f}, so "
                f"not within {_hours(spec.detect_within)}: raise the holdout or review share, "
                f"or declare an outcome source independent")
        if stats.compared >= 200 and stats.agreed / stats.compared < healthy:
            found.append(
                f"measured agreement {stats.agreed / stats.compared:.1%} is below the "
                f"rollback detector's healthy level {healthy:.0%}: expect needless "
                f"rollbacks, or set rollout.rollback.healthy")
        found.extend(_late_disagreements(delays))
        return tuple(found)

    def detection(self, stats: StepStats) -> Detection | None:
        """How fast independent labels arrive in a live step, and whether that catches
        the degraded level within ``rollback.detect_within``; ``None`` in shadow."""
        days = stats.elapsed.total_seconds() / 86_400
        if not self.state.live or days <= 0:
            return None
        per_day = stats.detector.seen / days
        _, degraded = self.plan.rollback.levels(self.plan.gates.agreement)
        needed = self.detector.mean_delay(degraded)
        within = self.plan.rollback.detect_within.total_seconds() / 86_400
        return Detection(per_day=per_day, needed=needed, in_time=per_day * within >= needed)

    # -- commands -----------------------------------------------------------------

    def command(self, action: Action, *, actor: str, reason: str,
                to_step: int | None = None, force: bool = False,
                token: str | None = None, forcing: str = FORCE_OPTION) -> Transition:
        """A person's promote, pause, resume, rollback, restart or abort.

        A person promotes without ``force`` only what has earned it: a step
        awaiting approval, or one whose gates pass right now. ``actor`` is who
        the person says they are; ``token`` the name of the API token the
        command came with, if any. The audit record keeps both. ``forcing`` is
        how the person's interface says ``force`` (:data:`FORCE_OPTION`,
        :data:`FORCE_FIELD`), named when a promotion is refused.

        Raises:
            Refused: the transition is unsafe or meaningless now; nothing changed.
        """
        if action in (Action.START, Action.AWAIT_APPROVAL, Action.TIER_FALLBACK):
            raise Refused(f"{action.value} is the controller's to make")
        if not actor or actor == CONTROLLER:
            raise Refused("a command needs the name of the person giving it")
        if not reason.strip():
            raise Refused("a command needs a reason, for the audit trail")
        self._set(audit.load(self.store, self.rollout) or self.state)  # another writer's change
        evidence: dict[str, Any] = {}
        if action is Action.PROMOTE:
            evidence = self._earned(force, forcing)
        return self._move(action, actor, reason, evidence, to_step=to_step, token=token)

    def hold(self, reason: str, evidence: dict[str, Any]) -> Transition | None:
        """Pause promotion for a person to look (drift, say); traffic and rollback stay.

        Does nothing when the rollout is already paused or has ended.
        """
        if self.state.status not in (Status.PROGRESSING, Status.AWAITING_APPROVAL,
                                     Status.PROMOTED):
            return None
        return self._move(Action.PAUSE, CONTROLLER, reason, evidence)

    def _earned(self, force: bool, forcing: str) -> dict[str, Any]:
        state = self.state
        forward = self.assess().promotion
        evidence = {"promotion": forward.as_dict() if forward else None, "forced": force}
        if force or state.status is Status.AWAITING_APPROVAL or forward is None \
                or forward.phase is Phase.PASS:
            return evidence
        unmet = [c for c in forward.checks if c.phase is not Phase.PASS]
        raise Refused(
            f"rollout {state.rollout!r} has not earned promotion from step {state.step}: "
            + "; ".join(f"{c.name}: {c.detail}" for c in unmet)
            + f" (give {forcing} to promote anyway; it is audited as forced)")

    def _move(self, action: Action, actor: str, reason: str, evidence: dict[str, Any],
              to_step: int | None = None, token: str | None = None,
              tier: str | None = None) -> Transition:
        t = transition(self.state, action, self.plan, actor=actor, reason=reason,
                       at=self.now(), evidence=evidence, to_step=to_step, tier=tier)
        if token is not None:
            t = replace(t, token=token)
        self._commit(t)
        return t

    def _commit(self, t: Transition, *, replace_candidate: bool = False) -> None:
        after = t.after
        if replace_candidate:
            after = replace(after, candidate=self.candidate, version=self.version)
            t = Transition(action=t.action, actor=t.actor, reason=t.reason, at=t.at,
                           before=t.before, after=after, evidence=t.evidence, token=t.token)
        audit.save(self.store, t)
        before = t.before
        if before is not None and before.live and (not after.live or replace_candidate):
            withdraw(self.store, before.candidate, before.version, at=t.at,
                     reason=f"{t.action.value}: the rollout stopped acting")
        elif t.action is Action.TIER_FALLBACK:
            fell = after.fallen[-1]
            withdraw(self.store, after.candidate, after.version, at=t.at, tier=fell,
                     reason=f"tier_fallback: tier {fell} fell back")
        self._set(after)
        log.info("rollout transition", rollout=self.rollout, action=t.action.value,
                 actor=t.actor, caller=t.token, step=after.step, percent=after.percent,
                 status=after.status.value, reason=t.reason)
        self._announce(t)

    def _announce(self, t: Transition) -> None:
        if not self.notifiers:
            return
        before = t.before
        announcement = Announcement(
            rollout=self.rollout, action=t.action.value, actor=t.actor, reason=t.reason,
            from_step=before.step if before else 0, to_step=t.after.step,
            percent=t.after.percent, status=t.after.status.value, at=t.at,
            evidence=t.evidence)
        for notifier in self.notifiers:
            notifier.announce(announcement)
