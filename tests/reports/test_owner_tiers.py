"""The owners' view of tiers: every figure against values computed here from the rows written.

Events, predictions, outcomes and comparisons go into a real DuckDB store through its own
write API, tiers and proposals through :mod:`shadow.store.reviews`, verdicts through
:mod:`shadow.store.verdicts`. The test keeps its own record of what it wrote (each case's
mode, tier, verdict and times) and counts the expected figures from that record. At the
end, a replay through the real rollout under a support desk's policy is reported too.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from shadow.config.file import parse_config
from shadow.core.errors import ConfigError
from shadow.core.models import Comparison, Event, Mode, Outcome, Prediction
from shadow.reports.build import owner_options
from shadow.reports.html import to_html
from shadow.reports.options import OwnerOptions
from shadow.reports.owner import owner_report
from shadow.reports.owner_model import OwnerReport
from shadow.reports.render import owner_markdown
from shadow.reports.values import from_json
from shadow.store import reviews, verdicts
from shadow.store.database import Store
from shadow.store.writes import StoredEvent, WriteBatch
from shadow.testing import RecordingSink
from tests.clock import SteppingClock
from tests.reports.test_owner_report import approx, quantile, wilson
from tests.rollout import test_review_sink as desk
from tests.store.old_stores import migrate_up_to

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
FIXED = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
CANDIDATE, VERSION, ROLLOUT = "desk-agent", "4", "desk"
OTHER = "rules"
N = 120
UNASSESSED = 6
"""The last events' predictions are stored but not given a tier yet."""
HANDLING, REVIEWING = 12.0, 3.0
DAILY_VOLUME = 5000.0
TIERS = ("auto", "review", "human")
RULES = ("tool add_tag → auto", "tool send_reply; 0.8 <= confidence <= 1 → review")
"""The policy's rules as the configuration would give them (``TierRule.text``)."""
WHY = {"rules[0]": RULES[0], "rules[1]": RULES[1],
       "default": "no rule matched (the policy's default)", "error": "the call failed"}


@dataclass
class Case:
    """One event of the tiered candidate, as the test wrote it."""

    i: int
    live: bool
    tier: str | None
    rule: str | None
    agree: bool | None
    """``None``: no comparison."""
    withdrawn: bool = False
    published_at: datetime | None = None
    verdict: str | None = None
    decided_at: datetime | None = None

    @property
    def event_id(self) -> str:
        return f"e{self.i}"

    @property
    def occurred_at(self) -> datetime:
        return START + timedelta(hours=1.5 * self.i)

    @property
    def proposed_at(self) -> datetime:
        return self.occurred_at + timedelta(minutes=1)


def cases() -> list[Case]:
    rng = random.Random(11)
    out = []
    for i in range(N):
        live = i % 3 == 0
        if i >= N - UNASSESSED:
            out.append(Case(i, live, None, None, rng.random() < 0.8))
            continue
        tier = rng.choices(TIERS, weights=(4, 3.5, 2.5))[0]
        rule = {"auto": "rules[0]", "review": "rules[1]",
                "human": "error" if i % 4 == 0 else "default"}[tier]
        compared = i % 7 != 0
        agree = rng.random() < {"auto": 0.9, "review": 0.7, "human": 0.5}[tier]
        case = Case(i, live, tier, rule, agree if compared else None)
        if tier == "review" and live:
            case.withdrawn = i % 11 == 0
            if not case.withdrawn and i % 5 != 0:
                case.published_at = case.proposed_at + timedelta(minutes=i % 4)
            if not case.withdrawn and rng.random() < 0.8:
                case.verdict = rng.choices(("approve", "edit", "reject"), weights=(6, 3, 1))[0]
                case.decided_at = case.proposed_at + timedelta(minutes=rng.randint(2, 300),
                                                               seconds=rng.randint(0, 59))
        out.append(case)
    return out


CASES = cases()


