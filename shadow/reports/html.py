"""The owner report as one self-contained HTML file.

:func:`to_html` renders an :class:`~shadow.reports.owner_model.OwnerReport`: inline CSS,
inline SVG charts from :mod:`shadow.reports.charts`, no script, no font, no image and no
URL of any kind, so the file opens offline and prints cleanly. A section that is
``None`` or empty, or a figure that is ``None``, reads "no data" instead of failing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from rollout.audit import credited
from shadow.reports import charts
from shadow.reports.charts import PERCENT, Bar, esc, milliseconds, no_data, pct
from shadow.reports.drift import DriftReport
from shadow.reports.owner_model import (
    ActionExample,
    Baseline,
    Confusion,
    CostProjection,
    CoveragePoint,
    Errors,
    FieldRate,
    LabelDelays,
    OwnerAgreement,
    OwnerCandidate,
    OwnerLatency,
    OwnerReport,
    RolloutSection,
    RuleCount,
    Segment,
    TierSection,
    TimelineEntry,
    ToolRate,
    Verdict,
    Violations,
    Withdrawn,
)
from shadow.reports.readable import (
    INTERVALS,
    completeness_facts,
    duration,
    hours,
    minutes,
    moment,
    work_rows,
)

VERDICTS = {
    "ready": ("READY", "ready"),
    "not_ready": ("NOT READY", "not-ready"),
    "not_enough_data": ("NOT ENOUGH DATA", "no-verdict"),
}

CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #111827; background: #fff; margin: 0 auto; max-width: 1100px; padding: 24px; }
h1 { font-size: 1.7em; margin: 0 0 4px; } h2 { margin-top: 1.6em; }
h3 { margin: 1.4em 0 .4em; font-size: 1.1em; }
.meta, .muted, .no-data { color: #6b7280; } .no-data { font-style: italic; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border: 1px solid #e5e7eb; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { display: inline-block; font-size: 2em; font-weight: 800; padding: 6px 18px;
           border-radius: 8px; border: 3px solid; margin: 4px 0 10px; }
.ready { color: #065f46; border-color: #059669; background: #ecfdf5; }
.not-ready { color: #991b1b; border-color: #dc2626; background: #fef2f2; }
.no-verdict { color: #92400e; border-color: #d97706; background: #fffbeb; }
.pass { color: #065f46; font-weight: 700; } .fail { color: #991b1b; font-weight: 700; }
.unknown { color: #92400e; font-weight: 700; } .na { color: #6b7280; }
.headline { margin: 8px 0 14px; padding: 6px 14px; border-left: 6px solid; border-radius: 4px; }
.verdict-line { font-size: 1.25em; font-weight: 700; margin: 4px 0; }
.next-step { margin: 2px 0 8px; }
table.facts td, table.facts th { padding: 2px 8px; font-size: .95em; }
.payload dt { color: #6b7280; font-size: 12px; margin-top: 4px; }
.payload dd { margin: 0; white-space: pre-wrap; word-break: break-word; font-size: 13px; }
.text { white-space: pre-wrap; word-break: break-word; }
.badge { font-weight: 700; padding: 1px 6px; border-radius: 4px; border: 1px solid; }
section.candidate { border-top: 3px solid #111827; margin-top: 32px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 8px 24px; }
svg.chart { max-width: 100%; height: auto; font-size: 12px; fill: #111827; }
svg.chart text.axis { fill: #6b7280; font-size: 11px; } svg.chart text.marker { fill: #991b1b; }
pre { white-space: pre-wrap; word-break: break-word; max-width: 420px; max-height: 260px;
      overflow: auto; margin: 0; font-size: 12px; background: #f9fafb; padding: 4px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11pt; }
  section.candidate { break-before: page; page-break-before: always; border-top: none; }
  .verdict, th, pre { background: #fff !important; }
  pre { max-height: none; overflow: visible; }
  table, svg, .check { break-inside: avoid; page-break-inside: avoid; }
}
"""


