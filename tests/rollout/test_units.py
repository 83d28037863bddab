"""The step's units in a real store: counted as the data says, and the same after a restart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import rollout.unit_store
import rollout.units
from rollout.controller import Controller
from rollout.runtime import LiveRollout
from rollout.state import Action
from rollout.units import UnitCounts
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

START = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
KEYS = 300
EVENTS_PER_KEY = 3
LABELLED = 150  # keys 0 … 149 get an outcome; the rest never do


def plan(**extra: Any) -> RolloutSpec:
    return RolloutSpec.model_validate({
        "name": "triage", "steps": [{"percent": 0, "min_compared": 10_000}, {"percent": 100}],
        "sink": {"kind": "file", "path": "unused.jsonl"}, "label_window": "2h",
        "label_expiry": "never", **extra})


def key_agrees(k: int) -> bool:
    return k % 5 != 0


def answer(event: Event) -> str:
    k = int(event.key.removeprefix("k"))
    return "right" if key_agrees(k) else "wrong"


def events() -> list[dict[str, Any]]:
    return [{"event_id": f"e{k}-{j}", "key": f"k{k}",
             "occurred_at": (START + timedelta(minutes=k + 10 * j)).isoformat(),
             "segment": {"language": "de" if k % 3 == 0 else "en"}, "payload": {}}
            for j in range(EVENTS_PER_KEY) for k in range(KEYS)]


def outcomes() -> list[dict[str, Any]]:
    return [{"key": f"k{k}", "outcome": "right",
             "decided_at": (START + timedelta(minutes=k + 60)).isoformat()}
            for k in range(LABELLED)]


def expected(clock_minutes: float, window_minutes: float) -> UnitCounts:
    """The counts by hand: a key is judged when its first event is old enough; judged
    keys without an outcome are pending; agreement per key, not per event."""
    cutoff = clock_minutes - window_minutes
    judged = [k for k in range(KEYS) if k <= cutoff]
    labelled = [k for k in judged if k < LABELLED]
    return UnitCounts(keys=KEYS, mature=len(judged), labelled=len(labelled),
                      agreed=float(sum(key_agrees(k) for k in labelled)))


def replay(db: Path, spec: RolloutSpec, *, after: Callable[[Controller], None] | None = None,
           ) -> Controller:
    clock = SteppingClock(START, timedelta(seconds=1))
    comparator = build_comparator(ExactSpec())
    store = Store(db)
    store.open()
    controller = Controller(store, spec, rollout="triage", candidate="triage", version="1",
                            comparator=comparator.name, now=clock)
    controller.sync()
    if after is not None:
        after(controller)
    live = LiveRollout(controller, RecordingSink(),
                       compare=lambda: compare(store, comparator, now=clock))
    with live.sink, CallableCandidate(answer, name="triage", version="1") as candidate:
        Pipeline(store, candidate, comparator, now=clock, rollout=live).run(
            [ListSource(events(), name="events")], [ListSource(outcomes(), name="outcomes")])
    return controller


def counts(controller: Controller) -> UnitCounts:
    found, _ = controller.units.counts()
    return UnitCounts(keys=found.keys, mature=found.mature, labelled=found.labelled,
                      agreed=found.agreed)


def test_keys_are_counted_once_when_their_label_window_has_passed(tmp_path: Path) -> None:
    controller = replay(tmp_path / "s.duckdb", plan())
    try:
        found, _ = controller.units.counts()
        # The data clock: the newest event (key 299's third, at 299 + 20 minutes) or
        # decision (key 149's, at 149 + 60), whichever is later.
        clock = max(KEYS - 1 + 10 * (EVENTS_PER_KEY - 1), LABELLED - 1 + 60)
        assert found.clock == START + timedelta(minutes=clock)
        assert counts(controller) == expected(clock, 120)
        assert found.pending > 0  # the unlabelled keys count against the candidate
    finally:
        controller.store.close()


@pytest.mark.parametrize("unit", ["first", "last", "mean"])
def test_a_restarted_controller_counts_what_the_first_one_counted(
    tmp_path: Path, unit: str
) -> None:
    first = replay(tmp_path / "s.duckdb", plan(unit=unit))
    before, segments_before = first.units.counts()
    progress = first.units.progress(first.state)
    first.store.close()
    with Store(tmp_path / "s.duckdb") as store:
        again = Controller(store, plan(unit=unit), rollout="triage", candidate="triage",
                           version="1", comparator="exact")
        again.attach()
        after_sync = again.units.sync(again.state)
        after, segments_after = again.units.counts()
        assert (after, segments_after) == (before, segments_before)
        assert after_sync.labels == progress.labels
        assert again.units.tally() == first.units.tally()
        assert again.units.label_delays() == first.units.label_delays()
        assert again.units.fresh_agreements(progress) == first.units.fresh_agreements(progress)
    with Store(tmp_path / "s.duckdb", read_only=True) as store:
        reader = Controller(store, plan(unit=unit), rollout="triage", candidate="triage",
                            version="1", comparator="exact")
        reader.attach()
        assert reader.assess().stats is not None
        assert reader.units.counts() == (before, segments_before)


def test_segments_count_their_keys_once(tmp_path: Path) -> None:
    controller = replay(tmp_path / "s.duckdb", plan())
    try:
        _, segments = controller.units.counts()
        clock = max(KEYS - 1 + 10 * (EVENTS_PER_KEY - 1), LABELLED - 1 + 60)
        judged = [k for k in range(KEYS) if k <= clock - 120]
        for s in segments:
            keys = [k for k in judged if (k % 3 == 0) == (s.value == "de")]
            labelled = [k for k in keys if k < LABELLED]
            assert (s.field, s.mature, s.labelled) == ("language", len(keys), len(labelled))
            assert s.agreed == sum(key_agrees(k) for k in labelled)
    finally:
        controller.store.close()


def test_live_units_count_only_when_an_independent_source_labels_them(tmp_path: Path) -> None:
    def go_live(controller: Controller) -> None:
        controller.command(Action.PROMOTE, actor="dana", reason="test", force=True)

    # A fifth of the keys disagree: levels the candidate holds, so nothing rolls back.
    levels: dict[str, Any] = {"gates": {"agreement": 0.7},
                              "rollback": {"healthy": 0.75, "degraded": 0.5}}
    echoing = replay(tmp_path / "a.duckdb", plan(**levels), after=go_live)
    try:
        found, _ = echoing.units.counts()
        assert (found.mature, found.labelled) == (0, 0)
        assert found.dependent == LABELLED  # every labelled key was live: left out
    finally:
        echoing.store.close()
    declared = replay(tmp_path / "b.duckdb", plan(independent_sources=["outc*"], **levels),
                      after=go_live)
    try:
        clock = max(KEYS - 1 + 10 * (EVENTS_PER_KEY - 1), LABELLED - 1 + 60)
        assert counts(declared) == expected(clock, 120)
    finally:
        declared.store.close()


@pytest.mark.parametrize(("expiry", "pending"), [("never", True), ("3h", False)])
def test_keys_never_labelled_stop_counting_after_their_expiry(
    tmp_path: Path, expiry: str, pending: bool
) -> None:
    controller = replay(tmp_path / "s.duckdb", plan(label_expiry=expiry))
    try:
        found, _ = controller.units.counts()
        clock = max(KEYS - 1 + 10 * (EVENTS_PER_KEY - 1), LABELLED - 1 + 60)
        lapsed = [k for k in range(LABELLED, KEYS) if k <= clock - 180]
        assert found.expired == (0 if pending else len(lapsed))
        assert found.pending == len([k for k in range(LABELLED, KEYS) if k <= clock - 120]) - (
            0 if pending else len(lapsed))
    finally:
        controller.store.close()


@pytest.mark.parametrize("few", [True, False])
def test_units_written_without_the_pipeline_s_notes_are_read_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, few: bool
) -> None:
    """A controller that did not see the batches routed (an upgraded store, a replay
    without the rollout) reads the events behind the predictions: by id when few are
    missing, by the predictions' time range when many are."""
    monkeypatch.setattr(rollout.units, "_FEW", 10_000 if few else 10)
    clock = SteppingClock(START, timedelta(seconds=1))
    comparator = build_comparator(ExactSpec())
    with Store(tmp_path / "s.duckdb") as store:
        controller = Controller(store, plan(), rollout="triage", candidate="triage",
                                version="1", comparator=comparator.name, now=clock)
        controller.sync()
        with CallableCandidate(answer, name="triage", version="1") as candidate:
            Pipeline(store, candidate, comparator, now=clock).run(
                [ListSource(events())], [ListSource(outcomes())])
        controller.units.sync(controller.state)  # everything, not up to the next evaluation
        clock_minutes = max(KEYS - 1 + 10 * (EVENTS_PER_KEY - 1), LABELLED - 1 + 60)
        assert counts(controller) == expected(clock_minutes, 120)
        _, segments = controller.units.counts()
        assert {s.value for s in segments} == {"de", "en"}


