"""The SQL of the sections only owners read, one query per section, over every candidate.

:class:`OwnerQueries` extends :class:`shadow.reports.queries.Queries` (the figures every
report shares) with over time, confusion, coverage, latency histogram, disagreements,
violations, the human baseline and the rollout; the rows come back as the owner report's
typed sections (:mod:`shadow.reports.owner_model`), which :mod:`shadow.reports.owner`
assembles into the report and its verdict.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from functools import cached_property
from typing import Any

import orjson

from rollout.unit_store import later_disagreements, stored_label_delays
from shadow.core.actions import Action, actions_of
from shadow.core.fixed_sample import wilson
from shadow.core.paths import sql_json_path
from shadow.core.redaction import redact, redact_within
from shadow.reports.options import OwnerOptions
from shadow.reports.owner_model import (
    ActionExample,
    Baseline,
    Bucket,
    Confusion,
    CoveragePoint,
    Day,
    Disagreement,
    LabelDelays,
    RolloutState,
    SegmentBaseline,
    TimelineEntry,
    ToolRate,
    VerdictDelay,
    ViolationExample,
    Withdrawn,
)
from shadow.reports.owner_tiers import TierQueries
from shadow.reports.queries import Key, Queries
from shadow.store.database import Store

COVERAGE_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
LATENCY_BOUNDS_MS = tuple(
    round(m * 10.0**e, 6) for e in range(-1, 6) for m in (1, 2, 5)
) + (1_000_000.0,)
"""Upper bounds of the latency buckets, 0.1 ms to 1,000 s."""
MAX_LABELS = 12


def _label(column: str, path: str) -> str:
    return (f"CASE WHEN json_type({column}, '{path}') = 'VARCHAR' "
            f"THEN {column} ->> '{path}' END")


def _confusion(pairs: list[tuple[str | None, str | None, int]]) -> Confusion | None:
    labelled = [(h, a, n) for h, a, n in pairs if h is not None and a is not None]
    if not labelled:
        return None
    frequency: Counter[str] = Counter()
    for human, ai, n in labelled:
        frequency[human] += n
        frequency[ai] += n
    labels = sorted(frequency, key=lambda label: (-frequency[label], label))[:MAX_LABELS]
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    other = sum(n for h, a, n in pairs if h is None or a is None)
    for human, ai, n in labelled:
        if human in index and ai in index:
            matrix[index[human]][index[ai]] += n
        else:
            other += n
    return Confusion(tuple(labels), tuple(map(tuple, matrix)), other)


def _histogram(counts: dict[int, int], top: float) -> tuple[Bucket, ...]:
    if not counts:
        return ()
    first, last = min(counts), max(counts)
    bounds = (*LATENCY_BOUNDS_MS, top)
    return tuple(Bucket(bounds[i], counts.get(i, 0)) for i in range(first, last + 1))


_SAME_PREDICTION = ("c.event_id = p.event_id AND c.candidate = p.candidate "
                    "AND c.version IS NOT DISTINCT FROM p.version")


class OwnerQueries(Queries):
    """The sections only owners read, shaped by their options."""

    def __init__(self, store: Store, options: OwnerOptions) -> None:
        super().__init__(store)
        self.options = options

    @cached_property
    def tier_queries(self) -> TierQueries:
        """The figures by tier (:mod:`shadow.reports.owner_tiers`)."""
        return TierQueries(self.store)

    @cached_property
    def over_time(self) -> dict[Key, list[Day]]:
        rows = self._rows(
            "SELECT c.candidate, c.version, CAST(e.occurred_at AS DATE) AS day, count(*), "
            "  count(*) FILTER (WHERE c.agree) "
            "FROM comparisons c JOIN events e USING (event_id) GROUP BY ALL ORDER BY day")
        out: dict[Key, list[Day]] = defaultdict(list)
        for c, v, day, n, agreed in rows:
            out[(c, v)].append(Day(day.isoformat(), n, agreed, *wilson(agreed, n)))
        return out

    @cached_property
    def confusion(self) -> dict[Key, Confusion | None]:
        human = _label("o.outcome", sql_json_path(self.options.outcome_label))
        ai = _label("p.output", sql_json_path(self.options.prediction_label))
        rows = self._rows(
            f"SELECT c.candidate, c.version, {human}, {ai}, count(*) "  # noqa: S608
            "FROM comparisons c JOIN events e USING (event_id) "
            f"JOIN predictions p ON {_SAME_PREDICTION} "
            "JOIN outcomes o ON o.key = e.key AND o.decided_at = c.outcome_decided_at "
            "GROUP BY ALL")
        pairs: dict[Key, list[tuple[str | None, str | None, int]]] = defaultdict(list)
        for c, v, h, a, n in rows:
            pairs[(c, v)].append((h, a, n))
        return {key: _confusion(found) for key, found in pairs.items()}

    @cached_property
    def coverage(self) -> dict[Key, tuple[CoveragePoint, ...]]:
        columns = ", ".join(
            "count(*) FILTER (WHERE p.confidence >= ?), "
            "count(c.agree) FILTER (WHERE p.confidence >= ?), "
            "count(*) FILTER (WHERE c.agree AND p.confidence >= ?)"
            for _ in COVERAGE_THRESHOLDS)
        params = [t for t in COVERAGE_THRESHOLDS for _ in range(3)]
        rows = self._rows(
            f"SELECT p.candidate, p.version, count(*), {columns} "  # noqa: S608
            f"FROM predictions p LEFT JOIN comparisons c ON {_SAME_PREDICTION} "
            "GROUP BY ALL HAVING count(p.confidence) > 0", params)
        out: dict[Key, tuple[CoveragePoint, ...]] = {}
        for c, v, total, *counts in rows:
            out[(c, v)] = tuple(
                CoveragePoint(threshold=t, coverage=counts[3 * i] / total, n=counts[3 * i + 1],
                              agreed=counts[3 * i + 2],
                              agreement=counts[3 * i + 2] / counts[3 * i + 1]
                              if counts[3 * i + 1] else None)
                for i, t in enumerate(COVERAGE_THRESHOLDS))
        return out

    @cached_property
    def histogram(self) -> dict[Key, tuple[Bucket, ...]]:
        cases = " ".join(f"WHEN latency_ms <= {bound!r} THEN {i}"
                         for i, bound in enumerate(LATENCY_BOUNDS_MS))
        rows = self._rows(
            f"SELECT candidate, version, CASE {cases} ELSE {len(LATENCY_BOUNDS_MS)} END AS b, "  # noqa: S608
            "  count(*), max(latency_ms) FROM predictions GROUP BY ALL")
        counts: dict[Key, dict[int, int]] = defaultdict(dict)
        top: dict[Key, float] = {}
        for c, v, bucket, n, highest in rows:
            counts[(c, v)][bucket] = n
            top[(c, v)] = max(top.get((c, v), 0.0), highest)
        return {key: _histogram(found, top[key]) for key, found in counts.items()}

    @cached_property
    def disagreements(self) -> dict[Key, list[Disagreement]]:
        """The most recent disagreements of each candidate, by event time, newest first."""
        out: dict[Key, list[Disagreement]] = defaultdict(list)
        for key, row in self.disagreement_rows(self.options.top_disagreements):
            out[key].append(row)
        return out

    def disagreement_rows(self, limit: int | None = None) -> Iterator[tuple[Key, Disagreement]]:
        """Every disagreement (at most ``limit`` per candidate), by candidate, then by event
        time, newest first; payloads redacted, and a private value echoed elsewhere in the
        payload, in the output, the outcome or the note redacted there too."""
        ranked = ("QUALIFY row_number() OVER (PARTITION BY c.candidate, c.version "
                  "  ORDER BY e.occurred_at DESC, e.event_id DESC) <= ? "
                  if limit is not None else "")
        cursor = self.store.db.cursor()
        cursor.execute(
            "SELECT c.candidate, c.version, e.event_id, e.key, e.segment, e.payload, p.output, "  # noqa: S608 - our join condition
            "  o.outcome, c.outcome_decided_at, c.note, e.occurred_at "
            "FROM comparisons c JOIN events e USING (event_id) "
            f"JOIN predictions p ON {_SAME_PREDICTION} "
            "LEFT JOIN outcomes o ON o.key = e.key AND o.decided_at = c.outcome_decided_at "
            f"WHERE NOT c.agree {ranked}"
            "ORDER BY c.candidate, c.version NULLS FIRST, e.occurred_at DESC, e.event_id DESC",
            [] if limit is None else [limit])
        paths, first = self.options.redact, self.options.disagreement_fields
        # The compared field of an output or outcome (the comparator's path) comes first.
        compared_output = _paths(self.options.prediction_label)
        compared_outcome = _paths(self.options.outcome_label)
        while batch := cursor.fetchmany(1000):
            for (c, v, event_id, key, segment, payload, output, outcome, decided_at, note,
                 occurred_at) in batch:
                loaded = _loads(payload)
                # One pass, so the payload's private values are looked up once per row; the
                # payload too, as a private value may be quoted in another of its fields (a
                # name in a signature).
                shown_payload, shown_output, shown_outcome, shown_note = redact_within(
                    [redact(loaded, paths), _loads(output), _loads(outcome), note], loaded,
                    paths)
                yield (c, v), Disagreement(
                    event_id=event_id, key=key, segment=_loads(segment),
                    payload=ordered(shown_payload, first),
                    output=ordered(shown_output, compared_output),
                    outcome=ordered(shown_outcome, compared_outcome),
                    decided_at=decided_at.isoformat(), note=shown_note,
                    occurred_at=occurred_at.isoformat())

    @cached_property
    def tools(self) -> dict[Key, list[ToolRate]]:
        """Per tool, the actions proposed and taken in the predictions an ``actions``
        comparator judged, with the most recent extra and missed ones (redacted)."""
        tallies: dict[Key, dict[str, _ToolTally]] = defaultdict(dict)
        cursor = self.store.db.cursor()
        cursor.execute(
            "SELECT c.candidate, c.version, e.event_id, e.key, e.occurred_at, e.payload, "  # noqa: S608 - our join condition
            "  p.output, o.outcome "
            "FROM comparisons c JOIN events e USING (event_id) "
            f"JOIN predictions p ON {_SAME_PREDICTION} "
            "JOIN outcomes o ON o.key = e.key AND o.decided_at = c.outcome_decided_at "
            f"WHERE c.comparator LIKE '{ACTIONS_COMPARATOR}%' "
            "ORDER BY e.occurred_at DESC, e.event_id DESC")
        while batch := cursor.fetchmany(1000):
            for c, v, event_id, key, occurred_at, payload, output, outcome in batch:
                where = (event_id, key, occurred_at.isoformat(), payload)
                _tally(tallies[(c, v)], actions_of(_loads(output)).actions,
                       actions_of(_loads(outcome)).actions, where, self.options)
        if not tallies:
            return {}
        arguments = self._argument_verdicts()
        out: dict[Key, list[ToolRate]] = {}
        for key, tools in tallies.items():
            verdicts = _by_tool(arguments.get(key, {}), tools)
            out[key] = [found.rate(*verdicts.get(tool, (0, 0)))
                        for tool, found in sorted(tools.items())]
        return out

    def _argument_verdicts(self) -> dict[Key, dict[str, tuple[int, int]]]:
        """``field -> (verdicts, agreed)`` of the fields of ``actions`` comparisons."""
        rows = self._rows(
            "SELECT f.candidate, f.version, f.field, count(*), count(*) FILTER (WHERE f.agree) "  # noqa: S608
            "FROM comparison_fields f JOIN comparisons c ON c.event_id = f.event_id "
            "  AND c.candidate = f.candidate AND c.version IS NOT DISTINCT FROM f.version "
            f"WHERE c.comparator LIKE '{ACTIONS_COMPARATOR}%' GROUP BY ALL")
        out: dict[Key, dict[str, tuple[int, int]]] = defaultdict(dict)
        for c, v, name, n, agreed in rows:
            out[(c, v)][name] = (n, agreed)
        return out

    @cached_property
    def violation_counts(self) -> dict[Key, tuple[int, int]]:
        rows = self._rows(
            "SELECT candidate, version, count(*), count(*) FILTER (WHERE len(violations) > 0) "
            "FROM predictions WHERE error_type IS NULL GROUP BY ALL")
        return {(c, v): (checked, violating) for c, v, checked, violating in rows}

    @cached_property
    def violation_kinds(self) -> dict[Key, list[tuple[str, int, int]]]:
        """``(check, predictions caught, violation texts)`` of the checked predictions."""
        rows = self._rows(
            "SELECT candidate, version, split_part(v, ' ', 1) AS check_name, "
            "  count(DISTINCT event_id) AS caught, count(*) "
            "FROM (SELECT candidate, version, event_id, unnest(violations) AS v "
            "  FROM predictions WHERE error_type IS NULL AND len(violations) > 0) "
            "GROUP BY ALL ORDER BY caught DESC, check_name")
        out: dict[Key, list[tuple[str, int, int]]] = defaultdict(list)
        for c, v, check, caught, n in rows:
            out[(c, v)].append((check, caught, n))
        return out

    @cached_property
    def violation_examples(self) -> dict[Key, list[ViolationExample]]:
        rows = self._rows(
            "SELECT p.candidate, p.version, e.event_id, e.key, e.occurred_at, p.violations, "
            "  e.payload "
            "FROM predictions p JOIN events e USING (event_id) "
            "WHERE p.error_type IS NULL AND len(p.violations) > 0 "
            "QUALIFY row_number() OVER (PARTITION BY p.candidate, p.version "
            "  ORDER BY e.occurred_at DESC, e.event_id DESC) <= ? "
            "ORDER BY e.occurred_at DESC, e.event_id DESC", [self.options.top_violations])
        paths = self.options.redact
        out: dict[Key, list[ViolationExample]] = defaultdict(list)
        for c, v, event_id, key, occurred_at, texts, payload in rows:
            shown = redact_within(list(texts), _loads(payload), paths) if paths else list(texts)
            out[(c, v)].append(ViolationExample(event_id, key, occurred_at.isoformat(),
                                                tuple(shown)))
        return out

    def human_baseline(self) -> Baseline | None:
        ((keys, pairs, agreed),) = self._rows(
            "WITH known AS (SELECT key, actor, CAST(outcome AS VARCHAR) AS outcome, "
            "    lag(actor) OVER w AS previous_actor, "
            "    lag(CAST(outcome AS VARCHAR)) OVER w AS previous "
            "  FROM outcomes WHERE actor IS NOT NULL "
            "  WINDOW w AS (PARTITION BY key ORDER BY decided_at)) "
            "SELECT count(DISTINCT key), count(*), "
            "  count(*) FILTER (WHERE outcome IS NOT DISTINCT FROM previous) "
            "FROM known WHERE previous_actor IS NOT NULL AND previous_actor <> actor")
        if not keys:
            return None
        return Baseline(keys, pairs, agreed, *wilson(agreed, pairs),
                        segments=self._baseline_segments())

    def _baseline_segments(self) -> tuple[SegmentBaseline, ...]:
        """The same pairs by the segments of their case's events."""
        rows = self._rows(
            "WITH known AS (SELECT key, actor, CAST(outcome AS VARCHAR) AS outcome, "
            "    lag(actor) OVER w AS previous_actor, "
            "    lag(CAST(outcome AS VARCHAR)) OVER w AS previous "
            "  FROM outcomes WHERE actor IS NOT NULL "
            "  WINDOW w AS (PARTITION BY key ORDER BY decided_at)), "
            "pairs AS (SELECT key, outcome IS NOT DISTINCT FROM previous AS agree FROM known "
            "  WHERE previous_actor IS NOT NULL AND previous_actor <> actor), "
            "cases AS (SELECT DISTINCT e.key, s.field, s.value "
            "  FROM events e JOIN event_segments s USING (event_id)) "
            "SELECT s.field, s.value, count(*), count(*) FILTER (WHERE p.agree) "
            "FROM pairs p JOIN cases s USING (key) GROUP BY ALL ORDER BY ALL")
        return tuple(SegmentBaseline(f, v, n, agreed, *wilson(agreed, n))
                     for f, v, n, agreed in rows)

    @cached_property
    def rollout_states(self) -> dict[Key, RolloutState]:
        rows = self._rows(
            "SELECT rollout, candidate, version, step, percent, status, step_started_at, "
            "  updated_at, revision FROM rollout_state "
            "QUALIFY row_number() OVER (PARTITION BY candidate, version "
            "  ORDER BY updated_at DESC, rollout) = 1")
        return {
            (candidate, version): RolloutState(
                rollout=rollout, candidate=candidate, version=version, step=step,
                percent=percent, status=status, step_started_at=_iso(started),
                updated_at=updated.isoformat(), revision=revision)
            for rollout, candidate, version, step, percent, status, started, updated, revision
            in rows
        }

    def label_delays(self, rollout: str) -> LabelDelays:
        """How late labels came in the rollout's current step, by verdict, and whether
        disagreements came later: the gates count a key only once its label window has
        passed, one vote per key, and this is why."""
        delays = stored_label_delays(self.store.db).get(rollout, ())
        return LabelDelays(
            unit="key",
            by_verdict=tuple(VerdictDelay("agree" if d.agreed else "disagree", d.labelled,
                                          d.median.total_seconds(), d.p95.total_seconds())
                             for d in delays),
            disagreements_later=later_disagreements(delays) is not None)

    def withdrawn(self) -> tuple[Withdrawn, ...]:
        """Live decisions never published, by candidate and reason (rollout/outbox.py)."""
        rows = self._rows(
            "SELECT candidate, version, withdrawn_reason, count(*) FROM predictions "
            "WHERE withdrawn_at IS NOT NULL GROUP BY ALL ORDER BY ALL")
        return tuple(Withdrawn(c, v, r, n) for c, v, r, n in rows)

    def timeline(self, rollout: str) -> tuple[TimelineEntry, ...]:
        rows = self._rows(
            "SELECT changed_at, actor, token, action, from_step, to_step, percent, to_status, "
            "reason FROM rollout_audit WHERE rollout = ? ORDER BY revision", [rollout])
        return tuple(TimelineEntry(at.isoformat(), *rest) for at, *rest in rows)