def write(store: Store, records: list[Case]) -> None:
    """Everything the pipeline, the compare step and the rollout would have stored."""
    batch = WriteBatch()
    comparisons = []
    for c in records:
        event = Event(event_id=c.event_id, key=f"k{c.i}", occurred_at=c.occurred_at,
                      payload={"subject": f"case {c.i}"})
        batch.events.append(StoredEvent(event, "test", str(c.i)))
        for name, version in ((CANDIDATE, VERSION), (OTHER, None)):
            batch.predictions.append(Prediction(
                event_id=c.event_id, candidate=name, version=version,
                mode=Mode.LIVE if c.live and name == CANDIDATE else Mode.SHADOW,
                output={"label": "a"}, latency_ms=5.0,
                predicted_at=c.occurred_at + timedelta(seconds=2)))
        decided = c.occurred_at + timedelta(hours=1)
        batch.outcomes.append((Outcome(key=f"k{c.i}", outcome={"label": "a"},
                                       decided_at=decided, actor="agent-1"), "test", str(c.i)))
        if c.agree is not None:
            comparisons.append(Comparison(
                event_id=c.event_id, candidate=CANDIDATE, version=VERSION, comparator="exact",
                agree=c.agree, outcome_decided_at=decided, compared_at=decided))
    store.write(batch)
    store.write_comparisons(comparisons)
    assessed = [c for c in records if c.tier is not None]
    reviews.record_assessed(store, CANDIDATE, VERSION, [
        reviews.Assessed(c.event_id, c.tier, c.rule, _proposal(c) if c.tier == "review" else None)
        for c in assessed if c.tier is not None and c.rule is not None])
    reviews.record_assessed(store, OTHER, None, [
        reviews.Assessed(c.event_id, "auto", "default") for c in assessed])
    for c in records:
        if c.published_at is not None:
            reviews.mark_published(store, [_review_id(c)], c.published_at)
    answers = verdicts.record_verdicts(store, [
        verdicts.Verdict(review_id=_review_id(c), verdict=c.verdict,
                         output={"label": "b"} if c.verdict == "edit" else None,
                         reviewer="reviewer-1", decided_at=c.decided_at, source="test",
                         position=str(c.i))
        for c in records if c.verdict is not None and c.decided_at is not None],
        received_at=FIXED)
    assert all(problem is None for _, problem in answers)


def _review_id(c: Case) -> str:
    return f"rev_{c.event_id}"


def _proposal(c: Case) -> reviews.Proposed:
    return reviews.Proposed(review_id=_review_id(c), key=f"k{c.i}", rollout=ROLLOUT,
                            live=c.live, step=1 if c.live else 0, proposed_at=c.proposed_at,
                            proposal={"output": {"label": "a"}}, withdrawn=c.withdrawn)


def options(**changes: Any) -> OwnerOptions:
    chosen: dict[str, Any] = {"now": lambda: FIXED, "tiered": frozenset({CANDIDATE}),
                              "handling_minutes_per_case": HANDLING,
                              "review_minutes_per_case": REVIEWING,
                              "daily_volume": DAILY_VOLUME, "tier_rules": RULES,
                              **changes}
    return OwnerOptions(**chosen)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> OwnerReport:
    path = tmp_path_factory.mktemp("tiers") / "shadow.duckdb"
    with Store(path) as store:
        write(store, CASES)
        return owner_report(store, options())


def section(report: OwnerReport) -> dict[str, Any]:
    (mine,) = [c for c in report.as_dict()["candidates"] if c["name"] == CANDIDATE]
    found: dict[str, Any] = mine["tiers"]
    return found


# -- the expected figures, from the record ------------------------------------------


def assessed() -> list[Case]:
    return [c for c in CASES if c.tier is not None]


def expected_tier(tier: str) -> dict[str, Any]:
    everyone = assessed()
    live = [c for c in everyone if c.live]
    shadow = [c for c in everyone if not c.live]
    mine = [c for c in everyone if c.tier == tier]
    compared = [c for c in mine if c.agree is not None]
    agreed = sum(1 for c in compared if c.agree)
    rate, low, high = wilson(agreed, len(compared))
    rules = Counter(c.rule or "" for c in mine)
    return {
        "tier": tier, "predictions": len(mine),
        "live": sum(1 for c in mine if c.live), "shadow": sum(1 for c in mine if not c.live),
        "share": len(mine) / len(everyone),
        "live_share": sum(1 for c in mine if c.live) / len(live),
        "shadow_share": sum(1 for c in mine if not c.live) / len(shadow),
        "agreement": {"rate": rate, "low": low, "high": high, "n": len(compared),
                      "agreed": agreed, "method": "wilson", "unit": "prediction"},
        "rules": [{"rule": rule, "predictions": n, "text": WHY[rule]}
                  for rule, n in sorted(rules.items(), key=lambda r: (-r[1], r[0]))],
    }