def to_html(report: OwnerReport, *, currency: str | None = None,
            drift: DriftReport | None = None, csv_href: str | None = None) -> str:
    """Render an owner report as a complete, self-contained HTML document; money in
    ``currency``, ``drift`` in a section of its own when given, and a link to every
    disagreement at ``csv_href`` (a file beside this one) when given."""
    candidates = report.candidates
    baseline = report.human_baseline
    body = [
        "<h1>Shadow comparison report</h1>",
        f'<p class="meta">Generated {esc(moment(report.generated_at.isoformat()))} from store '
        f"{esc(report.store or '–')}</p>",
        _headlines(candidates),
        _completeness(report),
        "<h2>Candidates</h2>",
        _summary(candidates, baseline),
        "<h2>Human-to-human baseline</h2>",
        _baseline_table(baseline),
        "<h2>Rollout</h2>",
        _rollout(report.rollout),
    ]
    if drift is not None:
        body += ["<h2>Drift</h2>", _drift(drift)]
    body += [_candidate(c, baseline, currency or "", csv_href) for c in candidates]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<title>Shadow comparison report</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def _headlines(candidates: Sequence[OwnerCandidate]) -> str:
    """Every candidate's verdict, the reason in one line and the next step: the first thing
    on the page."""
    if not candidates:
        return '<p class="verdict-line">No predictions in this store yet.</p>'
    several = len(candidates) > 1
    parts = []
    for c in candidates:
        who = f"{_identity(c)}: " if several else ""
        line = c.verdict.line or VERDICTS.get(c.verdict.status, VERDICTS["not_enough_data"])[0]
        colour = VERDICTS.get(c.verdict.status, VERDICTS["not_enough_data"])[1]
        parts.append(
            f'<div class="headline {colour}" data-candidate="{esc(c.name)}">'
            f'<p class="verdict-line">{who}{_text(line)}</p>'
            + (f'<p class="next-step">{_text(c.verdict.next_step)}</p>'
               if c.verdict.next_step else "") + "</div>")
    return "".join(parts)


def _text(value: str) -> str:
    """Escaped text whose percent signs stay with their numbers."""
    return esc(value).replace(" %", PERCENT)


def _completeness(report: OwnerReport) -> str:
    """What the report is made of, near the top: window, events, what is missing."""
    facts = completeness_facts(report.completeness, report.candidates)
    if not facts:
        return ""
    rows = "".join(f"<tr><th>{esc(label)}</th><td>{_text(value)}</td></tr>"
                   for label, value in facts)
    return f'<table class="facts">{rows}</table>'


def _drift(drift: DriftReport) -> str:
    """The current window against the reference: verdict, reasons and the statistics."""
    verdict = ('<p class="fail"><strong>Drift detected:</strong> '
               + esc("; ".join(drift.reasons)) + "</p>"
               if drift.drifted else "<p>No drift beyond the thresholds.</p>")
    ref, cur = drift.reference, drift.current
    span = (f"<p>Current window {esc(cur.start.isoformat())} – {esc(cur.end.isoformat())} "
            f"({_count(drift.current_events)} events) against the reference "
            f"{esc(ref.start.isoformat())} – {esc(ref.end.isoformat())} "
            f"({_count(drift.reference_events)} events).</p>")
    segments = _table(
        ["segment field", "chi-squared", "dof", "p-value"],
        [[esc(s.field), _float(s.chi2), _count(s.dof), _float(s.p_value, 4)]
         for s in drift.segments], {1, 2, 3})
    numeric = _table(
        ["field", "PSI", "KS D", "KS p-value"],
        [[esc(n.field), _float(n.psi, 3), _float(n.ks, 3), _float(n.ks_p_value, 4)]
         for n in drift.numeric], {1, 2, 3})
    share = drift.new_outcome_share
    new = ("" if share is None else
           f"<p>Outcomes never seen in the reference: {pct(share)} of the current window.</p>")
    return verdict + span + segments + numeric + new


