"""What was observed: the rollout's current step and status, and how it may change.

Every change is a :class:`Transition` made by :func:`transition`, a pure
function that refuses unsafe or meaningless moves with :class:`Refused`. The
audit trail (``rollout/audit.py``) stores each one with its evidence.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from shadow.config.rollout import RolloutSpec
from shadow.core.errors import ShadowError


class RolloutError(ShadowError):
    """Root of the rollout's errors."""


class Refused(RolloutError):
    """A command that would make an unsafe or meaningless transition; nothing changed."""


class Status(enum.StrEnum):
    PROGRESSING = "progressing"
    """Gates are evaluated; passing ones promote (or ask for approval)."""
    AWAITING_APPROVAL = "awaiting_approval"
    """Gates passed at a step that needs a person's ``promote``."""
    PAUSED = "paused"
    """A person stopped promotion; traffic stays at the step's percent, rollback stays armed."""
    PROMOTED = "promoted"
    """At the last step: the rollout is complete; rollback stays armed."""
    ROLLED_BACK = "rolled_back"
    """Back to shadow after a breach or a person's rollback; needs an explicit restart."""
    ABORTED = "aborted"
    """Given up; shadow only, needs an explicit restart."""


class Action(enum.StrEnum):
    START = "start"
    PROMOTE = "promote"
    AWAIT_APPROVAL = "await_approval"
    PAUSE = "pause"
    RESUME = "resume"
    ROLLBACK = "rollback"
    RESTART = "restart"
    ABORT = "abort"
    TIER_FALLBACK = "tier_fallback"
    """A tier's agreement broke: its decisions go to the next more careful tier."""


CONTROLLER = "controller"
"""The actor of automatic transitions; people act under their own name."""

_ENDED = (Status.ROLLED_BACK, Status.ABORTED)


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutState:
    rollout: str
    candidate: str
    version: str | None
    step: int
    percent: float
    status: Status
    step_started_at: datetime
    updated_at: datetime
    revision: int = 0
    """Counts transitions; the audit record of each carries it."""
    fallen: tuple[str, ...] = ()
    """Tiers whose agreement broke in this rollout (``auto``, ``review``), in the order
    they fell; their decisions take the next more careful tier that has not fallen, until
    a person restarts the rollout."""

    @property
    def live(self) -> bool:
        return self.percent > 0 and self.status not in _ENDED


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """One audited change of state."""

    action: Action
    actor: str
    reason: str
    at: datetime
    before: RolloutState | None
    after: RolloutState
    evidence: dict[str, Any] = field(default_factory=dict)
    token: str | None = None
    """The name of the control API token a person's command came with; ``None`` when it
    came without one (a command on the store file, or the controller's own)."""


def initial(plan: RolloutSpec, *, rollout: str, candidate: str, version: str | None,
            at: datetime, actor: str = CONTROLLER,
            reason: str = "rollout configured") -> Transition:
    state = RolloutState(rollout=rollout, candidate=candidate, version=version, step=0,
                         percent=plan.steps[0].percent, status=Status.PROGRESSING,
                         step_started_at=at, updated_at=at, revision=1)
    return Transition(action=Action.START, actor=actor, reason=reason, at=at, before=None,
                      after=state)


def transition(
    state: RolloutState, action: Action, plan: RolloutSpec, *, actor: str, reason: str,
    at: datetime, evidence: dict[str, Any] | None = None, to_step: int | None = None,
    new_candidate: bool = False, tier: str | None = None,
) -> Transition:
    """The transition ``action`` makes from ``state``.

    ``to_step`` is for promotions that skip ahead (``promote --full``);
    ``new_candidate`` restarts even a rollout at its start (its evidence was
    about another candidate). ``tier`` is the tier a ``tier_fallback`` takes back.

    Raises:
        Refused: the action makes no sense, or is unsafe, in this state.
    """
    if action is Action.TIER_FALLBACK:
        _check_fallback(state, tier)
        assert tier is not None  # checked
        after = replace(state, fallen=(*state.fallen, tier))
    else:
        if not (action is Action.RESTART and new_candidate):
            _check(state, action, plan, to_step)
        after = _apply(state, action, plan, at, to_step)
    return Transition(action=action, actor=actor, reason=reason, at=at, before=state,
                      after=replace(after, updated_at=at, revision=state.revision + 1),
                      evidence=evidence or {})