def expected_reviews() -> dict[str, Any]:
    proposed = [c for c in assessed() if c.tier == "review"]
    live = [c for c in proposed if c.live]
    decided = [c for c in proposed if c.verdict is not None]
    waits = [((c.decided_at or FIXED) - (c.published_at or c.proposed_at)).total_seconds()
             for c in decided]
    counts = Counter(c.verdict for c in decided)
    rates = []
    for verdict in ("approve", "edit", "reject"):
        rate, low, high = wilson(counts[verdict], len(decided))
        rates.append({"verdict": verdict, "count": counts[verdict], "rate": rate, "low": low,
                      "high": high})
    return {
        "proposed": len(proposed), "live": len(live), "shadow": len(proposed) - len(live),
        "published": sum(1 for c in live if c.published_at is not None),
        "withdrawn": sum(1 for c in live if c.withdrawn),
        "open": sum(1 for c in live if not c.withdrawn and c.verdict is None),
        "decided": len(decided), "verdicts": rates,
        "median_seconds": statistics.median(waits), "p90_seconds": quantile(waits, 0.9),
    }


def span_days() -> float:
    """The cost projection's basis: first to last event of the candidate's predictions."""
    return max((CASES[-1].occurred_at - CASES[0].occurred_at).total_seconds() / 86_400, 1.0)


def expected_work() -> dict[str, Any]:
    everyone = assessed()
    live = [c for c in everyone if c.live]

    def saved(group: list[Case]) -> float:
        return sum(HANDLING if c.tier == "auto" else HANDLING - REVIEWING
                   if c.tier == "review" else 0.0 for c in group)

    days = span_days()
    per_case = saved(everyone) / len(everyone)
    current = N / days  # every prediction, assessed or not, as the cost projection counts
    return {
        "handling_minutes_per_case": HANDLING, "review_minutes_per_case": REVIEWING,
        "auto_share": sum(1 for c in everyone if c.tier == "auto") / len(everyone),
        "live_auto_share": sum(1 for c in live if c.tier == "auto") / len(live),
        "minutes_saved_live": saved(live), "minutes_saved_per_case": per_case,
        "daily_volume_live": len(live) / days, "daily_volume_current": current,
        "daily_volume_full": DAILY_VOLUME,
        "per_day_current": saved(live) / days, "per_month_current": saved(live) / days * 30,
        "per_day_all_live": per_case * current, "per_month_all_live": per_case * current * 30,
        "per_day_full": per_case * DAILY_VOLUME, "per_month_full": per_case * DAILY_VOLUME * 30,
    }


# -- the tests ----------------------------------------------------------------------------


def test_the_data_exercises_every_figure() -> None:
    """Every tier live and in shadow, verdicts of each kind, open, withdrawn and unpublished
    proposals: otherwise the figures below would check less than they claim."""
    everyone = assessed()
    assert {(c.tier, c.live) for c in everyone} == {(t, m) for t in TIERS for m in (True, False)}
    decided = [c for c in everyone if c.verdict is not None]
    assert {c.verdict for c in decided} == {"approve", "edit", "reject"}
    assert any(c.published_at is None for c in decided)
    live_reviews = [c for c in everyone if c.tier == "review" and c.live]
    assert any(c.withdrawn for c in live_reviews)
    assert any(c.verdict is None and not c.withdrawn for c in live_reviews)


def test_volume_share_and_agreement_per_tier(report: OwnerReport) -> None:
    found = section(report)
    everyone = assessed()
    assert (found["assessed"], found["live"], found["shadow"], found["unassessed"]) == (
        len(everyone), sum(1 for c in everyone if c.live),
        sum(1 for c in everyone if not c.live), UNASSESSED)
    assert found["tiers"] == approx([expected_tier(t) for t in TIERS])


def test_the_reviewers_verdicts_and_time_to_review(report: OwnerReport) -> None:
    assert section(report)["reviews"] == approx(expected_reviews())


def test_the_work_taken_off_peoples_hands(report: OwnerReport) -> None:
    assert section(report)["work"] == approx(expected_work())


def test_the_cost_projection_counts_on_the_same_basis(report: OwnerReport) -> None:
    (mine,) = [c for c in report.candidates if c.name == CANDIDATE]
    assert mine.tiers is not None
    assert mine.tiers.work.daily_volume_current == pytest.approx(
        mine.cost.daily_volume_current, rel=1e-12)


def test_a_candidate_without_a_tier_policy_has_no_section(report: OwnerReport) -> None:
    (other,) = [c for c in report.as_dict()["candidates"] if c["name"] == OTHER]
    assert "tiers" not in other


