"""Live decisions the sink has not taken are withdrawn when the rollout stops acting or
when they grow stale: kept in the store with their reason, never published late."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rollout.controller import Controller
from rollout.runtime import LiveRollout
from rollout.state import Action
from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.compare.step import compare
from shadow.config.comparators import ExactSpec
from shadow.config.rollout import RolloutSpec
from shadow.core.models import Event
from shadow.pipeline.runner import Pipeline
from shadow.reports.html import to_html
from shadow.reports.owner import owner_report
from shadow.service.metrics import render_metrics
from shadow.store.database import Store
from shadow.testing import ListSource, RecordingSink
from tests.clock import SteppingClock

START = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def plan(**extra: Any) -> RolloutSpec:
    return RolloutSpec.model_validate({
        "name": "triage", "steps": [{"percent": 0}, {"percent": 100}],
        "sink": {"kind": "file", "path": "unused.jsonl"}, **extra})


def events(first: int, n: int) -> list[dict[str, Any]]:
    return [{"event_id": f"e{i}", "key": f"k{i}", "occurred_at": START.isoformat(),
             "payload": {}} for i in range(first, first + n)]


def answer(event: Event) -> str:
    return "billing"


class Live:
    """A rollout forced live over a sink that refuses until told otherwise."""

    def __init__(self, store: Store, spec: RolloutSpec, step: timedelta) -> None:
        self.clock = SteppingClock(START, step)
        self.store = store
        comparator = build_comparator(ExactSpec())
        self.controller = Controller(store, spec, rollout="triage", candidate="triage",
                                     version="1", comparator=comparator.name, now=self.clock)
        self.controller.sync()
        self.controller.command(Action.PROMOTE, actor="dana", reason="test", force=True)
        self.sink = RecordingSink()
        self.sink.open()
        self.sink.fail_next(1_000_000)
        self.live = LiveRollout(self.controller, self.sink,
                                compare=lambda: compare(store, comparator, now=self.clock))

    def replay(self, first: int, n: int) -> None:
        with CallableCandidate(answer, name="triage", version="1") as candidate:
            Pipeline(self.store, candidate, build_comparator(ExactSpec()), now=self.clock,
                   rollout=self.live).run([ListSource(events(first, n))])

    def sink_back(self) -> int:
        self.sink.fail_next(0)
        return self.live.publish_pending()

    def withdrawn(self) -> dict[str, int]:
        return dict(self.store.db.execute(
            "SELECT withdrawn_reason, count(*) FROM predictions WHERE withdrawn_at IS NOT NULL "
            "GROUP BY 1").fetchall())


def metric(store: Store, name: str) -> float:
    for family in text_string_to_metric_families(render_metrics(store)):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no {name}")


@pytest.mark.parametrize("action", [Action.ABORT, Action.ROLLBACK])
def test_decisions_pending_when_the_rollout_stops_acting_are_withdrawn(
    tmp_path: Path, action: Action
) -> None:
    with Store(tmp_path / "s.duckdb") as store:
        live = Live(store, plan(max_decision_age=None), timedelta(seconds=1))
        live.replay(0, 37)
        assert live.sink.published == []
        live.controller.command(action, actor="dana", reason="the sink is down")
        assert live.sink_back() == 0
        assert live.sink.published == []
        assert live.withdrawn() == {f"{action.value}: the rollout stopped acting": 37}
        assert metric(store, "shadow_live_decisions_withdrawn_total") == 37
        assert metric(store, "shadow_live_decisions_pending") == 0
        typed = owner_report(store)
        report = typed.as_dict()
        assert report["rollout"]["withdrawn"] == [
            {"candidate": "triage", "version": "1", "count": 37,
             "reason": f"{action.value}: the rollout stopped acting"}]
        assert "Live decisions withdrawn, never published: 37 of triage" in to_html(typed)


def test_decisions_older_than_the_maximum_age_are_withdrawn_and_the_rest_published(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "s.duckdb") as store:
        # Each clock reading is a minute later: the first batch is hours old by the end.
        live = Live(store, plan(max_decision_age="30m"), timedelta(minutes=1))
        live.replay(0, 20)
        live.clock.now += timedelta(hours=2)
        live.replay(20, 5)
        sent = live.sink_back()
        published = sorted(d.event_id for d in live.sink.published)
        assert published and sent == len(published)
        assert published == sorted(f"e{i}" for i in range(20, 25))
        assert live.withdrawn() == {"older than max_decision_age": 20}
