"""Text forms of the report: a terminal table, the owners' Markdown and JSON."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from shadow.reports.charts import milliseconds
from shadow.reports.drift import DriftReport
from shadow.reports.owner_model import (
    Baseline,
    Check,
    OwnerAgreement,
    OwnerCandidate,
    OwnerReport,
    Segment,
    TierSection,
    ToolRate,
    Violations,
)
from shadow.reports.queries import DeadLetterRow
from shadow.reports.readable import INTERVALS, completeness_facts, duration, hours, minutes
from shadow.reports.summary import (
    Agreement,
    CandidateSummary,
    CoreReport,
    Cost,
    FieldAgreement,
    SegmentAgreement,
)
from shadow.reports.verdict import LABELS, NA, Headline, percent


def to_json(values: dict[str, Any]) -> str:
    """Plain values (a report's ``as_dict()``) as indented JSON text."""
    text: str = orjson.dumps(values, option=orjson.OPT_INDENT_2).decode()
    return text + "\n"


def interval(agreement: Agreement | OwnerAgreement) -> str:
    if agreement.rate is None:
        return "–"
    low, high = percent(agreement.low), percent(agreement.high)
    return f"{percent(agreement.rate)} [{low}, {high}]"


def millis(value: float | None) -> str:
    return "–" if value is None else milliseconds(value)


def _cost(cost: Cost) -> str:
    if cost.total is None or cost.per_prediction is None:
        return "–"
    return f"{cost.total:,.4f} / {cost.per_prediction:,.6f}"


def _identity(candidate: CandidateSummary | OwnerCandidate) -> str:
    version = candidate.version
    return candidate.name + (f" (version {version})" if version else "")


def _facts(candidate: CandidateSummary) -> list[tuple[str, str]]:
    latency = candidate.latency_ms
    return [
        ("events in store", f"{candidate.events:,}"),
        ("predictions", f"{candidate.predictions:,}"),
        ("errors", f"{candidate.errors:,} ({percent(candidate.error_rate)})"),
        ("abstained (low confidence)", f"{candidate.abstained:,}"),
        ("coverage (would act on)", percent(candidate.coverage)),
        ("compared with an outcome", f"{candidate.compared:,}"),
        ("pending (no outcome yet)", f"{candidate.pending:,}"),
        ("agreement (95 % Wilson)", interval(candidate.agreement)),
        ("cost (total / per prediction)", _cost(candidate.cost)),
        ("latency p50 / p95 / p99",
         f"{millis(latency.p50)} / {millis(latency.p95)} / {millis(latency.p99)}"),
    ]


def to_table(report: CoreReport, *, width: int | None = None, color: bool = False,
             verdicts: Sequence[Headline] = ()) -> str:
    """The report for a terminal: the verdict lines (``verdicts``, from the owner report)
    first, then one block per candidate, then the input counts."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width or 100, no_color=not color,
                      force_terminal=color, highlight=False)
    for headline in verdicts:
        _print_verdict(console, headline, several=len(verdicts) > 1)
    if verdicts:
        console.print()
    for candidate in report.candidates:
        summary = Table(title=_identity(candidate), show_header=False, title_justify="left")
        summary.add_column(style="bold")
        summary.add_column(justify="right")
        for label, value in _facts(candidate):
            summary.add_row(label, value)
        console.print(summary)
        _print_breakdown(console, "by segment", ("field", "value"),
                         [((s.field, s.value), s) for s in candidate.segments])
        _print_breakdown(console, "by field", ("field",),
                         [((f.field,), f) for f in candidate.fields])
        for kind in candidate.error_kinds:
            console.print(f"  error {kind.type}: {kind.count:,}, e.g. {kind.example!r}")
    if not report.candidates:
        console.print("no predictions in this store yet")
    console.print(_inputs_line(report))
    return buffer.getvalue()


_STYLE = {"ready": "bold green", "not_ready": "bold red", "not_enough_data": "bold yellow"}


def _print_verdict(console: Console, headline: Headline, *, several: bool) -> None:
    """The line unwrapped, so that it reads (and greps) as one line."""
    version = f" (version {headline.version})" if headline.version else ""
    who = f"{headline.name}{version}: " if several else ""
    console.print(who + headline.line, style=_STYLE.get(headline.status), markup=False,
                  soft_wrap=True)
    if headline.next_step:
        console.print(headline.next_step, markup=False, soft_wrap=True)


def _print_breakdown(
    console: Console, title: str, columns: tuple[str, ...],
    rows: list[tuple[tuple[str, ...], SegmentAgreement | FieldAgreement]],
) -> None:
    if not rows:
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    table.add_column("compared", justify="right")
    table.add_column("agreement (95 % Wilson)", justify="right")
    for labels, row in rows:
        table.add_row(*map(str, labels), f"{row.compared:,}", interval(row.agreement))
    console.print(table)


def _inputs_line(report: CoreReport) -> str:
    outcomes = report.outcomes
    return (
        f"events read {report.events_read:,} = stored {report.events_stored:,}"
        f" + duplicates {report.duplicates:,} + dead letters {report.dead_letters:,}; "
        f"outcomes stored {outcomes.stored:,} for {outcomes.keys:,} keys"
        f" (dead letters {outcomes.dead_letters:,})"
    )


def dead_letters_table(rows: Sequence[DeadLetterRow], *, width: int = 120) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, no_color=True, highlight=False)
    if not rows:
        console.print("no dead letters")
        return buffer.getvalue()
    table = Table(title="dead letters, newest first", title_justify="left")
    for column in ("kind", "where", "reason", "raw"):
        table.add_column(column, overflow="fold")
    for row in rows:
        raw = row.raw if len(row.raw) <= 80 else row.raw[:80] + "…"
        table.add_row(row.kind, f"{row.source} {row.position}", row.reason, raw)
    console.print(table)
    return buffer.getvalue()


_VERDICT = LABELS
_MARK = {"pass": "✓", "fail": "✗", NA: NA}


def _money(value: float | None) -> str:
    return "–" if value is None else f"{value:,.2f}" if value >= 1 else f"{value:,.6f}"


def _owner_check(check: Check) -> str:
    return f"- {_MARK.get(check.status, '?')} **{check.name}**: {check.detail}"


def _violations_line(violations: Violations) -> str:
    """Hard constraints in one line: the share of checked outputs caught, and by which check."""
    if violations.configured is False and not violations.violating:
        return "Hard constraints: none configured."
    if not violations.checked or violations.rate is None:
        return "Hard constraints: no checked outputs."
    checked, violating = violations.checked, violations.violating
    # Two decimals: violation rates are small, and the HTML shows them so too.
    line = (f"Hard constraints: {100 * violations.rate:.2f} % of checked outputs violated one "
            f"({violating:,} of {checked:,})")
    if violations.threshold is not None:
        line += f", budget {100 * violations.threshold:.2f} %"
    kinds = "; ".join(f"{k.check} {k.predictions:,} ({100 * k.rate:.2f} %)"
                      for k in violations.kinds)
    return line + (f": {kinds}." if kinds else ".")


MARKDOWN_ACTION_EXAMPLES = 2


def _tool_lines(tools: Sequence[ToolRate]) -> list[str]:
    """Per tool: precision, recall and argument agreement, and a couple of examples."""
    if not tools:
        return []
    lines = ["Actions per tool (precision: of the AI's actions, the share the person also "
             "took; recall: of the person's, the share the AI proposed):"]
    for tool in tools:
        line = (f"- `{tool.tool}`: precision {percent(tool.precision)} "
                f"({tool.matched:,} of {tool.proposed:,}), recall {percent(tool.recall)} "
                f"({tool.matched:,} of {tool.taken:,}), arguments agree "
                f"{percent(tool.argument_agreement)} (n={tool.arguments_compared:,})")
        for what, examples in (("extra", tool.extra), ("missed", tool.missed)):
            shown = [f"{e.event_id} `{orjson.dumps(e.arguments).decode()}`"
                     for e in examples[:MARKDOWN_ACTION_EXAMPLES]]
            if shown:
                line += f"; {what}: " + ", ".join(shown)
        lines.append(line)
    return lines


def _segment_text(segment: Segment, baseline: Baseline | None) -> str:
    people = baseline.segment(segment.field, segment.value) if baseline else None
    text = f"{segment.field}={segment.value} {percent(segment.rate)} (n={segment.compared:,})"
    if people is not None:
        text += f", people {percent(people.rate)} (pairs={people.pairs:,})"
    return text


def _tier_section_lines(tiers: TierSection | None) -> list[str]:
    """Per tier: volume live and in shadow, share and agreement; the reviewers' verdicts and
    time to review; the people's time the tiers save. Nothing without a tier policy."""
    if tiers is None:
        return []
    lines = [f"By tier ({tiers.assessed:,} predictions assessed: {tiers.live:,} live, "
             f"{tiers.shadow:,} in shadow, what it would have done; agreement with the "
             "person's outcome, 95 % Wilson):"]
    for t in tiers.tiers:
        lines.append(f"- {t.tier}: {t.predictions:,} ({percent(t.share)}; live {t.live:,}, "
                     f"shadow {t.shadow:,}), agreement {interval(t.agreement)} "
                     f"(n={t.agreement.n:,})")
    r = tiers.reviews
    rates = ", ".join(f"{_VERDICT_WORDS[v.verdict]} {percent(v.rate)} ({v.count:,})"
                      for v in r.verdicts)
    if r.proposed or r.decided:
        lines.append(f"Reviews: {r.decided:,} decided ({rates}); time to review median "
                     f"{duration(r.median_seconds)}, p90 {duration(r.p90_seconds)}; "
                     f"{r.open:,} open of {r.live:,} live proposals.")
    w = tiers.work
    lines.append(
        f"Work taken off people's hands: {percent(w.auto_share)} of cases in tier auto "
        f"(live {percent(w.live_auto_share)}); {minutes(w.minutes_saved_live)} saved so far; "
        f"per month {hours(w.per_month_current)} at current live traffic, "
        f"{hours(w.per_month_all_live)} with every decision live, "
        f"{hours(w.per_month_full)} at full production "
        f"({w.handling_minutes_per_case:g} min per case handled by a person, "
        f"{w.review_minutes_per_case:g} min per review).")
    return lines


_VERDICT_WORDS = {"approve": "approved", "edit": "edited", "reject": "rejected"}


def owner_markdown(report: OwnerReport, drift: DriftReport | None = None) -> str:
    """The owner's verdict line and next step first, what the data covers, then the
    checklist and key numbers per candidate, for a ticket or chat."""
    lines = ["# Readiness report", ""]
    several = len(report.candidates) > 1
    for candidate in report.candidates:
        who = f"{_identity(candidate)}: " if several else ""
        # Two trailing spaces: a line break inside the paragraph.
        lines.append(f"**{who}{candidate.verdict.line}**  ")
        if candidate.verdict.next_step:
            lines.append(candidate.verdict.next_step + "  ")
    facts = completeness_facts(report.completeness, report.candidates)
    if report.candidates or facts:
        lines.append("")
    if facts:
        lines += ["; ".join(f"{label.capitalize() if i == 0 else label}: {value}"
                            for i, (label, value) in enumerate(facts)) + ".", ""]
    baseline = report.human_baseline
    for candidate in report.candidates:
        verdict, agreement = candidate.verdict, candidate.agreement
        cost, errors = candidate.cost, candidate.errors
        lines += [f"## {_identity(candidate)}: {_VERDICT[verdict.status]}", ""]
        lines += [_owner_check(check) for check in verdict.checks]
        latency = ("no successful call was timed" if candidate.latency.p95 is None
                   else millis(candidate.latency.p95))
        lines += [
            "",
            f"Agreement {interval(agreement)} (95 % Wilson, n={agreement.n:,}); "
            f"errors {percent(errors.rate)}; p95 {latency}; "
            f"cost/decision {_money(cost.per_decision)}; "
            f"per month {_money(cost.per_month_current)} now, "
            f"{_money(cost.per_month_10x)} at 10x, {_money(cost.per_month_full)} at full.",
        ]
        lines.append(_violations_line(candidate.violations))
        below = [s for s in candidate.segments if s.below_floor]
        if below:
            lines.append("Below floor: " + ", ".join(_segment_text(s, baseline) for s in below))
        lines += _tool_lines(candidate.tools)
        lines += _tier_section_lines(candidate.tiers)
        lines.append("")
    if report.candidates:
        lines += [INTERVALS, ""]
    if baseline is not None:
        lines += [f"People agree with each other {percent(baseline.rate)} of the time "
                  f"({baseline.pairs:,} pairs over {baseline.keys:,} cases).", ""]
    if drift is not None:
        lines += [("**Drift detected:** " + "; ".join(drift.reasons)) if drift.drifted
                  else "No drift beyond the thresholds against the reference window.", ""]
    if not report.candidates:
        lines += ["No predictions in this store yet.", ""]
    return "\n".join(lines) + "\n"
