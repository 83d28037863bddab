"""Every SQL query of the figures the reports share, one per figure, over every candidate.

:class:`Queries` holds the figures of the core report (:mod:`shadow.reports.summary`),
which the owner report (:mod:`shadow.reports.owner_queries` adds its own sections) and the
golden-set evaluation read too: per-candidate totals, comparisons, segments, fields, error
kinds, cases. Each query runs once (cached) and comes back grouped by
``(candidate, version)`` as small frozen rows; the reports shape them. What each figure
means is documented there.

An example (of an error kind, of a violated check) is the smallest text of its group,
``min``, so the same store always gives the same one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from shadow.store.database import Store

Key = tuple[str, str | None]


# -- the rows ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Totals:
    """One candidate's predictions: counts, tokens, cost and latency quantiles."""

    predictions: int
    errors: int
    abstained: int
    violations: int
    """Predictions with a list of violations (errored ones included)."""
    prompt_tokens: int | None
    completion_tokens: int | None
    cost: float | None
    """The sum of the reported costs; ``None`` when no prediction reported one."""
    costed: int
    """How many predictions reported a cost."""
    p50: float | None
    p95: float | None
    p99: float | None
    span_seconds: float
    """Last minus first ``occurred_at`` of the predictions' events."""


@dataclass(frozen=True, slots=True)
class Compared:
    """Comparisons of one candidate: how many, how many agreed, and by which comparators."""

    compared: int
    agreed: int
    comparators: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SegmentTally:
    field: str
    value: str
    compared: int
    agreed: int


