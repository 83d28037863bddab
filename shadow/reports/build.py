"""The report in every format, from one place: the CLI, the daemon's jobs and its API.

:func:`full_report` makes a :class:`FullReport`: the core report
(``shadow.reports.summary``) and the owners' sections (verdict, over time, confusion,
coverage, cost, disagreements, rollout timeline; ``shadow.reports.owner``) with drift.
Its JSON keeps the core contract at the top level and adds the owners' sections under
``owner``. Markdown and HTML are the owners' views; ``table`` is the terminal summary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from shadow.config.file import Config
from shadow.core.models import utc_now
from shadow.reports.drift import (
    DriftError,
    DriftReport,
    DriftThresholds,
    first_days,
    last_days,
    measure_drift,
    period,
)
from shadow.reports.options import OwnerOptions
from shadow.reports.owner import owner_report
from shadow.reports.owner_model import OwnerReport
from shadow.reports.owner_queries import OwnerQueries
from shadow.reports.summary import CoreReport, core_report
from shadow.reports.verdict import headlines
from shadow.store.database import Store

FORMATS = ("table", "json", "markdown", "html")


def owner_options(config: Config, *, now: Callable[[], datetime] = utc_now) -> OwnerOptions:
    """The report's options: its own section, then the rollout's gates, then defaults."""
    spec = config.report
    gates = config.rollout.gates if config.rollout is not None else None
    threshold = spec.threshold if spec.threshold is not None else (
        gates.agreement if gates is not None else 0.9)
    max_error_rate = spec.max_error_rate if spec.max_error_rate is not None else (
        gates.max_error_rate if gates is not None and gates.max_error_rate is not None else 0.05)
    p95 = spec.max_p95_latency_ms if spec.max_p95_latency_ms is not None else (
        gates.max_p95_latency_ms if gates is not None else None)
    floor = spec.segment_floor if spec.segment_floor is not None else (
        gates.segments.floor if gates is not None else None)
    violations = spec.max_violation_rate if spec.max_violation_rate is not None else (
        gates.max_violation_rate if gates is not None else None)
    comparator = config.comparator
    specs = config.all_candidates()
    checked = frozenset(c.resolved_name for c in specs if c.checks) if specs else None
    tiered = _tiered(config)
    tiers = config.rollout.tiers if config.rollout is not None else None
    return OwnerOptions(
        threshold=threshold, max_error_rate=max_error_rate, max_p95_latency_ms=p95,
        min_compared=spec.min_compared, segment_min_samples=spec.segment_min_samples,
        segment_floor=floor, daily_volume=spec.daily_volume, redact=tuple(spec.redact),
        top_disagreements=spec.top_disagreements, top_violations=spec.top_violations,

        max_violation_rate=violations, checked=checked, tiered=tiered,
        tier_rules=tuple(rule.text() for rule in tiers.rules) if tiers is not None else (),
        handling_minutes_per_case=spec.handling_minutes_per_case,
        review_minutes_per_case=spec.review_minutes_per_case,
        prediction_label=comparator.prediction_path, outcome_label=comparator.outcome_path,
        now=now)


def _tiered(config: Config) -> frozenset[str]:
    """The candidate with a tier policy: the rollout's, named or the only one configured."""
    rollout = config.rollout
    if rollout is None or rollout.tiers is None:
        return frozenset()
    if rollout.candidate is not None:
        return frozenset({rollout.candidate})
    specs = config.all_candidates()
    return frozenset({specs[0].resolved_name}) if len(specs) == 1 else frozenset()


@dataclass(frozen=True, slots=True)
class FullReport:
    """The core report and the owners' sections, as every format renders them."""

    core: CoreReport
    owner: OwnerReport
    currency: str | None
    drift: DriftReport | None
    """``None`` when the configuration asks for no drift, or nothing is stored yet."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON: the core contract, the owners' sections under ``owner``."""
        owner = self.owner.as_dict()
        owner = {**owner, "options": {**owner["options"], "currency": self.currency},
                 "drift": self.drift.as_dict() if self.drift is not None else None}
        return {**self.core.as_dict(), "owner": owner}


def full_report(store: Store, config: Config, *,
                now: Callable[[], datetime] = utc_now) -> FullReport:
    """The core report with the owners' sections; the figures both read are queried once."""
    options = owner_options(config, now=now)
    queries = OwnerQueries(store, options)
    return FullReport(
        core=core_report(store, now=now, queries=queries),
        owner=owner_report(store, options, queries=queries),
        currency=config.report.currency,
        drift=measure_configured_drift(store, config, now=now))


def measure_configured_drift(store: Store, config: Config, *,
                             now: Callable[[], datetime] = utc_now) -> DriftReport | None:
    """Drift as the ``drift`` section asks; ``None`` when not asked for or nothing is stored."""
    spec = config.drift
    if spec is None:
        return None
    try:
        reference = (period(spec.reference_start, spec.reference_end)
                     if spec.reference_start is not None and spec.reference_end is not None
                     else first_days(store, spec.reference_days))
        current = last_days(store, spec.current_days, now())
    except DriftError:
        return None  # no events yet
    return measure_drift(
        store, reference=reference, current=current, numeric_fields=spec.numeric_fields,
        bins=spec.bins, outcome_label=config.comparator.outcome_path,
        thresholds=DriftThresholds(psi=spec.psi, p_value=spec.p_value,
                                   new_outcome_share=spec.new_outcome_share))


def report_text(store: Store, config: Config, fmt: str, *, out: Path | None = None,
                color: bool = False, now: Callable[[], datetime] = utc_now) -> str:
    """The report of ``store`` in ``fmt``, for a file ``out`` when given: an HTML report
    written to a file gets every disagreement in a CSV beside it
    (:func:`shadow.reports.disagreements_csv.disagreements_path`), linked from the page."""
    report = full_report(store, config, now=now)
    if fmt != "html" or out is None:
        return render_report(report, fmt, color=color)
    from shadow.reports.disagreements_csv import disagreements_path, write_disagreements_csv

    csv_path = disagreements_path(out)
    write_disagreements_csv(store, report.owner.options, csv_path)
    return render_report(report, fmt, csv_href=csv_path.name)


def render_report(report: FullReport, fmt: str, *, color: bool = False,
                  csv_href: str | None = None) -> str:
    """Text of ``full_report`` in one of :data:`FORMATS`; an HTML report links every
    disagreement at ``csv_href`` when given."""
    from shadow.reports import render

    if fmt == "json":
        return render.to_json(report.as_dict())
    if fmt == "table":
        return render.to_table(report.core, color=color, verdicts=headlines(report.owner))
    if fmt == "markdown":
        return render.owner_markdown(report.owner, report.drift)
    if fmt == "html":
        from shadow.reports.html import to_html

        return to_html(report.owner, currency=report.currency, drift=report.drift,
                       csv_href=csv_href)
    raise ValueError(f"format: expected one of {FORMATS}, got {fmt!r}")