MAX_ACTION_EXAMPLES = 5
"""Examples of extra and of missed actions per tool, at most (and no more than
``top_disagreements``)."""
ACTIONS_COMPARATOR = "actions:"
"""How the names of ``actions`` comparators begin (the kind, then the fingerprint)."""


class _ToolTally:
    """One tool's counts and examples, filled row by row, newest event first."""

    def __init__(self, tool: str) -> None:
        self.tool = tool
        self.proposed = self.taken = self.matched = 0
        self.extra: list[ActionExample] = []
        self.missed: list[ActionExample] = []

    def rate(self, compared: int, agreed: int) -> ToolRate:
        return ToolRate(
            tool=self.tool, proposed=self.proposed, taken=self.taken, matched=self.matched,
            precision=self.matched / self.proposed if self.proposed else None,
            recall=self.matched / self.taken if self.taken else None,
            arguments_compared=compared, arguments_agreed=agreed,
            argument_agreement=agreed / compared if compared else None,
            extra=tuple(self.extra), missed=tuple(self.missed))


def _by_tool(fields: dict[str, tuple[int, int]], tools: Iterable[str]
             ) -> dict[str, tuple[int, int]]:
    """Argument verdicts ``(compared, agreed)`` summed per tool: a field ``tool.argument``
    is the longest tool's whose name and a dot begin it (``crm.update.x`` is
    ``crm.update``'s when both ``crm`` and ``crm.update`` are tools)."""
    by_longest = sorted(tools, key=len, reverse=True)
    out: dict[str, tuple[int, int]] = {}
    for name, (n, agreed) in fields.items():
        tool = next((t for t in by_longest if name.startswith(f"{t}.")), None)
        if tool is not None:
            before = out.get(tool, (0, 0))
            out[tool] = (before[0] + n, before[1] + agreed)
    return out