@dataclass(frozen=True, slots=True)
class FieldTally:
    field: str
    compared: int
    agreed: int


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of error or violated check, how often it happened, and an example text."""

    kind: str
    count: int
    example: str | None


@dataclass(frozen=True, slots=True)
class CaseRow:
    """One prediction with the final outcome of its key and whether the two agreed
    (``None``: not compared)."""

    event_id: str
    error_type: str | None
    error_message: str | None
    abstained: bool
    output: str | None
    outcome: str | None
    agree: bool | None


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """A stored dead letter as ``shadow dead-letters`` and the control API show it."""

    kind: str
    """``event`` or ``outcome``."""
    source: str
    position: str
    reason: str
    raw: str
    received_at: str
    """ISO-8601."""


@dataclass(frozen=True, slots=True)
class StoreCounts:
    events: int
    duplicates: int
    event_dead_letters: int
    outcome_dead_letters: int
    outcomes: int
    outcome_keys: int


class Queries:
    """The figures both reports read, one query each, grouped by (candidate, version)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        return self.store.db.execute(sql, list(params)).fetchall()

    @cached_property
    def counts(self) -> StoreCounts:
        dead = dict(self._rows("SELECT kind, count(*) FROM dead_letters GROUP BY kind"))
        ((outcomes, keys),) = self._rows("SELECT count(*), count(DISTINCT key) FROM outcomes")
        return StoreCounts(events=self.store.count("events"),
                           duplicates=self.store.count("duplicates"),
                           event_dead_letters=dead.get("event", 0),
                           outcome_dead_letters=dead.get("outcome", 0),
                           outcomes=outcomes, outcome_keys=keys)

    @cached_property
    def window(self) -> tuple[datetime | None, datetime | None]:
        """The first and last ``occurred_at`` of the stored events."""
        ((first, last),) = self._rows("SELECT min(occurred_at), max(occurred_at) FROM events")
        return first, last

    @cached_property
    def totals(self) -> dict[Key, Totals]:
        """Every candidate that made a prediction, by name then version (unversioned first)."""
        rows = self._rows(
            "SELECT p.candidate, p.version, count(*), "
            "  count(*) FILTER (WHERE p.error_type IS NOT NULL), "
            "  count(*) FILTER (WHERE p.abstained), count(p.violations), "
            "  sum(p.prompt_tokens), sum(p.completion_tokens), sum(p.cost), count(p.cost), "
            "  quantile_cont(p.latency_ms, 0.50), quantile_cont(p.latency_ms, 0.95), "
            "  quantile_cont(p.latency_ms, 0.99), "
            "  epoch(max(e.occurred_at)) - epoch(min(e.occurred_at)) "
            "FROM predictions p LEFT JOIN events e USING (event_id) "
            "GROUP BY ALL ORDER BY p.candidate, p.version NULLS FIRST")
        return {
            (c, v): Totals(predictions=n, errors=failed, abstained=abstained,
                           violations=violated, prompt_tokens=prompt,
                           completion_tokens=completion, cost=cost, costed=costed,
                           p50=p50, p95=p95, p99=p99, span_seconds=span or 0.0)
            for c, v, n, failed, abstained, violated, prompt, completion, cost, costed,
            p50, p95, p99, span in rows
        }

    @cached_property
    def compared(self) -> dict[Key, Compared]:
        rows = self._rows(
            "SELECT candidate, version, count(*), count(*) FILTER (WHERE agree), "
            "  list(DISTINCT comparator ORDER BY comparator) "
            "FROM comparisons GROUP BY candidate, version")
        return {(c, v): Compared(n, a, tuple(names)) for c, v, n, a, names in rows}

    @cached_property
    def segments(self) -> dict[Key, list[SegmentTally]]:
        rows = self._rows(
            "SELECT c.candidate, c.version, s.field, s.value, count(*), "
            "  count(*) FILTER (WHERE c.agree) "
            "FROM comparisons c JOIN event_segments s USING (event_id) "
            "GROUP BY ALL ORDER BY s.field, s.value")
        out: dict[Key, list[SegmentTally]] = defaultdict(list)
        for c, v, name, value, n, agreed in rows:
            out[(c, v)].append(SegmentTally(name, value, n, agreed))
        return out

    @cached_property
    def fields(self) -> dict[Key, list[FieldTally]]:
        rows = self._rows(
            "SELECT candidate, version, field, count(*), count(*) FILTER (WHERE agree) "
            "FROM comparison_fields GROUP BY ALL ORDER BY field")
        out: dict[Key, list[FieldTally]] = defaultdict(list)
        for c, v, name, n, agreed in rows:
            out[(c, v)].append(FieldTally(name, n, agreed))
        return out

    @cached_property
    def error_kinds(self) -> dict[Key, list[Kind]]:
        """Errors by type, most frequent first."""
        return self._kinds(
            "SELECT candidate, version, error_type, count(*), min(error_message) "
            "FROM predictions WHERE error_type IS NOT NULL "
            "GROUP BY ALL ORDER BY count(*) DESC, error_type")

    @cached_property
    def violation_texts(self) -> dict[Key, list[Kind]]:
        """Violation texts by check (the first word of each text), most frequent first,
        errored predictions included."""
        return self._kinds(
            "SELECT candidate, version, split_part(v, ' ', 1) AS check_name, count(*), min(v) "
            "FROM (SELECT candidate, version, unnest(violations) AS v FROM predictions "
            "  WHERE violations IS NOT NULL) "
            "GROUP BY ALL ORDER BY count(*) DESC, check_name")

    def _kinds(self, sql: str) -> dict[Key, list[Kind]]:
        out: dict[Key, list[Kind]] = defaultdict(list)
        for c, v, kind, n, example in self._rows(sql):
            out[(c, v)].append(Kind(kind, n, example))
        return out

    def cases(self) -> list[CaseRow]:
        """Every prediction with its event's final outcome and its comparison, by event id:
        the cases of a golden set (``shadow.reports.golden_set``)."""
        rows = self._rows(
            "WITH final AS ("
            "  SELECT key, arg_max(outcome, decided_at) AS outcome FROM outcomes GROUP BY key) "
            "SELECT e.event_id, p.error_type, p.error_message, p.abstained, p.output, "
            "  f.outcome, c.agree "
            "FROM events e JOIN predictions p USING (event_id) "
            "LEFT JOIN final f ON f.key = e.key "
            "LEFT JOIN comparisons c ON c.event_id = p.event_id AND c.candidate = p.candidate "
            "  AND c.version IS NOT DISTINCT FROM p.version "
            "ORDER BY e.event_id")
        return [CaseRow(*row) for row in rows]

    def recent_dead_letters(self, limit: int) -> list[DeadLetterRow]:
        """The latest dead letters, newest first, with their raw text."""
        rows = self._rows(
            "SELECT kind, source, position, reason, raw, received_at FROM dead_letters "
            "ORDER BY received_at DESC, source, position LIMIT ?", [limit])
        return [DeadLetterRow(k, s, p, r, raw, at.isoformat()) for k, s, p, r, raw, at in rows]
