"""The owner report's per-tier volume line, after a replay under a tier policy."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shadow.reports.html import to_html
from shadow.reports.options import OwnerOptions
from shadow.reports.owner import owner_report
from shadow.reports.render import owner_markdown
from shadow.store.database import Store
from shadow.testing import RecordingSink
from tests.clock import SteppingClock
from tests.rollout.test_review_sink import (
    CANDIDATE,
    KINDS,
    START,
    TIERS,
    VERSION,
    live_rollout,
    replay,
)

ORDER = ["auto", "review", "human"]


def test_the_owner_report_counts_predictions_per_tier(tmp_path: Path) -> None:
    clock = SteppingClock(START, timedelta(seconds=30))
    with Store(tmp_path / "s.duckdb") as store, RecordingSink() as a, RecordingSink() as r:
        replay(store, live_rollout(store, a, r, clock, promote=False), clock)
        report = owner_report(store, OwnerOptions(now=lambda: datetime(2026, 3, 3, tzinfo=UTC)))

    counts = Counter(TIERS[kind][0] for kind in KINDS)
    assert counts == {"auto": 2, "review": 3, "human": 3}
    assert report.as_dict()["rollout"]["tiers"] == [
        {"candidate": CANDIDATE, "version": VERSION, "tier": tier, "count": counts[tier]}
        for tier in ORDER]
    assert (f"By tier: auto 2 ({100 * 2 / 8:.1f} %), review 3 ({100 * 3 / 8:.1f} %), "
            f"human 3 ({100 * 3 / 8:.1f} %).") in owner_markdown(report)
    assert (f"Predictions of {CANDIDATE} {VERSION} by tier: auto 2 (25.0\u00a0%), "
            f"review 3 (37.5\u00a0%), human 3 (37.5\u00a0%).") in to_html(report)


def test_a_report_without_tiers_has_no_tier_line(tmp_path: Path) -> None:
    with Store(tmp_path / "s.duckdb") as store:
        report = owner_report(store, OwnerOptions(now=lambda: datetime(2026, 3, 3, tzinfo=UTC)))
    assert "tiers" not in report.as_dict()["rollout"]
    assert "By tier" not in owner_markdown(report)