def test_a_failed_write_drops_the_counts_in_memory_and_the_next_sync_rebuilds_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shadow.core.errors import StoreError

    controller = replay(tmp_path / "s.duckdb", plan())
    try:
        before = counts(controller)
        real = rollout.unit_store.append
        # One more key predicted after the replay, written as the pipeline would.
        later = START + timedelta(days=1)
        controller.store.db.execute(
            "INSERT INTO events (event_id, key, routing_key, occurred_at, segment, payload, "
            "source, position) VALUES ('late', 'k-late', 'k-late', ?, '{}', '{}', 'x', '1')",
            [START])
        controller.store.db.execute(
            "INSERT INTO predictions (event_id, candidate, version, mode, output, latency_ms, "
            "predicted_at) VALUES ('late', 'triage', '1', 'shadow', '\"right\"', 1.0, ?)",
            [later])

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise StoreError("disk full")

        monkeypatch.setattr(rollout.unit_store, "append", refuse)
        with pytest.raises(StoreError):
            controller.units.sync(controller.state)
        assert controller.units.counts() == (UnitCounts(), ())  # nothing the store lacks
        monkeypatch.setattr(rollout.unit_store, "append", real)
        controller.units.sync(controller.state)  # rebuilt from the store, then caught up
        assert counts(controller) == replace(before, keys=before.keys + 1, mature=before.mature
                                             + 1)
        again = Controller(controller.store, plan(), rollout="triage", candidate="triage",
                           version="1", comparator="exact")
        again.attach()
        again.units.sync(again.state)
        assert counts(again) == counts(controller)  # the store holds the late key now
    finally:
        controller.store.close()