def _tally(tools: dict[str, _ToolTally], proposed: Sequence[Action], taken: Sequence[Action],
           where: tuple[str, str, str, str | None], options: OwnerOptions) -> None:
    by_tool: dict[str, tuple[list[Action], list[Action]]] = defaultdict(lambda: ([], []))
    for action in proposed:
        by_tool[action.tool][0].append(action)
    for action in taken:
        by_tool[action.tool][1].append(action)
    for tool, (mine, theirs) in by_tool.items():
        found = tools.setdefault(tool, _ToolTally(tool))
        found.proposed += len(mine)
        found.taken += len(theirs)
        found.matched += min(len(mine), len(theirs))
        extra, missed = _unpaired(mine, theirs)
        for listed, actions in ((found.extra, extra), (found.missed, missed)):
            for action in actions:
                if len(listed) < min(MAX_ACTION_EXAMPLES, options.top_disagreements):
                    listed.append(_example(action, where, options))


def _unpaired(mine: list[Action], theirs: list[Action]) -> tuple[list[Action], list[Action]]:
    """The AI's and the person's actions of one tool left once equal arguments are paired,
    then the rest in order: the extra and the missed ones."""
    left = list(theirs)
    unequal: list[Action] = []
    for action in mine:
        same = next((h for h in left if _same(h.arguments, action.arguments)), None)
        if same is None:
            unequal.append(action)
        else:
            left.remove(same)
    paired = min(len(unequal), len(left))
    return unequal[paired:], left[paired:]


