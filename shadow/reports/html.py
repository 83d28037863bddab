"""The owner report as one self-contained HTML file.

:func:`to_html` renders the dict built by ``shadow.reports.owner.build_owner_report``: inline
CSS, inline SVG charts from :mod:`shadow.reports.charts`, no script, no font, no image and
no URL of any kind, so the file opens offline and prints cleanly. Any section may
be ``None`` or empty; it then reads "no data" instead of failing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rollout.audit import credited
from shadow.reports import charts
from shadow.reports.charts import PERCENT, esc, milliseconds, no_data, pct

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
.unknown { color: #92400e; font-weight: 700; }
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


def to_html(report: dict[str, Any]) -> str:
    """Render an owner report dict as a complete, self-contained HTML document."""
    candidates = report.get("candidates") or []
    body = [
        "<h1>Shadow comparison report</h1>",
        f'<p class="meta">Generated {esc(report.get("generated_at") or "–")} from store '
        f'{esc(report.get("store") or "–")}</p>',
        "<h2>Candidates</h2>",
        _summary(candidates, report.get("human_baseline")),
        "<h2>Human-to-human baseline</h2>",
        _baseline_table(report.get("human_baseline")),
        "<h2>Rollout</h2>",
        _rollout(report.get("rollout")),
    ]
    if report.get("drift") is not None:
        body += ["<h2>Drift</h2>", _drift(report["drift"])]
    body += [_candidate(c, report.get("human_baseline"), report.get("options") or {})
             for c in candidates]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<title>Shadow comparison report</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def _drift(drift: dict[str, Any]) -> str:
    """The current window against the reference: verdict, reasons and the statistics."""
    ref, cur = drift.get("reference") or {}, drift.get("current") or {}
    verdict = ('<p class="fail"><strong>Drift detected:</strong> '
               + esc("; ".join(drift.get("reasons") or [])) + "</p>"
               if drift.get("drifted") else "<p>No drift beyond the thresholds.</p>")
    span = (f"<p>Current window {esc(cur.get('start'))} – {esc(cur.get('end'))} "
            f"({_count(cur.get('events'))} events) against the reference "
            f"{esc(ref.get('start'))} – {esc(ref.get('end'))} "
            f"({_count(ref.get('events'))} events).</p>")
    segments = _table(
        ["segment field", "chi-squared", "dof", "p-value"],
        [[esc(s.get("field")), _float(s.get("chi2")), _count(s.get("dof")),
          _float(s.get("p_value"), 4)] for s in drift.get("segments") or []], {1, 2, 3})
    numeric = _table(
        ["field", "PSI", "KS D", "KS p-value"],
        [[esc(n.get("field")), _float(n.get("psi"), 3), _float(n.get("ks"), 3),
          _float(n.get("ks_p_value"), 4)] for n in drift.get("numeric") or []], {1, 2, 3})
    share = drift.get("new_outcome_share")
    new = ("" if share is None else
           f"<p>Outcomes never seen in the reference: {pct(share)} of the current window.</p>")
    return verdict + span + segments + numeric + new


def _float(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    """A table; cells are already HTML, headers are escaped; ``numeric`` right-aligns."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    lines = ["".join(f'<td class="num">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
                     for i, cell in enumerate(row)) for row in rows]
    return f"<table><tr>{head}</tr>{''.join(f'<tr>{line}</tr>' for line in lines)}</table>"


def _count(value: Any) -> str:
    return "no data" if value is None else f"{int(value):,}"


def _interval(block: dict[str, Any] | None) -> str:
    if not block or block.get("rate") is None:
        return "no data"
    if block.get("low") is None or block.get("high") is None:
        return pct(block["rate"])
    return f"{pct(block['rate'])} [{pct(block['low'])}, {pct(block['high'])}]"


def _money(value: Any, currency: str, digits: int = 2) -> str:
    if value is None:
        return "no data"
    return esc(f"{currency}{float(value):,.{digits}f}")


