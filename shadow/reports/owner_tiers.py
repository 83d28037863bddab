"""The owners' view of tiers: per tier the volume, its agreement, the reviews, the work saved.

The rollout gives each prediction of its candidate a tier (``predictions.tier``, see
:mod:`rollout.tiers`), in shadow as in live, and stores the proposals of tier ``review``
(``reviews``), whose verdicts come back in ``review_verdicts``. :class:`TierQueries` reads
them, one query per figure over every candidate, and :func:`tier_section` shapes one
candidate's :class:`~shadow.reports.owner_model.TierSection`.

A store older than these tables, or a candidate without a tier policy, has no section:
every query answers nothing when its table or column is missing, so an old store reads as
it did before tiers existed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from shadow.core.fixed_sample import wilson
from shadow.reports.options import OwnerOptions
from shadow.reports.owner_model import (
    OwnerAgreement,
    ReviewFigures,
    RuleCount,
    TierFigures,
    TierSection,
    TierWork,
    VerdictRate,
)
from shadow.reports.queries import Key, Totals
from shadow.store.database import Store

TIERS = ("auto", "review", "human")
"""From least to most careful (``shadow.config.tiers.Tier``), the order they are shown in."""
VERDICTS = ("approve", "edit", "reject")
REASONS = {"default": "no rule matched (the policy's default)",
           "error": "the call failed", "abstained": "the candidate abstained",
           "violation": "the output violated a hard constraint",
           "fallback": "its own tier fell back after its agreement broke"}
"""What chose a tier when no rule did (``rollout.tiers``), as people read it."""
DAYS_PER_MONTH = 30
"""As the cost projection counts a month (``shadow.reports.owner``)."""


@dataclass(frozen=True, slots=True)
class TierTally:
    """One tier of one candidate: predictions live and shadow, comparisons, and the rules
    that chose it."""

    live: int = 0
    shadow: int = 0
    compared: int = 0
    agreed: int = 0
    rules: tuple[RuleCount, ...] = ()


@dataclass(frozen=True, slots=True)
class ReviewTally:
    """One candidate's proposals and verdicts, counted."""

    live: int = 0
    shadow: int = 0
    published: int = 0
    withdrawn: int = 0
    open: int = 0
    verdicts: tuple[tuple[str, int], ...] = ()
    median_seconds: float | None = None
    p90_seconds: float | None = None


class TierQueries:
    """The tier figures of every candidate, each query run once (cached)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.store.db.execute(sql).fetchall()

    @cached_property
    def _schema(self) -> set[str]:
        """``table`` and ``table.column`` names of the store's own tables that tiers use."""
        rows = self._rows(
            "SELECT table_name, column_name FROM duckdb_columns() "
            "WHERE database_name = current_database() AND schema_name = 'main' "
            "  AND table_name IN ('predictions', 'reviews', 'review_verdicts')")
        return {t for t, _ in rows} | {f"{t}.{c}" for t, c in rows}

    @property
    def has_tiers(self) -> bool:
        return "predictions.tier" in self._schema

    @cached_property
    def unassessed(self) -> dict[Key, int]:
        """Predictions not given a tier yet, of the candidates with at least one that was."""
        if not self.has_tiers:
            return {}
        rows = self._rows(
            "SELECT candidate, version, count(*) FILTER (WHERE tier IS NULL) FROM predictions "
            "GROUP BY ALL HAVING count(tier) > 0")
        return {(c, v): n for c, v, n in rows}

    @cached_property
    def tallies(self) -> dict[Key, dict[str, TierTally]]:
        """Per candidate and tier: predictions live and shadow, compared and agreed."""
        if not self.has_tiers:
            return {}
        rows = self._rows(
            "SELECT p.candidate, p.version, p.tier, "
            "  count(*) FILTER (WHERE p.mode = 'live'), "
            "  count(*) FILTER (WHERE p.mode IS DISTINCT FROM 'live'), "
            "  count(c.agree), count(*) FILTER (WHERE c.agree) "
            "FROM predictions p LEFT JOIN comparisons c ON c.event_id = p.event_id "
            "  AND c.candidate = p.candidate AND c.version IS NOT DISTINCT FROM p.version "
            "WHERE p.tier IS NOT NULL GROUP BY ALL")
        rules = self._rules
        out: dict[Key, dict[str, TierTally]] = defaultdict(dict)
        for c, v, tier, live, shadow, compared, agreed in rows:
            out[(c, v)][tier] = TierTally(live, shadow, compared, agreed,
                                          rules.get((c, v, tier), ()))
        return out

    @cached_property
    def _rules(self) -> dict[tuple[str, str | None, str], tuple[RuleCount, ...]]:
        rows = self._rows(
            "SELECT candidate, version, tier, coalesce(tier_rule, '?'), count(*) AS n "
            "FROM predictions WHERE tier IS NOT NULL "
            "GROUP BY ALL ORDER BY n DESC, 4")
        out: dict[tuple[str, str | None, str], list[RuleCount]] = defaultdict(list)
        for c, v, tier, rule, n in rows:
            out[(c, v, tier)].append(RuleCount(rule, n))
        return {key: tuple(found) for key, found in out.items()}

    @cached_property
    def reviews(self) -> dict[Key, ReviewTally]:
        """Per candidate: its proposals by mode and state, and its reviewers' verdicts."""
        if "reviews" not in self._schema:
            return {}
        with_verdicts = "review_verdicts" in self._schema
        decided = ("EXISTS (SELECT 1 FROM review_verdicts d WHERE d.review_id = r.review_id)"
                   if with_verdicts else "false")
        rows = self._rows(
            "SELECT candidate, version, count(*) FILTER (WHERE mode = 'live'), "  # noqa: S608 - our own clause
            "  count(*) FILTER (WHERE mode <> 'live'), "
            "  count(*) FILTER (WHERE mode = 'live' AND published_at IS NOT NULL), "
            "  count(*) FILTER (WHERE status = 'withdrawn'), "
            f"  count(*) FILTER (WHERE mode = 'live' AND status = 'open' AND NOT {decided}) "
            "FROM reviews r GROUP BY ALL")
        verdicts = self._verdicts() if with_verdicts else {}
        return {(c, v): ReviewTally(live, shadow, published, withdrawn, waiting,
                                    *verdicts.get((c, v), ((), None, None)))
                for c, v, live, shadow, published, withdrawn, waiting in rows}

    def _verdicts(self) -> dict[Key, tuple[tuple[tuple[str, int], ...], float | None,
                                          float | None]]:
        counts = ", ".join(f"count(*) FILTER (WHERE d.verdict = '{v}')" for v in VERDICTS)
        rows = self._rows(
            f"SELECT r.candidate, r.version, {counts}, "  # noqa: S608 - our own constants
            "  quantile_cont(epoch(d.decided_at) - epoch(coalesce(r.published_at, "
            "    r.proposed_at)), 0.5), "
            "  quantile_cont(epoch(d.decided_at) - epoch(coalesce(r.published_at, "
            "    r.proposed_at)), 0.9) "
            "FROM review_verdicts d JOIN reviews r USING (review_id) GROUP BY ALL")
        out = {}
        for c, v, *found, median, p90 in rows:
            out[(c, v)] = (tuple(zip(VERDICTS, found, strict=True)), median, p90)
        return out