def test_without_the_configuration_every_assessed_candidate_has_a_section(
        tmp_path: Path) -> None:
    with Store(tmp_path / "s.duckdb") as store:
        write(store, CASES[:30])
        report = owner_report(store, options(tiered=None))
    names = [c.name for c in report.candidates if c.tiers is not None]
    assert names == [CANDIDATE, OTHER]
    (other,) = [c.tiers for c in report.candidates if c.name == OTHER]
    assert other is not None and [t.predictions for t in other.tiers] == [30, 0, 0]


def test_markdown_shows_the_tiers(report: OwnerReport) -> None:
    text = owner_markdown(report)
    for tier in TIERS:
        e = expected_tier(tier)
        a = e["agreement"]
        assert (f"- {tier}: {e['predictions']:,} ({100 * e['share']:.1f} %; "
                f"live {e['live']:,}, shadow {e['shadow']:,}), agreement "
                f"{100 * a['rate']:.1f} % [{100 * a['low']:.1f} %, {100 * a['high']:.1f} %] "
                f"(n={a['n']:,})") in text
    r = expected_reviews()
    approve, edit, reject = r["verdicts"]
    assert (f"Reviews: {r['decided']:,} decided (approved {100 * approve['rate']:.1f} % "
            f"({approve['count']}), edited {100 * edit['rate']:.1f} % ({edit['count']}), "
            f"rejected {100 * reject['rate']:.1f} % ({reject['count']}));") in text
    assert f"{r['open']:,} open of {r['live']:,} live proposals." in text
    w = expected_work()
    assert (f"Work taken off people's hands: {100 * w['auto_share']:.1f} % of cases in tier "
            f"auto (live {100 * w['live_auto_share']:.1f} %); "
            f"{w['minutes_saved_live']:,.0f} min saved so far; per month "
            f"{w['per_month_current'] / 60:,.1f} h at current live traffic, "
            f"{w['per_month_all_live'] / 60:,.1f} h with every decision live, "
            f"{w['per_month_full'] / 60:,.1f} h at full production (12 min per case handled "
            f"by a person, 3 min per review).") in text


def test_html_shows_the_tiers_next_to_the_cost(report: OwnerReport) -> None:
    page = to_html(report)
    (mine,) = [c for c in page.split('<section class="candidate">') if f"<h2>{CANDIDATE}" in c]
    assert mine.index("<h3>Cost</h3>") < mine.index("<h3>Tiers</h3>")
    for tier in TIERS:
        e = expected_tier(tier)
        assert (f"<td>{tier}</td><td class=\"num\">{e['predictions']:,}</td>"
                f"<td class=\"num\">{100 * e['share']:.1f}\u00a0%</td>") in mine
    w = expected_work()
    for label, volume, month in (
            ("current live traffic", w["daily_volume_live"], w["per_month_current"]),
            ("current traffic, 100\u00a0% live", w["daily_volume_current"],
             w["per_month_all_live"]),
            ("full production, 100\u00a0% live", DAILY_VOLUME, w["per_month_full"])):
        assert (f"<td>{label}</td><td class=\"num\">{int(volume):,}</td>") in mine
        assert f"{month / 60:,.1f} h</td>" in mine
    auto = expected_tier("auto")
    assert (f'<div>rules[0] <span class="muted">tool add_tag → auto</span>: '
            f'{auto["predictions"]:,}</div>') in mine
    (other,) = [c for c in page.split('<section class="candidate">') if f"<h2>{OTHER}" in c]
    assert "<h3>Tiers</h3>" not in other


def test_the_section_survives_the_json_round_trip(report: OwnerReport) -> None:
    """A report from the control API is rendered from the same types."""
    again = from_json(OwnerReport, report.as_dict())
    (mine,) = [c for c in again.candidates if c.name == CANDIDATE]
    assert mine.tiers is not None
    assert owner_markdown(again) == owner_markdown(report)