def _float(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    """A table; cells are already HTML, headers are escaped; ``numeric`` right-aligns."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    lines = ["".join(f'<td class="num">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
                     for i, cell in enumerate(row)) for row in rows]
    return f"<table><tr>{head}</tr>{''.join(f'<tr>{line}</tr>' for line in lines)}</table>"


def _count(value: float | None) -> str:
    return "no data" if value is None else f"{int(value):,}"


def _interval(block: OwnerAgreement | Baseline | None) -> str:
    if block is None or block.rate is None:
        return "no data"
    if block.low is None or block.high is None:
        return pct(block.rate)
    return f"{pct(block.rate)} [{pct(block.low)}, {pct(block.high)}]"


def _money(value: float | None, currency: str, digits: int = 2) -> str:
    if value is None:
        return "no data"
    return esc(f"{currency}{float(value):,.{digits}f}")


def _millis(value: float | None) -> str:
    return "no data" if value is None else milliseconds(float(value))


def _identity(candidate: OwnerCandidate) -> str:
    version = candidate.version
    return esc(candidate.name or "unnamed") + (f" ({esc(version)})" if version else "")


def _verdict_badge(verdict: Verdict, cls: str = "badge") -> str:
    text, colour = VERDICTS.get(verdict.status, VERDICTS["not_enough_data"])
    return f'<span class="{cls} {colour}">{text}</span>'


def _summary(candidates: Sequence[OwnerCandidate], baseline: Baseline | None) -> str:
    if not candidates:
        return no_data("candidates")
    rows = [[_identity(c), _verdict_badge(c.verdict), _interval(c.agreement),
             _count(c.agreement.n), pct(c.errors.rate), _violation_rate(c.violations),
             _p95(c.latency), _per_decision(c.cost)] for c in candidates]
    table = _table(["candidate", "verdict", "agreement (95\u00a0% Wilson)", "compared",
                    "error rate", "violation rate", "p95 latency", "cost per decision"], rows,
                   {3, 4, 5, 6, 7})
    return table + f'<p class="meta">Humans agree with each other: {_interval(baseline)}</p>'


def _candidate(candidate: OwnerCandidate, baseline: Baseline | None, currency: str,
               csv_href: str | None) -> str:
    name = _identity(candidate)
    charts_html = _panels([
        ("Agreement over time",
         charts.over_time(f"{name}: agreement over time", candidate.over_time)),
        ("Agreement next to the human baseline",
         _baseline_chart(name, candidate.agreement, baseline)),
        ("Agreement per segment", _segments(name, candidate.segments, baseline)),
        ("Agreement per field", _fields(name, candidate.fields)),
    ])
    parts = [f'<section class="candidate"><h2>{name}</h2>',
             _verdict(candidate.verdict),
             f"<p>Agreement with human outcomes: <strong>{_interval(candidate.agreement)}"
             f"</strong> over {_count(candidate.agreement.n)} compared"
             " decisions (95\u00a0% Wilson interval).</p>",
             f'<p class="meta">{_text(INTERVALS)}</p>',
             charts_html,
             _segment_table(candidate.segments, baseline),
             _confusion(candidate.confusion),
             _coverage(name, candidate.coverage),
             _latency(name, candidate.latency),
             _errors(candidate.errors),
             _violations(candidate.violations),
             _cost(candidate.cost, currency),
             _tier_section(candidate.tiers),
             _tools(candidate.tools),
             _disagreements(candidate, csv_href),
             "</section>"]
    return "".join(parts)


def _empty(chart: str) -> bool:
    return chart.startswith('<p class="no-data">')


def _panels(blocks: Sequence[tuple[str, str]]) -> str:
    """Charts side by side; those with nothing to draw collapse into one line."""
    drawn = "".join(f"<div><h3>{esc(title)}</h3>{chart}</div>"
                    for title, chart in blocks if not _empty(chart))
    empty = [title for title, chart in blocks if _empty(chart)]
    grid = f'<div class="grid">{drawn}</div>' if drawn else ""
    return grid + (no_data(", ".join(empty)) if empty else "")


def _per_decision(cost: CostProjection) -> str:
    return "n/a" if cost.per_decision is None else _money(cost.per_decision, "", 4)


def _p95(latency: OwnerLatency) -> str:
    return "n/a" if latency.p95 is None else _millis(latency.p95)


_STATUS_CLASS = {"pass": "pass", "fail": "fail", "n/a": "na"}


def _verdict(verdict: Verdict) -> str:
    rows = [[esc(c.name),
             f'<span class="{_STATUS_CLASS.get(c.status, "unknown")}">'
             f'{esc(c.status if c.status == "n/a" else (c.status or "unknown").upper())}</span>',
             _figure(c.value, c.unit), _figure(c.threshold, _threshold_unit(c.unit)),
             _text(c.detail or "")]
            for c in verdict.checks]
    table = (_table(["check", "status", "value", "threshold", "detail"], rows, {2, 3})
             if rows else no_data("checklist"))
    return f'<div class="check">{_verdict_badge(verdict, "verdict")}{table}</div>'


def _threshold_unit(unit: str) -> str:
    """Segments are counted against a floor that is a share."""
    return "rate" if unit == "segments" else unit


def _figure(value: Any, unit: str) -> str:
    """A check's value or threshold in its unit: shares as percentages, milliseconds."""
    if value is None:
        return "–"
    if unit == "rate":
        return pct(float(value))
    if unit == "ms":
        return milliseconds(float(value))
    if unit == "percent":
        return f"{float(value):g}{PERCENT}"
    if unit == "money":
        return _money(float(value), "", 4)
    return _value(value)


def _value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return esc(value)


def _baseline_chart(name: str, agreement: OwnerAgreement, baseline: Baseline | None) -> str:
    rows = [Bar("AI vs human", agreement.rate, agreement.low, agreement.high)]
    if baseline:
        rows.append(Bar("human vs human", baseline.rate, baseline.low, baseline.high,
                        colour=charts.HUMAN_COLOUR))
    return charts.interval_bars(f"{name}: AI agreement and human-to-human agreement", rows)


def _segments(name: str, segments: Sequence[Segment], baseline: Baseline | None) -> str:
    rows = [Bar(f"{s.field}={s.value} (n={s.compared})", s.rate, s.low, s.high,
                floor=s.floor, below_floor=s.below_floor) for s in segments]
    chart = charts.interval_bars(f"{name}: agreement per segment with floors", rows)
    if _empty(chart):
        return chart
    below = [esc(f"{s.field}={s.value}") for s in segments if s.below_floor]
    if below:
        chart += f'<p class="fail">Below floor: {", ".join(below)}</p>'
    return chart


def _segment_table(segments: Sequence[Segment], baseline: Baseline | None) -> str:
    """Each segment's agreement beside how often people agree on its cases."""
    if not segments:
        return ""
    people = [baseline.segment(s.field, s.value) if baseline else None for s in segments]
    rows = [[esc(f"{s.field}={s.value}"), _count(s.compared),
             _interval_of(s.rate, s.low, s.high),
             "–" if h is None else f"{_interval_of(h.rate, h.low, h.high)} ({_count(h.pairs)})",
             pct(s.floor, 0), '<span class="fail">below</span>' if s.below_floor else ""]
            for s, h in zip(segments, people, strict=True)]
    return "<h3>Segments: the AI next to people</h3>" + _table(
        ["segment", "compared", "AI agrees with people (95\u00a0% Wilson)",
         "people agree with each other (pairs)", "floor", ""], rows, {1, 2, 3, 4})


def _interval_of(rate: float | None, low: float | None, high: float | None) -> str:
    if rate is None:
        return "no data"
    if low is None or high is None:
        return pct(rate)
    return f"{pct(rate)} [{pct(low)}, {pct(high)}]"


def _fields(name: str, fields: Sequence[FieldRate]) -> str:
    rows = [Bar(f"{f.field} (n={f.compared})", f.rate, f.low, f.high) for f in fields]
    return charts.interval_bars(f"{name}: agreement per field", rows)


def _confusion(confusion: Confusion | None) -> str:
    title = "<h3>Confusion matrix (rows: human label, columns: AI label)</h3>"
    if confusion is None or not confusion.labels:
        return no_data("Confusion matrix")
    labels, matrix = confusion.labels, confusion.matrix
    top = max((max(row, default=0) for row in matrix), default=0) or 1
    head = "".join(f"<th>{esc(label)}</th>" for label in labels)
    lines = []
    for label, row in zip(labels, matrix, strict=False):  # tolerate a short matrix
        cells = "".join(
            f'<td class="num" style="background: rgba(37, 99, 235, {0.08 + 0.6 * v / top:.2f})">'
            f"{int(v):,}</td>" for v in row)
        lines.append(f"<tr><th>{esc(label)}</th>{cells}</tr>")
    other = f'<p class="meta">Other labels: {_count(confusion.other)}</p>'
    return f"{title}<table><tr><th>human \\ AI</th>{head}</tr>{''.join(lines)}</table>{other}"


def _coverage(name: str, coverage: Sequence[CoveragePoint] | None) -> str:
    title = "<h3>Coverage against agreement by confidence threshold</h3>"
    if not coverage:
        return no_data("Coverage by confidence (the candidate reports no confidence)")
    chart = charts.coverage_curve(f"{name}: coverage and agreement by threshold", coverage)
    rows = [[_value(r.threshold), pct(r.coverage), pct(r.agreement), _count(r.n)]
            for r in coverage]
    table = _table(["threshold", "AI would handle", "agreement", "compared"], rows, {0, 1, 2, 3})
    return f'{title}<div class="grid"><div>{chart}</div><div>{table}</div></div>'


def _latency(name: str, latency: OwnerLatency) -> str:
    title = "<h3>Latency</h3>"
    if latency.p50 is None and not latency.histogram:
        return '<p class="no-data">Latency: n/a, no successful call was timed</p>'
    figures = " · ".join(f"{key} <strong>{_millis(value)}</strong>"
                         for key, value in (("p50", latency.p50), ("p95", latency.p95),
                                            ("p99", latency.p99)))
    chart = charts.latency_histogram(f"{name}: latency distribution", latency)
    return f"{title}<p>{figures}</p>{chart}"


def _errors(errors: Errors) -> str:
    title = "<h3>Errors</h3>"
    line = f"<p>Error rate {pct(errors.rate, 2)} ({_count(errors.count)} errors)</p>"
    if not errors.count:
        return '<p class="no-data">Errors: none</p>'
    rows = [[esc(k.kind), _count(k.count), f"<pre>{esc(k.example)}</pre>"]
            for k in errors.kinds]
    table = _table(["kind", "count", "example"], rows, {1}) if rows else no_data("error kinds")
    return title + line + table


def _unconfigured(violations: Violations) -> bool:
    """No checks configured and nothing caught: "0 %" would claim outputs were checked."""
    return violations.configured is False and not violations.violating


def _violation_rate(violations: Violations) -> str:
    return "–" if _unconfigured(violations) else pct(violations.rate, 2)


def _violations(violations: Violations) -> str:
    """Outputs caught by a hard-constraint check: the share, by check, recent examples."""
    title = "<h3>Hard-constraint violations</h3>"
    if _unconfigured(violations):
        return title + "<p>No hard-constraint checks are configured for this candidate.</p>"
    if not violations.checked:
        return no_data("Hard-constraint violations")
    checked, violating = violations.checked, violations.violating
    budget, rate = violations.threshold, violations.rate
    line = (f"<p><strong>{pct(rate, 2)}</strong> of checked outputs violated "
            f"a hard constraint ({_count(violating)} of {_count(checked)} checked; errored "
            f"predictions are not checked).")
    if budget is not None:
        ok = rate is not None and rate <= budget
        line += (f' Budget {pct(budget, 2)}: <span class="{"pass" if ok else "fail"}">'
                 f'{"PASS" if ok else "FAIL"}</span>.')
    line += "</p>"
    if not violating:
        return title + line
    kinds = [[esc(k.check), _count(k.predictions), pct(k.rate, 2), _count(k.count)]
             for k in violations.kinds]
    table = _table(["check", "outputs caught", "share of checked", "violations"], kinds,
                   {1, 2, 3}) if kinds else no_data("violations by check")
    examples = [[f"{esc(e.event_id)}<br><span class=\"muted\">key {esc(e.key)}"
                 f"<br>{esc(e.occurred_at or '')}</span>",
                 f"<pre>{esc(chr(10).join(e.violations))}</pre>"]
                for e in violations.examples]
    shown = ("<h3>Recent violations</h3>" + _table(["event", "violations"], examples, set())
             if examples else "")
    return title + line + table + shown


def _cost(cost: CostProjection, currency: str) -> str:
    title = "<h3>Cost</h3>"
    if cost.per_decision is None:
        return title + '<p class="no-data">The candidate reports no cost.</p>'
    per_decision = _money(cost.per_decision, currency, 4)
    line = f"<p>Cost per decision: <strong>{per_decision}</strong></p>"
    current = cost.daily_volume_current
    rows = [[label, _count(volume), _money(day, currency), _money(month, currency)]
            for label, volume, day, month in (
                ("current traffic", current, cost.per_day_current, cost.per_month_current),
                ("10x current", None if current is None else 10 * current, cost.per_day_10x,
                 cost.per_month_10x),
                ("full production", cost.daily_volume_full, cost.per_day_full,
                 cost.per_month_full))]
    return title + line + _table(["volume", "decisions per day", "per day", "per month"],
                                 rows, {1, 2, 3})


_VERDICT_WORDS = {"approve": "approved", "edit": "edited", "reject": "rejected"}


def _tier_section(tiers: TierSection | None) -> str:
    """Per tier: volume live and in shadow, share, agreement and what chose it; the reviews;
    the people's time saved, projected like the cost. Nothing without a tier policy."""
    if tiers is None:
        return ""
    intro = (f'<p class="meta">{_count(tiers.assessed)} predictions given a tier: '
             f"{_count(tiers.live)} live, {_count(tiers.shadow)} in shadow (what the tier "
             f"would have done){_unassessed(tiers.unassessed)}. Agreement is with the "
             "person's outcome; a reviewer's approve or edit is one too, seen with the "
             "proposal in view.</p>")
    rows = [[esc(t.tier), _count(t.predictions), pct(t.share), _count(t.live),
             pct(t.live_share), _count(t.shadow), pct(t.shadow_share),
             f"{_interval(t.agreement)} (n={_count(t.agreement.n)})",
             _chosen_by(t.rules)]
            for t in tiers.tiers]
    table = _table(["tier", "predictions", "share", "live", "live share", "shadow",
                    "shadow share", "agreement (95 % Wilson)", "chosen by"], rows,
                   {1, 2, 3, 4, 5, 6, 7})
    return ("<h3>Tiers</h3>" + intro + table + _reviews(tiers) + _work(tiers))


def _chosen_by(rules: Sequence[RuleCount]) -> str:
    """What chose the tier, one line each: ``rules[0] tool add_tag → auto: 44``."""
    if not rules:
        return "–"
    return "".join(f"<div>{esc(r.rule)}"
                   + (f' <span class="muted">{esc(r.text)}</span>' if r.text else "")
                   + f": {_count(r.predictions)}</div>" for r in rules)


def _unassessed(count: int) -> str:
    return f"; {_count(count)} not assessed yet" if count else ""


def _reviews(tiers: TierSection) -> str:
    r = tiers.reviews
    if not r.proposed and not r.decided:
        return '<p class="no-data">Reviews: no proposal of tier review yet.</p>'
    line = (f"<p>Proposals: {_count(r.live)} live ({_count(r.published)} sent for review, "
            f"{_count(r.open)} open, {_count(r.withdrawn)} withdrawn), {_count(r.shadow)} in "
            f"shadow. Time to review: median <strong>{esc(duration(r.median_seconds))}"
            f"</strong>, p90 <strong>{esc(duration(r.p90_seconds))}</strong> "
            f"({_count(r.decided)} verdicts).</p>")
    rows = [[esc(_VERDICT_WORDS.get(v.verdict, v.verdict)), _count(v.count),
             _interval_of(v.rate, v.low, v.high)] for v in r.verdicts]
    return ("<h3>Reviews</h3>" + line
            + _table(["verdict", "reviews", "rate (95 % Wilson)"], rows, {1, 2}))


def _work(tiers: TierSection) -> str:
    w = tiers.work
    line = (f"<p>Work taken off people's hands: <strong>{pct(w.auto_share)}</strong> of cases "
            f"handled in tier auto (live: {pct(w.live_auto_share)}); "
            f"<strong>{esc(minutes(w.minutes_saved_live))}</strong> of people's time saved by "
            f"the live decisions so far, at {w.handling_minutes_per_case:g} minutes per case "
            f"handled by a person and {w.review_minutes_per_case:g} per review.</p>")
    rows = [[_text(label), _count(volume), esc(minutes(day)), esc(hours(month))]
            for label, volume, day, month in work_rows(w)]
    return ("<h3>People's time saved</h3>" + line
            + _table(["traffic", "decisions per day", "saved per day", "saved per month"],
                     rows, {1, 2, 3}))


def _pretty(value: Any) -> str:
    if value is None:
        return "–"
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False,
                                                              default=str)
    return f"<pre>{esc(text)}</pre>"