def tier_section(queries: TierQueries, options: OwnerOptions, key: Key,
                 totals: Totals) -> TierSection | None:
    """The candidate's section by tier; ``None`` when it has no tier policy
    (``options.tiered``) or no prediction was given a tier."""
    if options.tiered is not None and key[0] not in options.tiered:
        return None
    tallies = queries.tallies.get(key)
    if not tallies:
        return None
    live = sum(t.live for t in tallies.values())
    shadow = sum(t.shadow for t in tallies.values())
    figures = tuple(_figures(tier, tallies.get(tier, TierTally()), live, shadow,
                             options.tier_rules) for tier in TIERS)
    return TierSection(
        assessed=live + shadow, live=live, shadow=shadow,
        unassessed=queries.unassessed.get(key, 0), tiers=figures,
        reviews=_reviews(queries.reviews.get(key, ReviewTally())),
        work=_work(figures, options, totals))


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _explained(rule: RuleCount, texts: tuple[str, ...]) -> RuleCount:
    """``rule`` with its text: the configured rule's for ``rules[i]``, else the reason."""
    if rule.rule.startswith("rules[") and rule.rule.endswith("]"):
        index = rule.rule[len("rules["):-1]
        known = index.isdigit() and int(index) < len(texts)
        return replace(rule, text=texts[int(index)] if known else None)
    return replace(rule, text=REASONS.get(rule.rule))


def _figures(tier: str, tally: TierTally, live: int, shadow: int,
             texts: tuple[str, ...]) -> TierFigures:
    n = tally.live + tally.shadow
    return TierFigures(
        tier=tier, predictions=n, live=tally.live, shadow=tally.shadow,
        share=_share(n, live + shadow), live_share=_share(tally.live, live),
        shadow_share=_share(tally.shadow, shadow),
        agreement=OwnerAgreement(*wilson(tally.agreed, tally.compared), n=tally.compared,
                                 agreed=tally.agreed),
        rules=tuple(_explained(rule, texts) for rule in tally.rules))


def _reviews(tally: ReviewTally) -> ReviewFigures:
    counts = dict(tally.verdicts)
    decided = sum(counts.values())
    return ReviewFigures(
        proposed=tally.live + tally.shadow, live=tally.live, shadow=tally.shadow,
        published=tally.published, withdrawn=tally.withdrawn, open=tally.open,
        decided=decided,
        verdicts=tuple(VerdictRate(v, counts.get(v, 0), *wilson(counts.get(v, 0), decided))
                       for v in VERDICTS),
        median_seconds=tally.median_seconds, p90_seconds=tally.p90_seconds)


def _work(figures: tuple[TierFigures, ...], options: OwnerOptions,
          totals: Totals) -> TierWork:
    by_tier = {f.tier: f for f in figures}
    auto, review = by_tier["auto"], by_tier["review"]
    handling, reviewing = options.handling_minutes_per_case, options.review_minutes_per_case

    def saved(auto_cases: int, review_cases: int) -> float:
        return auto_cases * handling + review_cases * (handling - reviewing)

    live = sum(f.live for f in figures)
    assessed = sum(f.predictions for f in figures)
    per_case = saved(auto.predictions, review.predictions) / assessed if assessed else None
    saved_live = saved(auto.live, review.live)
    days = max(totals.span_seconds / 86_400.0, 1.0)
    current = totals.predictions / days
    full = options.daily_volume

    def day(volume: float | None) -> float | None:
        return None if per_case is None or volume is None else per_case * volume

    def month(daily: float | None) -> float | None:
        return None if daily is None else daily * DAYS_PER_MONTH

    return TierWork(
        handling_minutes_per_case=handling, review_minutes_per_case=reviewing,
        auto_share=auto.share, live_auto_share=auto.live_share,
        minutes_saved_live=saved_live, minutes_saved_per_case=per_case,
        daily_volume_live=live / days, daily_volume_current=current, daily_volume_full=full,
        per_day_current=saved_live / days, per_month_current=saved_live / days * DAYS_PER_MONTH,
        per_day_all_live=day(current), per_month_all_live=month(day(current)),
        per_day_full=day(full), per_month_full=month(day(full)))
