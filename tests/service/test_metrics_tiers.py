"""The metrics of tiers and reviews: predictions by tier, reviews by status, reviewed actions
published, and the records a when: condition or a tombstone left out; values from a store
filled through the real pipeline under a support desk's tier policy, checked against the
policy's table, and the text linted by promtool."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

from shadow.service.metrics import render_metrics
from shadow.service.runtime_metrics import RuntimeMetrics
from shadow.store.database import Store
from shadow.store.verdicts import Verdict, record_verdicts
from shadow.testing import RecordingSink
from tests.clock import SteppingClock
from tests.rollout.test_review_sink import (
    CANDIDATE,
    KINDS,
    REVIEW,
    START,
    TIERS,
    VERSION,
    live_rollout,
    replay,
    review_id_of,
)
from tests.service.test_metrics import check, parse, series


def test_tiers_reviews_and_reviewed_actions_are_counted(tmp_path: Path) -> None:
    clock = SteppingClock(START, timedelta(seconds=30))
    actions, proposals = RecordingSink(), RecordingSink()
    approved, rejected = REVIEW[0], REVIEW[1]
    with Store(tmp_path / "s.duckdb") as store, actions, proposals:
        live = live_rollout(store, actions, proposals, clock, promote=True)
        replay(store, live, clock)
        problems = record_verdicts(store, [
            Verdict(review_id_of(f"e{approved}"), "approve", None, "sam", clock(), "test", None),
            Verdict(review_id_of(f"e{rejected}"), "reject", None, "sam", clock(), "test", None),
        ], received_at=clock())
        assert [problem for _, problem in problems if problem is not None] == []
        live.publish_pending()
        runtime = RuntimeMetrics()
        runtime.set_skipped("event", 4)
        runtime.set_skipped("event", 3)  # a lower total is never a step back
        runtime.set_skipped("outcome", 2)
        text = render_metrics(store, runtime=runtime)

    families = parse(text)
    tiers = Counter(TIERS[kind][0] for kind in KINDS)
    assert series(families, "shadow_tier_predictions", "candidate", "version", "tier",
                  "mode") == {(CANDIDATE, VERSION, tier, "live"): n for tier, n in tiers.items()}
    statuses = Counter({"open": len(REVIEW) - 2, "approved": 1, "rejected": 1})
    assert series(families, "shadow_reviews", "candidate", "version", "status") == {
        (CANDIDATE, VERSION, status): n for status, n in statuses.items()}
    assert series(families, "shadow_reviewed_actions_published_total", "candidate",
                  "version", "verdict") == {(CANDIDATE, VERSION, "approve"): 1}
    assert series(families, "shadow_records_skipped_total", "kind") == {
        ("event",): 4, ("outcome",): 2}
    linted = check("metrics", stdin=text)
    assert (linted.returncode, linted.stdout + linted.stderr) == (0, "")