def _fields_list(value: Any) -> str:
    """An object as its fields, in their order, one name over its value; text keeps its line
    breaks (``white-space: pre-wrap``), nested values read as indented JSON."""
    if value is None:
        return "–"
    if not isinstance(value, dict):
        return f'<div class="text">{esc(_scalar(value))}</div>'
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(_scalar(v, indent=2))}</dd>"
                    for k, v in value.items())
    return f'<dl class="payload">{items}</dl>'


def _segment(segment: Any) -> str:
    """``name: value`` lines for the usual flat segment; JSON for anything nested."""
    if not segment:
        return "–"
    if isinstance(segment, dict) and not any(isinstance(v, dict | list)
                                             for v in segment.values()):
        return "<br>".join(f'<span class="muted">{esc(k)}:</span> {esc(_scalar(v))}'
                           for k, v in sorted(segment.items()))
    return _pretty(segment)


def _scalar(value: Any, indent: int | None = None) -> str:
    return value if isinstance(value, str) else json.dumps(value, indent=indent,
                                                           ensure_ascii=False, default=str)


def _disagreements(candidate: OwnerCandidate, csv_href: str | None) -> str:
    """The most recent disagreements, each with its times labelled and the payload's fields
    that matter first; the count of all of them and where to read every one."""
    title = "<h3>Disagreements</h3>"
    rows = candidate.disagreements
    if not rows:
        return no_data("Disagreements")
    total = candidate.agreement.n - candidate.agreement.agreed
    shown = (f"The {_count(len(rows))} most recent of {_count(total)} disagreements"
             if total > len(rows) else f"All {_count(len(rows))} disagreements")
    link = (f' Every one of them, redacted alike: <a href="{esc(csv_href)}">{esc(csv_href)}</a>'
            " (CSV)." if csv_href else "")
    intro = (f'<p class="meta">{shown}, newest event first. The payload\'s fields that '
             f"matter are shown first; redacted fields read [redacted].{link}</p>")
    cells = [[f"{esc(r.event_id)}<br><span class=\"muted\">case {esc(r.key)}<br>"
              f"event time {esc(moment(r.occurred_at))}<br>"
              f"decided {esc(moment(r.decided_at))}</span>",
              _segment(r.segment), _fields_list(r.payload),
              _fields_list(r.output), _fields_list(r.outcome)] for r in rows]
    headers = ["case and times", "segment", "payload", "AI output", "human outcome"]
    if any(r.note for r in rows):
        # A score or a judge's reason says why the two were found to differ.
        headers.append("comparator's note")
        for row, r in zip(cells, rows, strict=True):
            row.append(f'<div class="text">{esc(r.note or "")}</div>')
    return title + intro + _table(headers, cells, set())


