"""Inline SVG charts for the HTML owner report.

Every chart is a plain string: an ``<svg role="img">`` with an ``aria-label`` and a
``<title>``, drawn from numbers only, with no script and no external reference.
Every string that comes from the data goes through :func:`html.escape`. A chart
with nothing to draw returns a short "no data" paragraph instead of an empty SVG.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shadow.reports.owner_model import CoveragePoint, Day, OwnerLatency, TimelineEntry

WIDTH = 640
LEFT, RIGHT, TOP, BOTTOM = 190, 20, 16, 34
BAR = 18
ROW = 28

AI_COLOUR = "#2563eb"
BAND_COLOUR = "#93c5fd"
HUMAN_COLOUR = "#059669"
ALERT_COLOUR = "#dc2626"
GRID_COLOUR = "#d1d5db"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


PERCENT = "\u00a0%"
"""The percent sign and the no-break space before it, so a line never ends on a bare number."""


def pct(value: float | None, digits: int = 1) -> str:
    return "no data" if value is None else f"{100 * value:.{digits}f}{PERCENT}"


def milliseconds(value: float) -> str:
    """Three decimals below a millisecond (an in-process candidate), else one."""
    return f"{value:,.3f} ms" if value < 1 else f"{value:,.1f} ms"


def no_data(what: str) -> str:
    return f'<p class="no-data">{esc(what)}: no data</p>'


def svg(width: int, height: int, label: str, body: Sequence[str]) -> str:
    """Wrap chart parts in an accessible, scalable ``<svg>`` element."""
    return (
        f'<svg class="chart" role="img" aria-label="{esc(label)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">'
        f"<title>{esc(label)}</title>{''.join(body)}</svg>"
    )


def _num(value: float) -> str:
    return f"{value:.1f}"


def _text(x: float, y: float, text: str, anchor: str = "start", cls: str = "") -> str:
    extra = f' class="{cls}"' if cls else ""
    return (f'<text x="{_num(x)}" y="{_num(y)}" text-anchor="{anchor}"{extra}>'
            f"{esc(text)}</text>")


def _line(x1: float, y1: float, x2: float, y2: float, colour: str, width: float = 1,
          dash: str = "") -> str:
    extra = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<line x1="{_num(x1)}" y1="{_num(y1)}" x2="{_num(x2)}" y2="{_num(y2)}" '
            f'stroke="{colour}" stroke-width="{width}"{extra}/>')


def _rate_axis(x0: float, x1: float, y: float, top: float) -> list[str]:
    """Vertical grid lines at 0, 25, 50, 75 and 100 % with labels under ``y``."""
    parts = []
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = x0 + tick * (x1 - x0)
        parts.append(_line(x, top, x, y, GRID_COLOUR))
        parts.append(_text(x, y + 14, pct(tick, 0), "middle", "axis"))
    return parts


@dataclass(frozen=True, slots=True)
class Bar:
    """One row of :func:`interval_bars`: a rate with its interval, and optionally a floor
    (drawn as a marker; a bar below its floor is drawn in the alert colour)."""

    label: str
    rate: float | None
    low: float | None
    high: float | None
    floor: float | None = None
    below_floor: bool = False
    colour: str = AI_COLOUR


def interval_bars(title: str, rows: Sequence[Bar]) -> str:
    """Horizontal bars with 95 % interval whiskers and optional floor markers; rows
    without a rate are listed as "no data"."""
    if not rows:
        return no_data(title)
    x0, x1 = LEFT, WIDTH - RIGHT - 50
    height = TOP + ROW * len(rows) + BOTTOM
    parts = _rate_axis(x0, x1, height - BOTTOM, TOP)
    for i, row in enumerate(rows):
        parts += _interval_row(row, TOP + i * ROW, x0, x1)
    return svg(WIDTH, height, title, parts)


def _interval_row(row: Bar, y: float, x0: float, x1: float) -> list[str]:
    span = x1 - x0
    middle = y + ROW / 2
    parts = [_text(x0 - 6, middle + 4, _short(row.label), "end")]
    rate = row.rate
    if rate is None:
        return [*parts, _text(x0 + 4, middle + 4, "no data", cls="muted")]
    colour = ALERT_COLOUR if row.below_floor else row.colour
    parts.append(f'<rect x="{x0}" y="{_num(middle - BAR / 2)}" width="{_num(rate * span)}" '
                 f'height="{BAR}" fill="{colour}" fill-opacity="0.75"/>')
    low, high = row.low, row.high
    if low is not None and high is not None:
        parts.append(_line(x0 + low * span, middle, x0 + high * span, middle, "#111827", 1.5))
        for end in (low, high):
            parts.append(_line(x0 + end * span, middle - 5, x0 + end * span, middle + 5,
                               "#111827", 1.5))
    floor = row.floor
    if floor is not None:
        x = x0 + floor * span
        parts.append(_line(x, y + 2, x, y + ROW - 2, ALERT_COLOUR, 2, "3 2"))
    return [*parts, _text(x1 + 6, middle + 4, pct(rate))]


def _short(label: Any, limit: int = 24) -> str:
    text = str(label)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _scale(value: float, low: float, high: float, out_low: float, out_high: float) -> float:
    if high == low:
        return (out_low + out_high) / 2
    return out_low + (value - low) / (high - low) * (out_high - out_low)


def over_time(title: str, days: Sequence[Day]) -> str:
    """Daily agreement as a line, with its interval as a shaded band."""
    points = [p for p in days if p.rate is not None]
    if not points:
        return no_data(title)
    height = 220
    x0, x1, y0, y1 = 50, WIDTH - RIGHT, height - BOTTOM, TOP
    xs = [_scale(i, 0, len(points) - 1, x0, x1) for i in range(len(points))]

    def y(v: float | None) -> float:
        return _scale(v if v is not None else 0.0, 0.0, 1.0, y0, y1)

    parts = _y_axis(x0, x1, y0, y1)
    pairs = list(zip(xs, points, strict=True))
    upper = [f"{_num(x)},{_num(y(p.high))}" for x, p in pairs]
    lower = [f"{_num(x)},{_num(y(p.low))}" for x, p in pairs]
    parts.append(f'<polygon class="band" points="{" ".join(upper + lower[::-1])}" '
                 f'fill="{BAND_COLOUR}" fill-opacity="0.5" stroke="none"/>')
    line = " ".join(f"{_num(x)},{_num(y(p.rate))}" for x, p in zip(xs, points, strict=True))
    parts.append(f'<polyline points="{line}" fill="none" stroke="{AI_COLOUR}" '
                 'stroke-width="2"/>')
    for x, p in zip(xs, points, strict=True):
        parts.append(f'<circle cx="{_num(x)}" cy="{_num(y(p.rate))}" r="3" '
                     f'fill="{AI_COLOUR}"><title>{esc(p.day)}: {pct(p.rate)} '
                     f'of {esc(p.compared)}</title></circle>')
    last = len(points) - 1
    for i in sorted({0, last // 2, last}):
        anchor = "start" if i == 0 else "end" if i == last else "middle"
        parts.append(_text(xs[i], y0 + 16, points[i].day, anchor, "axis"))
    return svg(WIDTH, height, title, parts)


def _y_axis(x0: float, x1: float, y0: float, y1: float) -> list[str]:
    parts = []
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = _scale(tick, 0.0, 1.0, y0, y1)
        parts.append(_line(x0, y, x1, y, GRID_COLOUR))
        parts.append(_text(x0 - 6, y + 4, pct(tick, 0), "end", "axis"))
    return parts


def coverage_curve(title: str, coverage: Sequence[CoveragePoint]) -> str:
    """Coverage and agreement (two lines) against the abstention threshold."""
    rows = sorted(coverage, key=lambda r: float(r.threshold))
    if not rows:
        return no_data(title)
    height = 240
    x0, x1, y0, y1 = 50, WIDTH - 110, height - BOTTOM, TOP
    low, high = float(rows[0].threshold), float(rows[-1].threshold)
    xs = [_scale(float(r.threshold), low, high, x0, x1) for r in rows]
    parts = _y_axis(x0, x1, y0, y1)
    for key, colour, dash in (("coverage", HUMAN_COLOUR, "6 3"), ("agreement", AI_COLOUR, "")):
        values = [r.coverage if key == "coverage" else r.agreement for r in rows]
        points = [f"{_num(x)},{_num(_scale(v, 0.0, 1.0, y0, y1))}"
                  for x, v in zip(xs, values, strict=True) if v is not None]
        if points:
            extra = f' stroke-dasharray="{dash}"' if dash else ""
            parts.append(f'<polyline class="{key}" points="{" ".join(points)}" fill="none" '
                         f'stroke="{colour}" stroke-width="2"{extra}/>')
            last_y = float(points[-1].split(",")[1])
            parts.append(_text(x1 + 6, last_y + 4, key))
    shown = -math.inf
    for x, r in zip(xs, rows, strict=True):
        if x - shown >= 32:  # closer thresholds would print their labels over each other
            parts.append(_text(x, y0 + 16, f"{float(r.threshold):.2f}", "middle", "axis"))
            shown = x
    parts.append(_text((x0 + x1) / 2, height - 2, "confidence threshold", "middle", "axis"))
    return svg(WIDTH, height, title, parts)


def latency_histogram(title: str, latency: OwnerLatency) -> str:
    """Bars per latency bucket, with p50 / p95 / p99 marked on the bucket axis."""
    buckets = latency.histogram
    if not buckets:
        return no_data(title)
    height = 220
    x0, x1, y0, y1 = 50, WIDTH - RIGHT, height - BOTTOM, TOP + 14
    width = (x1 - x0) / len(buckets)
    top = max(b.count for b in buckets) or 1
    parts = [_line(x0, y0, x1, y0, "#111827")]
    for i, bucket in enumerate(buckets):
        count = bucket.count
        bar = (y0 - y1) * count / top
        parts.append(f'<rect x="{_num(x0 + i * width + 1)}" y="{_num(y0 - bar)}" '
                     f'width="{_num(width - 2)}" height="{_num(bar)}" fill="{AI_COLOUR}" '
                     f'fill-opacity="0.7"><title>≤ {esc(bucket.le_ms)} ms: {count:,}'
                     "</title></rect>")
        parts.append(_text(x0 + (i + 0.5) * width, y0 + 14, f"≤{bucket.le_ms:g}",
                           "middle", "axis"))
    parts.append(_text((x0 + x1) / 2, height - 2, "latency bucket (ms)", "middle", "axis"))
    edges = [float(b.le_ms) for b in buckets]
    for name, value in (("p50", latency.p50), ("p95", latency.p95), ("p99", latency.p99)):
        if value is not None:
            x = x0 + _bucket_position(float(value), edges) * width
            parts.append(_line(x, y1 - 4, x, y0, ALERT_COLOUR, 1.5, "4 2"))
            near_end = x > x1 - 90
            # One row per marker: close percentiles would print over each other.
            parts.append(_text(x - 3 if near_end else x + 3,
                               y1 - 6 + 14 * ("p50", "p95", "p99").index(name),
                               f"{name} {milliseconds(float(value))}",
                               "end" if near_end else "start", "marker"))
    return svg(WIDTH, height, title, parts)


def _bucket_position(value: float, edges: Sequence[float]) -> float:
    """Where ``value`` falls on the bucket axis, interpolated inside its bucket."""
    previous = 0.0
    for i, edge in enumerate(edges):
        if value <= edge:
            return i + _scale(value, previous, edge, 0.0, 1.0) if edge > previous else i + 0.5
        previous = edge
    return float(len(edges))


def rollout_steps(title: str, timeline: Sequence[TimelineEntry]) -> str:
    """Traffic percent after each rollout event, as a step line; rollbacks in red."""
    events = [(e, e.percent) for e in timeline if e.percent is not None]
    if not events:
        return no_data(title)
    height = 200
    x0, x1, y0, y1 = 50, WIDTH - RIGHT, height - BOTTOM, TOP
    xs = [_scale(i, 0, max(len(events) - 1, 1), x0 + 10, x1 - 10) for i in range(len(events))]

    def y(percent: float) -> float:
        return _scale(percent, 0.0, 100.0, y0, y1)

    parts = []
    for tick in (0, 25, 50, 75, 100):
        parts += [_line(x0, y(tick), x1, y(tick), GRID_COLOUR),
                  _text(x0 - 6, y(tick) + 4, f"{tick}{PERCENT}", "end", "axis")]
    path = [f"M{_num(xs[0])},{_num(y(float(events[0][1])))}"]
    for x, (_, percent) in zip(xs[1:], events[1:], strict=True):
        path.append(f"H{_num(x)}V{_num(y(float(percent)))}")
    parts.append(f'<path d="{"".join(path)}" fill="none" stroke="{AI_COLOUR}" '
                 'stroke-width="2"/>')
    for i, (x, (event, percent)) in enumerate(zip(xs, events, strict=True)):
        rollback = "rollback" in event.action.lower()
        colour = ALERT_COLOUR if rollback else AI_COLOUR
        parts.append(f'<circle cx="{_num(x)}" cy="{_num(y(float(percent)))}" r="4" '
                     f'fill="{colour}"><title>{esc(event.at)} '
                     f'{esc(event.action)}: {esc(event.reason or "")}'
                     "</title></circle>")
        parts.append(_text(x, y0 + 16, str(i + 1), "middle", "axis"))
    return svg(WIDTH, height, title, parts)
