"""Rollout state: it survives restarts at every status, and commands refuse what makes no sense."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollout import audit
from rollout.controller import Controller
from rollout.state import Action, Refused, Status
from shadow.config.rollout import RolloutSpec
from tests.clock import SteppingClock

T0 = datetime(2026, 1, 5, tzinfo=UTC)
PLAN = RolloutSpec.model_validate({
    "steps": [{"percent": 0}, {"percent": 5}, {"percent": 25}, {"percent": 100}],
    "sink": {"kind": "file", "path": "d.jsonl"}, "holdout": 0.1,
})


def ticking() -> SteppingClock:
    return SteppingClock(T0, timedelta(minutes=1))


def controller(db: Path, clock: SteppingClock, version: str = "1") -> Controller:
    from shadow.store.database import Store

    store = Store(db)
    store.open()
    return Controller(store, PLAN, rollout="triage", candidate="triage", version=version,
                      comparator="exact", now=clock)


def person(c: Controller, *actions: Action, to_step: int | None = None) -> None:
    for action in actions:
        c.command(action, actor="dana", reason=f"test {action.value}", force=True,
                  to_step=to_step)


def await_approval(c: Controller) -> None:
    c._move(Action.AWAIT_APPROVAL, "controller", "gates passed", {})


GET_TO: dict[Status, Callable[[Controller], None]] = {
    Status.PROGRESSING: lambda c: person(c, Action.PROMOTE),
    Status.AWAITING_APPROVAL: await_approval,
    Status.PAUSED: lambda c: person(c, Action.PROMOTE, Action.PAUSE),
    Status.PROMOTED: lambda c: person(c, Action.PROMOTE, to_step=3),
    Status.ROLLED_BACK: lambda c: person(c, Action.PROMOTE, Action.ROLLBACK),
    Status.ABORTED: lambda c: person(c, Action.ABORT),
}


@pytest.mark.parametrize("status", list(Status))
def test_the_state_survives_a_restart_at_every_status(tmp_path: Path, status: Status) -> None:
    clock = ticking()
    first = controller(tmp_path / "s.duckdb", clock)
    first.sync()
    GET_TO[status](first)
    before = first.state
    assert before.status is status
    live_share = first.router().live_share
    first.store.close()

    again = controller(tmp_path / "s.duckdb", clock)
    try:
        assert again.sync() == before
        assert again.router().live_share == live_share
        expected = {Status.ROLLED_BACK: 0.0, Status.ABORTED: 0.0}.get(
            status, PLAN.steps[before.step].percent / 100 * 0.9)
        assert again.router().live_share == pytest.approx(expected)
        history = audit.history(again.store, "triage")
        assert [r.revision for r in history] == list(range(1, before.revision + 1))
        assert history[-1].to_status is status
    finally:
        again.store.close()


def test_a_new_candidate_version_restarts_from_shadow(tmp_path: Path) -> None:
    clock = ticking()
    first = controller(tmp_path / "s.duckdb", clock)
    first.sync()
    person(first, Action.PROMOTE, to_step=2)
    first.store.close()
    second = controller(tmp_path / "s.duckdb", clock, version="2")
    try:
        state = second.sync()
        assert (state.step, state.percent, state.version) == (0, 0, "2")
        last = audit.history(second.store, "triage")[-1]
        assert last.action is Action.RESTART and "1 to triage 2" in last.reason
    finally:
        second.store.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Controller:
    c = controller(tmp_path / "s.duckdb", ticking())
    c.sync()
    return c


P, R, A = Action.PROMOTE, Action.ROLLBACK, Action.ABORT
REFUSALS: list[tuple[Callable[[Controller], None], Action, int | None, str]] = [
    (lambda c: person(c, P, R), P, None, "restart it first"),
    (lambda c: person(c, A), P, None, "restart it first"),
    (lambda c: person(c, Action.PAUSE), P, None, "resume it first"),
    (lambda c: person(c, P, to_step=3), P, None, "already at the last step"),
    (lambda c: person(c, Action.PAUSE), Action.PAUSE, None, "already"),
    (lambda c: None, Action.RESUME, None, "only a paused rollout"),
    (lambda c: None, R, None, "nothing is live"),
    (lambda c: person(c, P, R), R, None, "nothing is live"),
    (lambda c: person(c, P, R), Action.PAUSE, None, "nothing to pause"),
    (lambda c: None, Action.RESTART, None, "already at the start"),
    (lambda c: person(c, A), A, None, "already"),
    (lambda c: None, P, 0, "cannot promote to step 0"),
]


@pytest.mark.parametrize(("setup", "action", "to_step", "message"), REFUSALS)
def test_commands_refuse_meaningless_or_unsafe_transitions(
    fresh: Controller, setup: Callable[[Controller], None], action: Action,
    to_step: int | None, message: str,
) -> None:
    setup(fresh)
    before = fresh.state
    with pytest.raises(Refused, match=message):
        person(fresh, action, to_step=to_step)
    assert audit.load(fresh.store, "triage") == before  # nothing changed
    fresh.store.close()


def test_promotion_without_evidence_is_refused_unless_forced(fresh: Controller) -> None:
    with pytest.raises(Refused, match="has not earned promotion.*compared keys: 0 of at least"):
        fresh.command(Action.PROMOTE, actor="dana", reason="looks fine")
    t = fresh.command(Action.PROMOTE, actor="dana", reason="owner signed off", force=True)
    assert t.evidence["forced"] is True and t.after.step == 1
    fresh.store.close()


def test_a_command_needs_a_person_and_a_reason(fresh: Controller) -> None:
    with pytest.raises(Refused, match="name of the person"):
        fresh.command(Action.PAUSE, actor="controller", reason="x")
    with pytest.raises(Refused, match="needs a reason"):
        fresh.command(Action.PAUSE, actor="dana", reason="  ")
    with pytest.raises(Refused, match="controller's to make"):
        fresh.command(Action.AWAIT_APPROVAL, actor="dana", reason="x")
    fresh.store.close()


def test_a_stale_writer_cannot_overwrite_a_newer_state(tmp_path: Path) -> None:
    clock = ticking()
    c = controller(tmp_path / "s.duckdb", clock)
    c.sync()
    stale = c.state
    person(c, Action.PAUSE)
    from rollout.state import transition

    t = transition(stale, Action.PROMOTE, PLAN, actor="eve", reason="x", at=clock())
    with pytest.raises(Refused, match="changed meanwhile"):
        audit.save(c.store, t)
    assert c.store.db.execute("SELECT status FROM rollout_state").fetchall() == [("paused",)]
    c.store.close()