def _tools(tools: Sequence[ToolRate]) -> str:
    """Per tool: precision, recall, argument agreement and recent extra and missed actions;
    nothing at all when no ``actions`` comparator judged the candidate."""
    if not tools:
        return ""
    intro = ('<p class="meta">Precision: of the AI\'s proposed actions of the tool, the share '
             "the person also took; recall: of the person's, the share the AI proposed; "
             "argument agreement: the share of argument verdicts that agreed. Examples are "
             "the most recent, arguments redacted like the disagreements.</p>")
    rows = [[f"<code>{esc(t.tool)}</code>",
             f"{pct(t.precision)} ({_count(t.matched)} of {_count(t.proposed)})",
             f"{pct(t.recall)} ({_count(t.matched)} of {_count(t.taken)})",
             f"{pct(t.argument_agreement)} (n={_count(t.arguments_compared)})",
             _action_examples(t.extra), _action_examples(t.missed)] for t in tools]
    headers = ["tool", "precision", "recall", "argument agreement", "extra (AI only)",
               "missed (person only)"]
    return "<h3>Actions per tool</h3>" + intro + _table(headers, rows, {1, 2, 3})


def _action_examples(examples: Sequence[ActionExample]) -> str:
    if not examples:
        return "–"
    return "".join(f'<div>{esc(e.event_id)} <span class="muted">case {esc(e.key)}</span>'
                   f"{_pretty(e.arguments)}</div>" for e in examples)