def _millis(value: Any) -> str:
    return "no data" if value is None else milliseconds(float(value))


def _identity(candidate: dict[str, Any]) -> str:
    version = candidate.get("version")
    return esc(candidate.get("name") or "unnamed") + (f" ({esc(version)})" if version else "")


def _verdict_badge(verdict: dict[str, Any] | None, cls: str = "badge") -> str:
    text, colour = VERDICTS.get((verdict or {}).get("status") or "not_enough_data",
                                VERDICTS["not_enough_data"])
    return f'<span class="{cls} {colour}">{text}</span>'


def _summary(candidates: Sequence[dict[str, Any]], baseline: dict[str, Any] | None) -> str:
    if not candidates:
        return no_data("candidates")
    rows = [[_identity(c), _verdict_badge(c.get("verdict")),
             _interval(c.get("agreement")), _count((c.get("agreement") or {}).get("n")),
             pct((c.get("errors") or {}).get("rate")),
             _violation_rate(c.get("violations")),
             _millis((c.get("latency") or {}).get("p95")),
             _money((c.get("cost") or {}).get("per_decision"), "", 4)] for c in candidates]
    table = _table(["candidate", "verdict", "agreement (95\u00a0% Wilson)", "compared",
                    "error rate", "violation rate", "p95 latency", "cost per decision"], rows,
                   {3, 4, 5, 6, 7})
    return table + f'<p class="meta">Humans agree with each other: {_interval(baseline)}</p>'


def _candidate(candidate: dict[str, Any], baseline: dict[str, Any] | None,
               options: dict[str, Any]) -> str:
    name = _identity(candidate)
    currency = str(options.get("currency") or "")
    parts = [f'<section class="candidate"><h2>{name}</h2>',
             _verdict(candidate.get("verdict")),
             f"<p>Agreement with human outcomes: <strong>{_interval(candidate.get('agreement'))}"
             f"</strong> over {_count((candidate.get('agreement') or {}).get('n'))} compared"
             " decisions (95\u00a0% Wilson interval).</p>",
             '<div class="grid">',
             _chart_block("Agreement over time",
                          charts.over_time(f"{name}: agreement over time",
                                           candidate.get("over_time") or [])),
             _chart_block("Agreement next to the human baseline",
                          _baseline_chart(name, candidate.get("agreement"), baseline)),
             _chart_block("Agreement per segment", _segments(name, candidate.get("segments"))),
             _chart_block("Agreement per field", _fields(name, candidate.get("fields"))),
             "</div>",
             _confusion(candidate.get("confusion")),
             _coverage(name, candidate.get("coverage")),
             _latency(name, candidate.get("latency")),
             _errors(candidate.get("errors")),
             _violations(candidate.get("violations")),
             _cost(candidate.get("cost"), currency),
             _disagreements(candidate.get("disagreements")),
             "</section>"]
    return "".join(parts)


def _chart_block(title: str, chart: str) -> str:
    return f"<div><h3>{esc(title)}</h3>{chart}</div>"


def _verdict(verdict: dict[str, Any] | None) -> str:
    checks = (verdict or {}).get("checks") or []
    rows = [[esc(c.get("name")),
             f'<span class="{esc(c.get("status") or "unknown")}">'
             f'{esc((c.get("status") or "unknown").upper())}</span>',
             _value(c.get("value")), _value(c.get("threshold")), esc(c.get("detail") or "")]
            for c in checks]
    table = (_table(["check", "status", "value", "threshold", "detail"], rows, {2, 3})
             if rows else no_data("checklist"))
    return f'<div class="check">{_verdict_badge(verdict, "verdict")}{table}</div>'


def _value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return esc(value)