def _same(a: Any, b: Any) -> bool:
    return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        b, option=orjson.OPT_SORT_KEYS)


def _example(action: Action, where: tuple[str, str, str, str | None],
             options: OwnerOptions) -> ActionExample:
    event_id, key, occurred_at, payload = where
    paths = options.redact
    arguments = (redact_within(action.arguments, _loads(payload), paths) if paths
                 else action.arguments)
    return ActionExample(event_id, key, occurred_at, arguments)


SHORT_TEXT = 80
"""Text fields up to this long, on one line, come first in a payload when no
``disagreement_fields`` are configured: subjects, names, categories."""


def ordered(payload: Any, first: Sequence[str] = ()) -> Any:
    """``payload`` with the fields that matter first: those of the dotted paths ``first``
    (by their top-level field, in that order), else the short text fields; then the rest in
    the payload's own order. Anything but an object is returned as it is."""
    if not isinstance(payload, dict):
        return payload
    if first:
        leading = [k for k in dict.fromkeys(p.split(".", 1)[0] for p in first) if k in payload]
    else:
        leading = [k for k, v in payload.items()
                   if isinstance(v, str) and len(v) <= SHORT_TEXT and "\n" not in v]
    return {**{k: payload[k] for k in leading}, **payload}


def _paths(path: str | None) -> tuple[str, ...]:
    return () if path is None else (path,)


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)