def _baseline_table(baseline: Baseline | None) -> str:
    if not baseline:
        return no_data("human-to-human baseline (no case has outcomes from two people)")
    return (f"<p>On {_count(baseline.keys)} cases with outcomes from more than one person"
            f" ({_count(baseline.pairs)} pairs, {_count(baseline.agreed)} agreed),"
            f" people agree with each other <strong>{_interval(baseline)}</strong>.</p>")


def _label_delays(labels: LabelDelays | None) -> str:
    """How late labels came, by verdict; the rollout's gates count one vote per key once
    its label window has passed."""
    if labels is None or not labels.by_verdict:
        return ""
    parts = [f"{'agreements' if d.verdict == 'agree' else 'disagreements'}: median "
             f"{duration(d.median_seconds)}, 95th percentile {duration(d.p95_seconds)}"
             f" ({_count(d.labelled)} keys)" for d in labels.by_verdict]
    warning = (" <strong>Disagreements are labelled later than agreements</strong>: the gates "
               "judge a key only once its label window has passed, and count a key still "
               "unlabelled then against the AI." if labels.disagreements_later else "")
    return (f"<p>The rollout's gates count one vote per {esc(labels.unit)}. "
            f"Label delays in the current step: {esc('; '.join(parts))}.{warning}</p>")


