"""The controller inside the pipeline: promotion on evidence, automatic rollback, the holdout."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rollout import audit
from rollout.controller import Controller
from rollout.notify import RecordingNotifier
from rollout.runtime import LiveRollout
from rollout.state import Action, Status
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
LABELS = ["billing", "login", "refund", "shipping"]


def ticking() -> SteppingClock:
    return SteppingClock(START, timedelta(seconds=30))


def truth(i: int) -> str:
    return LABELS[i % 4]


def answer(event: Event) -> str:
    """Agrees 97 % of the time before event 3000, 70 % from then on."""
    i = int(event.event_id.removeprefix("e"))
    bad_every = 100 if i < DROP_AT else 10
    wrong = (i * 7919) % bad_every < (3 if i < DROP_AT else 3)
    return LABELS[(i + 1) % 4] if wrong else truth(i)


DROP_AT = 3000


def events(n: int) -> list[dict[str, Any]]:
    return [{"event_id": f"e{i}", "key": f"t{i}", "occurred_at": START.isoformat(),
             "segment": {"language": "en" if i % 3 else "de"}, "payload": {"i": i}}
            for i in range(n)]


def outcomes(n: int) -> list[dict[str, Any]]:
    return [{"key": f"t{i}", "outcome": truth(i), "decided_at": START.isoformat()}
            for i in range(n)]


def plan(steps: list[dict[str, Any]], **extra: Any) -> RolloutSpec:
    return RolloutSpec.model_validate({
        "name": "triage", "steps": steps,
        "sink": {"kind": "file", "path": "unused.jsonl"},
        "gates": {"agreement": 0.9}, "rollback": {"healthy": 0.95, "degraded": 0.8},
        **extra,
    })


class Run:
    def __init__(self, db: Path, spec: RolloutSpec, n: int) -> None:
        self.clock = ticking()
        self.sink = RecordingSink()
        self.notifier = RecordingNotifier()
        self.db, self.spec, self.n = db, spec, n

    def go(self) -> Store:
        store = Store(self.db)
        store.open()
        candidate = CallableCandidate(answer, name="triage", version="1")
        comparator = build_comparator(ExactSpec())
        controller = Controller(store, self.spec, rollout="triage", candidate="triage",
                                version="1", comparator=comparator.name,
                                notifiers=[self.notifier], now=self.clock)
        controller.sync()
        self.sink.open()
        live = LiveRollout(controller, self.sink,
                           compare=lambda: compare(store, comparator, now=self.clock))
        with candidate:
            Pipeline(store, candidate, comparator, batch_size=100, now=self.clock,
                   rollout=live).run([ListSource(events(self.n), name="events")],
                                     [ListSource(outcomes(self.n), name="outcomes")])
        return store


@pytest.fixture(scope="module")
def rolled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Run, Store]]:
    # The outcomes are the agents' own decisions, independent of the AI: declared so, they
    # judge live events too (at 100 % without a holdout nothing else could).
    spec = plan([{"percent": 0, "min_compared": 300}, {"percent": 50, "min_compared": 300},
                 {"percent": 100, "min_compared": 300}], independent_sources=["outcomes"])
    run = Run(tmp_path_factory.mktemp("rolled") / "store.duckdb", spec, 6000)
    store = run.go()
    yield run, store
    store.close()


def test_promotion_waits_for_evidence_then_moves_one_step(rolled: tuple[Run, Store]) -> None:
    _, store = rolled
    records = audit.history(store, "triage")
    promotions = [r for r in records if r.action is Action.PROMOTE]
    assert promotions, [r.as_dict() for r in records]
    first = promotions[0]
    assert (first.from_step, first.to_step, first.actor) == (0, 1, "controller")
    (agreement,) = [c for c in first.evidence["checks"] if c["name"] == "agreement"]
    assert agreement["n"] >= 300 and agreement["low"] >= 0.9


def test_a_drop_in_agreement_rolls_back_automatically_with_its_evidence(
    rolled: tuple[Run, Store]
) -> None:
    run, store = rolled
    records = audit.history(store, "triage")
    (back,) = [r for r in records if r.action is Action.ROLLBACK]
    assert back.actor == "controller" and back.to_status is Status.ROLLED_BACK
    assert back.percent == 0 and back.reason.startswith("automatic: CUSUM")
    assert [c["name"] for c in back.evidence["checks"] if c["phase"] == "fail"] == ["degradation"]
    # Announced on the notification channel.
    assert [a.action for a in run.notifier.announced if a.action == "rollback"] == ["rollback"]
    # The very next routed event is shadow: nothing predicted after the rollback is live.
    after = store.db.execute(
        "SELECT count(*) FILTER (mode = 'live'), count(*) FROM predictions WHERE predicted_at > ?",
        [back.at]).fetchall()[0]
    assert after[0] == 0 and after[1] > 0
    # It rolled back within a few hundred events of the drop, not at the end.
    last_live = store.db.execute(
        "SELECT max(CAST(substr(event_id, 2) AS INTEGER)) FROM predictions WHERE mode = 'live'"
    ).fetchall()[0][0]
    assert DROP_AT <= last_live < DROP_AT + 1000


def test_only_live_successful_decisions_reach_the_sink_once_each(
    rolled: tuple[Run, Store]
) -> None:
    run, store = rolled
    live = {r[0] for r in store.db.execute(
        "SELECT event_id FROM predictions WHERE mode = 'live' AND error_type IS NULL "
        "AND NOT abstained").fetchall()}
    published = [d.event_id for d in run.sink.published]
    assert live and sorted(published) == sorted(live)
    unpublished = store.db.execute(
        "SELECT count(*) FROM predictions WHERE mode = 'live' AND published_at IS NULL"
    ).fetchall()[0][0]
    assert unpublished == 0
    # Live means the key's bucket is in the live range: recomputed here from the hash.
    for d in run.sink.published[:200]:
        digest = hashlib.blake2b(d.key.encode(), digest_size=8, key=b"triage").digest()
        assert int.from_bytes(digest, "big") % 10_000 < 5000 * (1 if d.step == 1 else 2)


def test_no_data_never_promotes(tmp_path: Path) -> None:
    spec = plan([{"percent": 0, "min_compared": 1}, {"percent": 100}])
    with Store(tmp_path / "s.duckdb") as store:
        clock = ticking()
        controller = Controller(store, spec, rollout="triage", candidate="triage", version="1",
                                comparator="exact", now=clock)
        for _ in range(20):
            clock.now += timedelta(days=1)
            assessment = controller.evaluate()
            assert assessment.transition is None
        assert controller.state.step == 0


def test_all_errors_never_promote(tmp_path: Path) -> None:
    def broken(event: Event) -> str:
        raise RuntimeError("model server down")

    spec = plan([{"percent": 0, "min_compared": 10}, {"percent": 100}],
                gates={"agreement": 0.6, "max_error_rate": None},
                rollback={"healthy": 0.65, "degraded": 0.5})
    clock = ticking()
    with Store(tmp_path / "s.duckdb") as store:
        comparator = build_comparator(ExactSpec())
        controller = Controller(store, spec, rollout="triage", candidate="triage", version="1",
                                comparator=comparator.name, now=clock)
        sink = RecordingSink()
        sink.open()
        live = LiveRollout(controller, sink,
                           compare=lambda: compare(store, comparator, now=clock))
        with CallableCandidate(broken, name="triage", version="1") as candidate:
            Pipeline(store, candidate, comparator, batch_size=50, now=clock, rollout=live).run(
                [ListSource(events(500))], [ListSource(outcomes(500))])
        assert controller.state.step == 0
        phases = {r[0] for r in store.db.execute(
            "SELECT phase FROM gate_evaluations WHERE kind = 'promotion'").fetchall()}
        assert "fail" in phases and "pass" not in phases


def test_the_holdout_stays_with_the_humans_at_100_percent(tmp_path: Path) -> None:
    spec = plan([{"percent": 0, "min_compared": 100}, {"percent": 100, "min_compared": 100}],
                holdout=0.2)
    run = Run(tmp_path / "store.duckdb", spec, 2500)
    store = run.go()
    try:
        promoted_at = [r.at for r in audit.history(store, "triage")
                       if r.action is Action.PROMOTE and r.to_step == 1][0]
        rows = store.db.execute(
            "SELECT e.routing_key, p.mode FROM predictions p JOIN events e USING (event_id) "
            "WHERE p.predicted_at > ?", [promoted_at]).fetchall()
        assert len(rows) > 500
        for key, mode in rows:
            digest = hashlib.blake2b(key.encode(), digest_size=8, key=b"triage").digest()
            held = int.from_bytes(digest, "big") % 10_000 >= 8000
            assert mode == ("shadow" if held else "live")
    finally:
        store.close()


def test_a_step_needing_approval_waits_for_a_person(tmp_path: Path) -> None:
    spec = plan([{"percent": 0, "min_compared": 100, "approval": True}, {"percent": 100}])
    run = Run(tmp_path / "store.duckdb", spec, 1000)
    store = run.go()
    try:
        state = audit.load(store, "triage")
        assert state is not None
        assert (state.step, state.status) == (0, Status.AWAITING_APPROVAL)
        assert not store.db.execute(
            "SELECT count(*) FROM predictions WHERE mode = 'live'").fetchall()[0][0]
    finally:
        store.close()


def test_decisions_the_sink_refused_are_published_on_a_later_batch(tmp_path: Path) -> None:
    spec = plan([{"percent": 0, "min_compared": 1}, {"percent": 100}], review=0.25)
    clock = ticking()
    with Store(tmp_path / "s.duckdb") as store:
        comparator = build_comparator(ExactSpec())
        controller = Controller(store, spec, rollout="triage", candidate="triage", version="1",
                                comparator=comparator.name, now=clock)
        controller.sync()
        controller.command(Action.PROMOTE, actor="dana", reason="test", force=True)
        sink = RecordingSink()
        sink.open()
        sink.fail_next(3)
        live = LiveRollout(controller, sink, compare=lambda: compare(store, comparator, now=clock))
        with CallableCandidate(answer, name="triage", version="1") as candidate:
            Pipeline(store, candidate, comparator, batch_size=100, now=clock, rollout=live).run(
                [ListSource(events(1000))])
        assert sink.failures == 3
        published = [d.event_id for d in sink.published]
        assert sorted(published) == sorted(f"e{i}" for i in range(1000))  # once each
        reviewed = {d.key for d in sink.published if d.review}
        # The review sample is its own keyed hash, recomputed here.
        expected = {f"t{i}" for i in range(1000)
                    if int.from_bytes(hashlib.blake2b(f"t{i}".encode(), digest_size=8,
                                                      key=b"triage/review").digest(), "big")
                    % 10_000 < 2500}
        assert reviewed == expected


def test_status_warns_when_labels_are_too_few_to_catch_a_drop_in_time(tmp_path: Path) -> None:
    spec = plan([{"percent": 0, "min_compared": 1}, {"percent": 100}],
                rollback={"healthy": 0.95, "degraded": 0.8, "detect_within": "1h"})
    clock = ticking()
    with Store(tmp_path / "s.duckdb") as store:
        controller = Controller(store, spec, rollout="triage", candidate="triage", version="1",
                                comparator="exact", now=clock)
        controller.sync()
        controller.command(Action.PROMOTE, actor="dana", reason="test", force=True)
        clock.now += timedelta(hours=5)
        (warning,) = controller.assess().warnings
        assert "independent labels arrive at 0.0 keys per day" in warning


def test_a_new_candidate_version_restarts_the_step_even_at_the_start(tmp_path: Path) -> None:
    spec = plan([{"percent": 0, "min_compared": 100}, {"percent": 100}])
    clock = ticking()
    with Store(tmp_path / "s.duckdb") as store:
        first = Controller(store, spec, rollout="triage", candidate="triage", version="1",
                           comparator="exact", now=clock)
        started = first.sync().step_started_at
        second = Controller(store, spec, rollout="triage", candidate="triage", version="2",
                            comparator="exact", now=clock)
        state = second.sync()
        assert (state.step, state.version) == (0, "2")
        assert state.step_started_at > started  # the statistics start again
        (restart,) = [r for r in audit.history(store, "triage") if r.action is Action.RESTART]
        assert "from triage 1 to triage 2" in restart.reason