def _baseline_chart(name: str, agreement: dict[str, Any] | None,
                    baseline: dict[str, Any] | None) -> str:
    rows = [{"label": "AI vs human", **(agreement or {})}]
    if baseline:
        rows.append({"label": "human vs human", "colour": charts.HUMAN_COLOUR, **baseline})
    return charts.interval_bars(f"{name}: AI agreement and human-to-human agreement", rows)


def _segments(name: str, segments: Sequence[dict[str, Any]] | None) -> str:
    rows = [{**s, "label": f"{s.get('field')}={s.get('value')} (n={s.get('compared')})"}
            for s in segments or []]
    chart = charts.interval_bars(f"{name}: agreement per segment with floors", rows)
    below = [esc(f"{s.get('field')}={s.get('value')}") for s in segments or []
             if s.get("below_floor")]
    if below:
        chart += f'<p class="fail">Below floor: {", ".join(below)}</p>'
    return chart


def _fields(name: str, fields: Sequence[dict[str, Any]] | None) -> str:
    rows = [{**f, "label": f"{f.get('field')} (n={f.get('compared')})"} for f in fields or []]
    return charts.interval_bars(f"{name}: agreement per field", rows)


def _confusion(confusion: dict[str, Any] | None) -> str:
    title = "<h3>Confusion matrix (rows: human label, columns: AI label)</h3>"
    if not confusion or not confusion.get("labels"):
        return title + no_data("confusion matrix")
    labels, matrix = confusion["labels"], confusion.get("matrix") or []
    top = max((max(row, default=0) for row in matrix), default=0) or 1
    head = "".join(f"<th>{esc(label)}</th>" for label in labels)
    lines = []
    for label, row in zip(labels, matrix, strict=False):  # tolerate a short matrix
        cells = "".join(
            f'<td class="num" style="background: rgba(37, 99, 235, {0.08 + 0.6 * v / top:.2f})">'
            f"{int(v):,}</td>" for v in row)
        lines.append(f"<tr><th>{esc(label)}</th>{cells}</tr>")
    other = f'<p class="meta">Other labels: {_count(confusion.get("other"))}</p>'
    return f"{title}<table><tr><th>human \\ AI</th>{head}</tr>{''.join(lines)}</table>{other}"


def _coverage(name: str, coverage: Sequence[dict[str, Any]] | None) -> str:
    title = "<h3>Coverage against agreement by confidence threshold</h3>"
    if not coverage:
        return title + no_data("coverage")
    chart = charts.coverage_curve(f"{name}: coverage and agreement by threshold", coverage)
    rows = [[_value(r.get("threshold")), pct(r.get("coverage")), pct(r.get("agreement")),
             _count(r.get("n"))] for r in coverage]
    table = _table(["threshold", "AI would handle", "agreement", "compared"], rows, {0, 1, 2, 3})
    return f'{title}<div class="grid"><div>{chart}</div><div>{table}</div></div>'


def _latency(name: str, latency: dict[str, Any] | None) -> str:
    title = "<h3>Latency</h3>"
    if not latency:
        return title + no_data("latency")
    figures = " · ".join(f"{key} <strong>{_millis(latency.get(key))}</strong>"
                         for key in ("p50", "p95", "p99"))
    chart = charts.latency_histogram(f"{name}: latency distribution", latency)
    return f"{title}<p>{figures}</p>{chart}"


def _errors(errors: dict[str, Any] | None) -> str:
    title = "<h3>Errors</h3>"
    if not errors:
        return title + no_data("errors")
    line = f"<p>Error rate {pct(errors.get('rate'), 2)} ({_count(errors.get('count'))} errors)</p>"
    kinds = errors.get("kinds") or []
    rows = [[esc(k.get("kind")), _count(k.get("count")), f"<pre>{esc(k.get('example'))}</pre>"]
            for k in kinds]
    table = _table(["kind", "count", "example"], rows, {1}) if rows else no_data("error kinds")
    return title + line + table