def _withdrawn(withdrawn: Sequence[Withdrawn]) -> str:
    """Live decisions production never received, and why."""
    if not withdrawn:
        return ""
    parts = [f"{_count(w.count)} of {esc(w.candidate)} ({esc(w.reason)})" for w in withdrawn]
    return f"<p>Live decisions withdrawn, never published: {'; '.join(parts)}.</p>"


def _rollout(rollout: RolloutSection) -> str:
    state = rollout.state
    if state is None and not rollout.timeline and not rollout.withdrawn:
        return '<p class="no-data">No rollout configured: the report judges shadow data only.</p>'
    state_html = (_table(["field", "value"],
                         [[esc(f.name), _value(getattr(state, f.name))]
                          for f in dataclasses.fields(state)], set())
                  if state else no_data("rollout state"))
    state_html += _label_delays(rollout.labels) + _withdrawn(rollout.withdrawn)
    timeline = rollout.timeline
    if not timeline:
        return state_html + no_data("rollout timeline")
    rows = [[esc(e.at), esc(_by(e)), esc(e.action),
             f"{_value(e.from_step)} → {_value(e.to_step)}",
             "–" if e.percent is None else f"{float(e.percent):g}{PERCENT}",
             esc(e.status), esc(e.reason or "")] for e in timeline]
    table = _table(["at", "by", "action", "step", "traffic", "status", "reason"], rows, {4})
    chart = charts.rollout_steps("Rollout: traffic share after each event", timeline)
    return state_html + chart + table


def _by(event: TimelineEntry) -> str:
    """The token and the claimed actor, as the audit trail vouches for them."""
    return credited(str(event.actor), event.token)