def test_a_store_of_the_version_before_tiers_reports_without_a_section(
        tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as db:
        migrate_up_to(db, 13)
        db.execute("INSERT INTO events (event_id, key, routing_key, occurred_at, segment, "
                   "payload, source, position) VALUES ('e1', 'k1', 'k1', ?, '{}', '{}', 's', "
                   "'0')", [START])
        db.execute("INSERT INTO predictions (event_id, candidate, version, mode, output, "
                   "latency_ms, predicted_at) VALUES ('e1', ?, ?, 'live', '\"a\"', 1, ?)",
                   [CANDIDATE, VERSION, START])
    with Store(path, read_only=True) as store:
        report = owner_report(store, options())
    (mine,) = report.as_dict()["candidates"]
    assert "tiers" not in mine
    assert "By tier" not in owner_markdown(report)
    assert "<h3>Tiers</h3>" not in to_html(report)


def test_the_costs_per_case_come_from_the_report_section() -> None:
    base = {"version": 1, "candidate": {"callable": "app.triage:predict"}}
    defaults = owner_options(parse_config(base))
    assert (defaults.handling_minutes_per_case, defaults.review_minutes_per_case) == (10.0, 2.0)
    chosen = owner_options(parse_config({**base, "report": {
        "handling_minutes_per_case": 7.5, "review_minutes_per_case": 1.5}}))
    assert (chosen.handling_minutes_per_case, chosen.review_minutes_per_case) == (7.5, 1.5)
    for key in ("handling_minutes_per_case", "review_minutes_per_case"):
        with pytest.raises(ConfigError, match=f"report.{key}"):
            parse_config({**base, "report": {key: -1}})


def test_only_the_rolled_out_candidate_with_tiers_is_tiered() -> None:
    base = {"version": 1, "candidate": {"callable": "app.triage:predict", "name": "triage"}}
    rollout = {"steps": [{"percent": 0}], "tiers": {"default": "human", "rules": [
        {"tool": "add_tag", "tier": "auto"},
        {"label": "spam", "confidence": {"at_least": 0.9}, "tier": "auto"}]}}
    assert owner_options(parse_config(base)).tiered == frozenset()
    tiered = owner_options(parse_config({**base, "rollout": rollout}))
    assert tiered.tiered == frozenset({"triage"})
    assert tiered.tier_rules == ("tool add_tag → auto", "label spam; 0.9 <= confidence <= 1 → auto")
    without = {**rollout}
    del without["tiers"]
    assert owner_options(parse_config({**base, "rollout": without})).tiered == frozenset()


def test_a_replay_in_shadow_under_a_tier_policy_reports_what_each_tier_would_have_done(
        tmp_path: Path) -> None:
    clock = SteppingClock(desk.START, timedelta(seconds=30))
    with Store(tmp_path / "s.duckdb") as store, RecordingSink() as a, RecordingSink() as r:
        desk.replay(store, desk.live_rollout(store, a, r, clock, promote=False), clock)
        report = owner_report(store, OwnerOptions(now=lambda: FIXED))

    (candidate,) = report.candidates
    assert candidate.tiers is not None
    kinds = [desk.TIERS[kind] for kind in desk.KINDS]
    counts = Counter(tier for tier, _ in kinds)
    assert counts == {"auto": 2, "review": 3, "human": 3}
    assert [(t.tier, t.predictions, t.live, t.shadow, t.share) for t in candidate.tiers.tiers] == [
        (tier, counts[tier], 0, counts[tier], counts[tier] / len(kinds)) for tier in TIERS]
    human = Counter(rule for tier, rule in kinds if tier == "human")
    (shown,) = [t for t in candidate.tiers.tiers if t.tier == "human"]
    assert {r.rule: r.predictions for r in shown.rules} == human
    assert {r.rule: r.text for r in shown.rules} == {
        rule: "the call failed" if rule == "error" else None for rule in human}
    reviewed = candidate.tiers.reviews
    assert (reviewed.proposed, reviewed.live, reviewed.shadow, reviewed.open,
            reviewed.decided) == (3, 0, 3, 0, 0)
    work = candidate.tiers.work
    assert (work.auto_share, work.live_auto_share, work.minutes_saved_live) == (2 / 8, None, 0)
    assert "- auto: 2 (25.0 %; live 0, shadow 2)" in owner_markdown(report)
    assert ('<td>review</td><td class="num">3</td><td class="num">37.5\u00a0%</td>'
            in to_html(report))


def test_a_policy_that_proposed_nothing_reports_no_reviews(tmp_path: Path) -> None:
    records = [c for c in CASES if c.tier in ("auto", "human")]
    with Store(tmp_path / "s.duckdb") as store:
        write(store, records)
        report = owner_report(store, options())
    (mine,) = [c for c in report.candidates if c.name == CANDIDATE]
    assert mine.tiers is not None
    r = mine.tiers.reviews
    assert (r.proposed, r.decided, r.open, r.median_seconds, r.p90_seconds) == (
        0, 0, 0, None, None)
    assert [(v.verdict, v.count, v.rate) for v in r.verdicts] == [
        ("approve", 0, None), ("edit", 0, None), ("reject", 0, None)]
    assert "Reviews:" not in owner_markdown(report)
    assert "Reviews: no proposal of tier review yet." in to_html(report)