def _unconfigured(violations: dict[str, Any] | None) -> bool:
    """No checks configured and nothing caught: "0 %" would claim outputs were checked."""
    return violations is not None and violations.get("configured") is False \
        and not violations.get("violating")


def _violation_rate(violations: dict[str, Any] | None) -> str:
    return "–" if _unconfigured(violations) else pct((violations or {}).get("rate"), 2)


def _violations(violations: dict[str, Any] | None) -> str:
    """Outputs caught by a hard-constraint check: the share, by check, recent examples."""
    title = "<h3>Hard-constraint violations</h3>"
    if _unconfigured(violations):
        return title + "<p>No hard-constraint checks are configured for this candidate.</p>"
    if not violations or not violations.get("checked"):
        return title + no_data("checked outputs")
    checked, violating = violations.get("checked"), violations.get("violating") or 0
    budget = violations.get("threshold")
    line = (f"<p><strong>{pct(violations.get('rate'), 2)}</strong> of checked outputs violated "
            f"a hard constraint ({_count(violating)} of {_count(checked)} checked; errored "
            f"predictions are not checked).")
    if budget is not None:
        ok = violations.get("rate") is not None and violations["rate"] <= budget
        line += (f' Budget {pct(budget, 2)}: <span class="{"pass" if ok else "fail"}">'
                 f'{"PASS" if ok else "FAIL"}</span>.')
    line += "</p>"
    if not violating:
        return title + line
    kinds = [[esc(k.get("check")), _count(k.get("predictions")), pct(k.get("rate"), 2),
              _count(k.get("count"))] for k in violations.get("kinds") or []]
    table = _table(["check", "outputs caught", "share of checked", "violations"], kinds,
                   {1, 2, 3}) if kinds else no_data("violations by check")
    examples = [[f"{esc(e.get('event_id'))}<br><span class=\"muted\">key {esc(e.get('key'))}"
                 f"<br>{esc(e.get('occurred_at') or '')}</span>",
                 f"<pre>{esc(chr(10).join(e.get('violations') or []))}</pre>"]
                for e in violations.get("examples") or []]
    shown = ("<h3>Recent violations</h3>" + _table(["event", "violations"], examples, set())
             if examples else "")
    return title + line + table + shown


def _cost(cost: dict[str, Any] | None, currency: str) -> str:
    title = "<h3>Cost</h3>"
    if not cost:
        return title + no_data("cost")
    per_decision = _money(cost.get("per_decision"), currency, 4)
    line = f"<p>Cost per decision: <strong>{per_decision}</strong></p>"
    rows = [[label, _count(volume), _money(cost.get(day), currency),
             _money(cost.get(month), currency)]
            for label, volume, day, month in (
                ("current traffic", cost.get("daily_volume_current"), "per_day_current",
                 "per_month_current"),
                ("10x current", None if cost.get("daily_volume_current") is None
                 else 10 * cost["daily_volume_current"], "per_day_10x", "per_month_10x"),
                ("full production", cost.get("daily_volume_full"), "per_day_full",
                 "per_month_full"))]
    return title + line + _table(["volume", "decisions per day", "per day", "per month"],
                                 rows, {1, 2, 3})


def _pretty(value: Any) -> str:
    if value is None:
        return "–"
    text = value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True,
                                                              ensure_ascii=False, default=str)
    return f"<pre>{esc(text)}</pre>"


