"""Drift: how far the current window of events has moved from a reference window.

A :class:`Window` is a half-open interval ``[start, end)`` of ``events.occurred_at``
(and of ``outcomes.decided_at`` for outcomes). :func:`measure_drift` compares two
windows on three kinds of evidence, each aggregated in DuckDB; only per-category,
per-bin and per-distinct-value counts come back to Python, where the statistics
(:mod:`shadow.core.fixed_sample`) are a few lines of arithmetic (no scipy):

* **Segment mix** (each field of ``event_segments``): Pearson's chi-squared
  goodness of fit of the current counts against the reference proportions,
  ``chi2 = sum((O - E)**2 / E)`` with ``E = N_current * p_reference``. Categories
  whose expected count is below 5 are pooled into one ``other`` cell (values new
  in the current window have ``E = 0`` and always land there); if that cell is
  itself still below 5 it joins the smallest remaining cell. ``dof`` is the
  number of cells left minus one and the p-value is the chi-squared survival
  function, the regularized upper incomplete gamma ``Q(dof/2, chi2/2)``. With
  fewer than two cells there is nothing to test: chi2, dof and p are ``None``.
* **Payload length** (characters of the stored payload JSON, reported as the field
  ``payload_length``) **and numeric payload fields** (dotted paths; values that are
  not JSON numbers are skipped): the population stability index over bins cut at
  the reference deciles (``quantile_disc``; tied edges are merged),
  ``PSI = sum((c - r) * ln(c / r))`` over bin shares, an empty bin counting as
  ``epsilon`` (1e-4) so the logarithm stays finite. Rule of thumb: below 0.1 no
  shift, 0.1-0.25 moderate, 0.25 and above a real shift. Beside it the two-sample
  Kolmogorov-Smirnov statistic ``D = max |F_ref(x) - F_cur(x)|`` over the distinct
  values, with its asymptotic p-value from the Kolmogorov distribution
  (``Q_KS(lambda)``, ``lambda = (sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) * D``,
  ``ne = n m / (n + m)``, Numerical Recipes' ``probks``).
* **New outcome categories**: the share of current-window outcomes whose value (the
  outcome JSON, or the value at ``outcome_label``; strings unquoted) never occurs in
  the reference window. Outcomes without a value are left out of both counts.

Example::

    with Store(path, read_only=True) as store:
        reference = first_days(store, 7)
        report = measure_drift(store, reference=reference,
                               current=last_days(store, 7, now=utc_now()),
                               numeric_fields=["amount"])
        if report.drifted: ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import duckdb

from shadow.core.errors import ConfigError, ShadowError, StoreError
from shadow.core.fixed_sample import chi2_sf, ks_p_value, ks_statistic, psi
from shadow.core.paths import sql_json_path
from shadow.store.database import Store

PAYLOAD_LENGTH = "payload_length"
"""The field name under which the payload length is reported."""

MIN_EXPECTED = 5.0
"""Chi-squared cells with a smaller expected count are pooled (Cochran's rule)."""

OTHER = "(other)"
NEW_OUTCOMES_SHOWN = 5
_NUMERIC_JSON_TYPES = ("BIGINT", "UBIGINT", "DOUBLE", "HUGEINT")


class DriftError(ShadowError):
    """Drift cannot be measured at all (e.g. a store without events for a reference)."""


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open interval ``[start, end)`` of event time; both ends aware datetimes.

    Raises:
        ConfigError: a naive datetime, or ``end`` not after ``start``.
    """

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ConfigError("a drift window needs timezone-aware datetimes (UTC)")
        if self.end <= self.start:
            raise ConfigError(
                f"a drift window must end after it starts: {self.start} .. {self.end}")


def period(start: datetime, end: datetime) -> Window:
    """A named period, e.g. last quarter's peak: ``[start, end)``."""
    return Window(start, end)


def first_days(store: Store, days: float) -> Window:
    """The start of shadow mode: ``days`` from the first stored event's ``occurred_at``.

    Raises:
        DriftError: the store holds no events.
    """
    first = _query(store, "SELECT min(occurred_at) FROM events")[0][0]
    if first is None:
        raise DriftError("no events stored: there is no start of shadow mode to compare with")
    return Window(first, first + timedelta(days=days))


def last_days(store: Store, days: float, now: datetime) -> Window:
    """The ``days`` before ``now`` (the store is unused; kept for a uniform signature)."""
    del store
    return Window(now - timedelta(days=days), now)


@dataclass(frozen=True, slots=True)
class DriftThresholds:
    """When a report counts as drifted; any one crossing is enough."""

    psi: float = 0.25
    p_value: float = 0.001
    new_outcome_share: float = 0.05


@dataclass(frozen=True, slots=True)
class SegmentDrift:
    field: str
    chi2: float | None
    dof: int | None
    p_value: float | None
    reference: dict[str, float]
    current: dict[str, float]
    pooled: tuple[str, ...] = ()
    """Values merged into the ``other`` cell for the test."""

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "chi2": self.chi2, "dof": self.dof,
                "p_value": self.p_value, "reference": self.reference,
                "current": self.current, "pooled": list(self.pooled)}