def _check(state: RolloutState, action: Action, plan: RolloutSpec, to_step: int | None) -> None:
    status = state.status
    where = f"rollout {state.rollout!r} is {status.value} at step {state.step}"
    if action is Action.PROMOTE:
        if status in _ENDED:
            raise Refused(f"{where}: restart it first (shadow rollout restart), "
                          f"then it must pass its gates again")
        if status is Status.PAUSED:
            raise Refused(f"{where}: resume it first")
        if state.step >= plan.last:
            raise Refused(f"{where}: it is already at the last step ({state.percent:g} %)")
        if to_step is not None and not state.step < to_step <= plan.last:
            raise Refused(f"{where}: cannot promote to step {to_step}")
    elif action is Action.AWAIT_APPROVAL and status is not Status.PROGRESSING:
        raise Refused(f"{where}: only a progressing rollout waits for approval")
    elif action is Action.PAUSE and status in (Status.PAUSED, *_ENDED):
        raise Refused(f"{where}: nothing to pause" if status in _ENDED else f"{where} already")
    elif action is Action.RESUME and status is not Status.PAUSED:
        raise Refused(f"{where}: only a paused rollout can be resumed")
    elif action is Action.ROLLBACK:
        if status in _ENDED:
            raise Refused(f"{where}: nothing is live")
        if state.percent == 0:
            raise Refused(f"{where}: nothing is live (shadow mode); pause it to stop promotion")
    elif action is Action.RESTART and status is Status.PROGRESSING and state.step == 0:
        raise Refused(f"{where}: it is already at the start")
    elif action is Action.ABORT and status is Status.ABORTED:
        raise Refused(f"{where} already")
    elif action is Action.START:
        raise Refused(f"{where}: it has started already")


_FALLIBLE = ("auto", "review")
"""The tiers that can fall back; ``human`` is where every fallback ends."""


def _check_fallback(state: RolloutState, tier: str | None) -> None:
    where = f"rollout {state.rollout!r} is {state.status.value} at step {state.step}"
    if tier not in _FALLIBLE:
        raise Refused(f"{where}: only tiers auto and review fall back, not {tier!r}")
    if tier in state.fallen:
        raise Refused(f"{where}: tier {tier} has fallen back already")
    if not state.live:
        raise Refused(f"{where}: nothing is live")


def _apply(state: RolloutState, action: Action, plan: RolloutSpec, at: datetime,
           to_step: int | None) -> RolloutState:
    if action is Action.PROMOTE:
        step = to_step if to_step is not None else state.step + 1
        status = Status.PROMOTED if step == plan.last else Status.PROGRESSING
        return replace(state, step=step, percent=plan.steps[step].percent, status=status,
                       step_started_at=at)
    if action is Action.AWAIT_APPROVAL:
        return replace(state, status=Status.AWAITING_APPROVAL)
    if action is Action.PAUSE:
        return replace(state, status=Status.PAUSED)
    if action is Action.RESUME:
        status = Status.PROMOTED if state.step == plan.last else Status.PROGRESSING
        return replace(state, status=status)
    if action is Action.ROLLBACK:
        return replace(state, step=0, percent=0.0, status=Status.ROLLED_BACK, step_started_at=at)
    if action is Action.ABORT:
        return replace(state, step=0, percent=0.0, status=Status.ABORTED, step_started_at=at)
    # RESTART: from the first step, with a fresh sequence and every tier back.
    return replace(state, step=0, percent=plan.steps[0].percent, status=Status.PROGRESSING,
                   step_started_at=at, fallen=())