def _segment(segment: Any) -> str:
    """``name: value`` lines for the usual flat segment; JSON for anything nested."""
    if not segment:
        return "–"
    if isinstance(segment, dict) and not any(isinstance(v, dict | list)
                                             for v in segment.values()):
        return "<br>".join(f'<span class="muted">{esc(k)}:</span> {esc(_scalar(v))}'
                           for k, v in sorted(segment.items()))
    return _pretty(segment)


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _disagreements(rows: Sequence[dict[str, Any]] | None) -> str:
    title = "<h3>Top disagreements</h3>"
    if not rows:
        return title + no_data("disagreements")
    cells = [[f"{esc(r.get('event_id'))}<br><span class=\"muted\">key {esc(r.get('key'))}"
              f"<br>{esc(r.get('decided_at') or '')}</span>",
              _segment(r.get("segment")), _pretty(r.get("payload")),
              _pretty(r.get("output")), _pretty(r.get("outcome"))] for r in rows]
    headers = ["event", "segment", "payload", "AI output", "human outcome"]
    if any(r.get("note") for r in rows):
        # A score or a judge's reason says why the two were found to differ.
        headers.append("comparator's note")
        for row, r in zip(cells, rows, strict=True):
            row.append(esc(r.get("note") or ""))
    return title + _table(headers, cells, set())


def _baseline_table(baseline: dict[str, Any] | None) -> str:
    if not baseline:
        return no_data("human-to-human baseline (no case has outcomes from two people)")
    return (f"<p>On {_count(baseline.get('keys'))} cases with outcomes from more than one person"
            f" ({_count(baseline.get('pairs'))} pairs, {_count(baseline.get('agreed'))} agreed),"
            f" people agree with each other <strong>{_interval(baseline)}</strong>.</p>")


def _label_delays(labels: dict[str, Any] | None) -> str:
    """How late labels came, by verdict; the rollout's gates count one vote per key once
    its label window has passed."""
    if not labels or not labels.get("by_verdict"):
        return ""
    parts = [f"{'agreements' if d['verdict'] == 'agree' else 'disagreements'}: median "
             f"{_duration(d['median_seconds'])}, 95th percentile {_duration(d['p95_seconds'])}"
             f" ({_count(d['labelled'])} keys)" for d in labels["by_verdict"]]
    warning = (" <strong>Disagreements are labelled later than agreements</strong>: the gates "
               "judge a key only once its label window has passed, and count a key still "
               "unlabelled then against the AI." if labels.get("disagreements_later") else "")
    return (f"<p>The rollout's gates count one vote per {esc(labels.get('unit', 'key'))}. "
            f"Label delays in the current step: {esc('; '.join(parts))}.{warning}</p>")


def _withdrawn(withdrawn: list[dict[str, Any]] | None) -> str:
    """Live decisions production never received, and why."""
    if not withdrawn:
        return ""
    parts = [f"{_count(w['count'])} of {esc(w['candidate'])} ({esc(w['reason'])})"
             for w in withdrawn]
    return f"<p>Live decisions withdrawn, never published: {'; '.join(parts)}.</p>"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _rollout(rollout: dict[str, Any] | None) -> str:
    if not rollout:
        return no_data("rollout")
    state = rollout.get("state")
    state_html = (_table(["field", "value"], [[esc(k), _value(v)] for k, v in state.items()],
                         set()) if state else no_data("rollout state"))
    state_html += _label_delays(rollout.get("labels")) + _withdrawn(rollout.get("withdrawn"))
    timeline = rollout.get("timeline") or []
    if not timeline:
        return state_html + no_data("rollout timeline")
    rows = [[esc(e.get("at")), esc(_by(e)), esc(e.get("action")),
             f"{_value(e.get('from_step'))} → {_value(e.get('to_step'))}",
             "–" if e.get("percent") is None else f"{float(e['percent']):g}{PERCENT}",
             esc(e.get("status")), esc(e.get("reason") or "")] for e in timeline]
    table = _table(["at", "by", "action", "step", "traffic", "status", "reason"], rows, {4})
    chart = charts.rollout_steps("Rollout: traffic share after each event", timeline)
    return state_html + chart + table


def _by(event: dict[str, Any]) -> Any:
    """The token and the claimed actor; a timeline from before tokens were kept has no
    ``token`` key, and then shows the actor alone."""
    if "token" not in event:
        return event.get("actor")
    return credited(str(event.get("actor")), event["token"])