@dataclass(frozen=True, slots=True)
class NumericDrift:
    field: str
    psi: float | None
    ks: float | None
    ks_p_value: float | None
    reference_n: int
    current_n: int
    edges: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "psi": self.psi, "ks": self.ks,
                "ks_p_value": self.ks_p_value, "reference_n": self.reference_n,
                "current_n": self.current_n, "edges": list(self.edges)}


@dataclass(frozen=True, slots=True)
class DriftReport:
    """The outcome of :func:`measure_drift`. ``None`` statistics mean "no data to say"."""

    reference: Window
    current: Window
    reference_events: int
    current_events: int
    segments: tuple[SegmentDrift, ...]
    numeric: tuple[NumericDrift, ...]
    new_outcome_share: float | None
    new_outcomes: tuple[tuple[str, int], ...]
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)

    @property
    def max_psi(self) -> float | None:
        values = [n.psi for n in self.numeric if n.psi is not None]
        return max(values) if values else None

    @property
    def reasons(self) -> list[str]:
        """Each threshold crossed, in words; empty when nothing drifted."""
        t = self.thresholds
        out = [f"PSI of {n.field} is {n.psi:.3f} (threshold {t.psi})"
               for n in self.numeric if n.psi is not None and n.psi >= t.psi]
        out += [f"segment mix of {s.field}: chi-squared p = {s.p_value:.2g} (threshold {t.p_value})"
                for s in self.segments if s.p_value is not None and s.p_value < t.p_value]
        share = self.new_outcome_share
        if share is not None and share >= t.new_outcome_share:
            out.append(f"{share:.1%} of outcomes are new categories "
                       f"(threshold {t.new_outcome_share:.1%})")
        return out

    @property
    def drifted(self) -> bool:
        return bool(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        return {
            "reference": _window_dict(self.reference, self.reference_events),
            "current": _window_dict(self.current, self.current_events),
            "segments": [s.as_dict() for s in self.segments],
            "numeric": [n.as_dict() for n in self.numeric],
            "new_outcome_share": self.new_outcome_share,
            "new_outcomes": [{"value": v, "count": n} for v, n in self.new_outcomes],
            "max_psi": self.max_psi,
            "drifted": self.drifted,
            "reasons": self.reasons,
            "thresholds": {"psi": self.thresholds.psi, "p_value": self.thresholds.p_value,
                           "new_outcome_share": self.thresholds.new_outcome_share},
        }


def _window_dict(window: Window, events: int) -> dict[str, Any]:
    return {"start": window.start.isoformat(), "end": window.end.isoformat(), "events": events}


# -- measuring -------------------------------------------------------------------


def measure_drift(
    store: Store,
    *,
    reference: Window,
    current: Window,
    numeric_fields: Sequence[str] = (),
    bins: int = 10,
    outcome_label: str | None = None,
    thresholds: DriftThresholds | None = None,
    epsilon: float = 1e-4,
) -> DriftReport:
    """Compare ``current`` with ``reference``; see the module docstring for the statistics.

    Raises:
        ConfigError: ``bins`` below 2 or ``epsilon`` not positive.
        StoreError: the store cannot be read.
    """
    if bins < 2:
        raise ConfigError(f"drift needs at least 2 bins, not {bins}")
    if epsilon <= 0:
        raise ConfigError(f"the PSI epsilon must be positive, not {epsilon}")
    windows = (reference.start, reference.end, current.start, current.end)
    counts = _query(store, f"SELECT count(*) FILTER ({_IN_REF}), count(*) FILTER ({_IN_CUR}) "  # noqa: S608 - our window conditions
                    "FROM events e", windows)[0]
    numeric = [_numeric(store, PAYLOAD_LENGTH, "length(e.payload::VARCHAR)", windows, bins,
                        epsilon)]
    numeric += [_numeric(store, name, _number_at(name), windows, bins, epsilon)
                for name in numeric_fields]
    share, new = _new_outcomes(store, windows, outcome_label)
    return DriftReport(
        reference=reference, current=current,
        reference_events=int(counts[0]), current_events=int(counts[1]),
        segments=tuple(_segments(store, windows)), numeric=tuple(numeric),
        new_outcome_share=share, new_outcomes=new,
        thresholds=thresholds or DriftThresholds(),
    )


# Parameters in every query: reference start, end, current start, end.
_IN_REF = "e.occurred_at >= $1 AND e.occurred_at < $2"
_IN_CUR = "e.occurred_at >= $3 AND e.occurred_at < $4"


def _segments(store: Store, windows: tuple[datetime, ...]) -> list[SegmentDrift]:
    rows = _query(
        store,
        f"SELECT s.field, s.value, count(*) FILTER ({_IN_REF}), count(*) FILTER ({_IN_CUR}) "  # noqa: S608 - our window conditions
        "FROM event_segments s JOIN events e USING (event_id) "
        f"WHERE ({_IN_REF}) OR ({_IN_CUR}) GROUP BY ALL ORDER BY s.field, s.value",
        windows,
    )
    by_field: dict[str, dict[str, tuple[int, int]]] = {}
    for name, value, ref, cur in rows:
        by_field.setdefault(name, {})[value] = (int(ref), int(cur))
    return [_segment(name, values) for name, values in by_field.items()]


def _segment(name: str, counts: dict[str, tuple[int, int]]) -> SegmentDrift:
    ref_total = sum(r for r, _ in counts.values())
    cur_total = sum(c for _, c in counts.values())
    ref_share = {v: r / ref_total for v, (r, _) in counts.items() if r and ref_total}
    cur_share = {v: c / cur_total for v, (_, c) in counts.items() if c and cur_total}
    if not ref_total or not cur_total:
        return SegmentDrift(name, None, None, None, ref_share, cur_share)
    observed = {v: c for v, (_, c) in counts.items()}
    expected = {v: cur_total * r / ref_total for v, (r, _) in counts.items()}
    cells, pooled = pool_cells(observed, expected)
    if len(cells) < 2:
        return SegmentDrift(name, None, None, None, ref_share, cur_share, pooled)
    statistic = sum((o - e) ** 2 / e for o, e in cells.values())
    dof = len(cells) - 1
    return SegmentDrift(name, statistic, dof, chi2_sf(statistic, dof), ref_share, cur_share,
                        pooled)


def pool_cells(
    observed: dict[str, int], expected: dict[str, float], minimum: float = MIN_EXPECTED
) -> tuple[dict[str, tuple[int, float]], tuple[str, ...]]:
    """Cells ``{value: (observed, expected)}`` with small expected counts pooled.

    Values with ``expected < minimum`` go to one ``(other)`` cell; if that cell is
    still below ``minimum`` it is merged into the cell with the smallest expected
    count. Returns the cells and the pooled values, sorted.
    """
    cells = {v: (observed[v], expected[v]) for v in expected if expected[v] >= minimum}
    pooled = tuple(sorted(v for v in expected if expected[v] < minimum))
    if not pooled:
        return cells, pooled
    other = (sum(observed[v] for v in pooled), sum(expected[v] for v in pooled))
    if other[1] < minimum and cells:
        smallest = min(cells, key=lambda v: (cells[v][1], v))
        o, e = cells.pop(smallest)
        cells[OTHER] = (o + other[0], e + other[1])
        return cells, tuple(sorted((*pooled, smallest)))
    cells[OTHER] = other
    return cells, pooled


def _number_at(dotted: str) -> str:
    path = sql_json_path(dotted)
    types = ", ".join(f"'{t}'" for t in _NUMERIC_JSON_TYPES)
    return (f"CASE WHEN json_type(e.payload, '{path}') IN ({types}) "
            f"THEN CAST(e.payload ->> '{path}' AS DOUBLE) END")


def _numeric(store: Store, name: str, expression: str, windows: tuple[datetime, ...],
             bins: int, epsilon: float) -> NumericDrift:
    # Values as a derived table so the same expression is written once.
    values = (f"(SELECT {expression} AS v, {_IN_REF} AS in_ref, {_IN_CUR} AS in_cur "  # noqa: S608 - our expressions and window conditions
              f"FROM events e WHERE ({_IN_REF}) OR ({_IN_CUR})) x WHERE v IS NOT NULL")
    distinct = _query(store, "SELECT v, count(*) FILTER (in_ref), count(*) FILTER (in_cur) "  # noqa: S608
                      f"FROM {values} GROUP BY v ORDER BY v", windows)
    ref = [(float(v), int(r)) for v, r, _ in distinct if r]
    cur = [(float(v), int(c)) for v, _, c in distinct if c]
    ref_n, cur_n = sum(n for _, n in ref), sum(n for _, n in cur)
    if not ref_n or not cur_n:
        return NumericDrift(name, None, None, None, ref_n, cur_n)
    quantiles = [i / bins for i in range(1, bins)]
    raw = _query(store, f"SELECT quantile_disc(v, $5::DOUBLE[]) FROM {values} AND in_ref",  # noqa: S608
                 (*windows, quantiles))[0][0]
    edges = tuple(sorted({float(e) for e in raw}))
    # Bin k holds edges[k-1] < v <= edges[k]; the last bin everything above.
    case = " ".join(f"WHEN v <= {edge!r} THEN {k}" for k, edge in enumerate(edges))
    binned = _query(store, f"SELECT CASE {case} ELSE {len(edges)} END AS bin, "  # noqa: S608
                    "count(*) FILTER (in_ref), count(*) FILTER (in_cur) "
                    f"FROM {values} GROUP BY bin", windows)
    ref_bins = [0] * (len(edges) + 1)
    cur_bins = [0] * (len(edges) + 1)
    for k, r, c in binned:
        ref_bins[k], cur_bins[k] = int(r), int(c)
    d = ks_statistic(dict(ref), dict(cur))
    return NumericDrift(name, psi(ref_bins, cur_bins, epsilon), d, ks_p_value(d, ref_n, cur_n),
                        ref_n, cur_n, edges)


def _new_outcomes(store: Store, windows: tuple[datetime, ...],
                  outcome_label: str | None) -> tuple[float | None, tuple[tuple[str, int], ...]]:
    value = f"o.outcome ->> '{sql_json_path(outcome_label)}'"
    ref = "o.decided_at >= $1 AND o.decided_at < $2"
    cur = "o.decided_at >= $3 AND o.decided_at < $4"
    rows = _query(
        store,
        f"WITH seen AS (SELECT DISTINCT {value} AS v FROM outcomes o WHERE {ref}), "  # noqa: S608
        f"later AS (SELECT {value} AS v FROM outcomes o WHERE {cur}) "
        "SELECT v, count(*), v NOT IN (SELECT v FROM seen WHERE v IS NOT NULL) AS new "
        "FROM later WHERE v IS NOT NULL GROUP BY v ORDER BY count(*) DESC, v",
        windows,
    )
    total = sum(int(n) for _, n, _ in rows)
    new = [(str(v), int(n)) for v, n, is_new in rows if is_new]
    if not total:
        return None, ()
    return sum(n for _, n in new) / total, tuple(new[:NEW_OUTCOMES_SHOWN])


def _query(store: Store, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    try:
        return store.db.execute(sql, list(params)).fetchall()
    except duckdb.Error as exc:
        raise StoreError(f"cannot measure drift in {store.path}: {exc}") from exc


# -- metrics ---------------------------------------------------------------------


def drift_metrics(report: DriftReport) -> list[tuple[str, dict[str, str], float]]:
    """``(name, labels, value)`` for Prometheus gauges; statistics without data are left out."""
    out: list[tuple[str, dict[str, str], float]] = []
    for n in report.numeric:
        if n.psi is not None:
            out.append(("shadow_drift_psi", {"field": n.field}, n.psi))
        if n.ks is not None:
            out.append(("shadow_drift_ks_statistic", {"field": n.field}, n.ks))
    for s in report.segments:
        if s.p_value is not None:
            out.append(("shadow_drift_chi2_p_value", {"field": s.field}, s.p_value))
    if report.new_outcome_share is not None:
        out.append(("shadow_drift_new_outcome_share", {}, report.new_outcome_share))
    out.append(("shadow_drift_detected", {}, 1.0 if report.drifted else 0.0))
    return out
