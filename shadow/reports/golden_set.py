"""``shadow eval``: a golden-set regression gate for CI.

Runs one candidate over a labelled golden set through the real pipeline (a
throwaway DuckDB store, the configured comparator), then reports agreement
overall, per segment and per field, the cases whose verdict changed against a
baseline (the ``--out`` JSON of an earlier run), and checks the gates.

A golden set is either the canonical event and outcome files (``GOLDEN`` events
plus ``--outcomes``), or one JSONL file of canonical events that each carry an
extra ``expected`` field holding the outcome; its outcome is taken as decided at
the event's ``occurred_at``.

Exit codes:
    0  the gates passed (or none was asked for);
    1  runtime failure (the store could not be written, …);
    2  usage or configuration error, one line on stderr;
    3  a gate failed: agreement below ``--fail-below``, or more than
       ``--max-drop`` percentage points below the baseline's agreement.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shadow.core.errors import ConfigError, ShadowError
from shadow.core.fixed_sample import wilson
from shadow.reports.queries import CaseRow, Queries
from shadow.reports.values import as_json

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_GATE = 0, 1, 2, 3

VERDICTS = ("agree", "disagree", "error", "abstain", "no_outcome")
"""A case's verdict; only ``agree`` and ``disagree`` count towards agreement."""


@dataclass(frozen=True)
class EvalRequest:
    """What the user asked for; flags win over the configuration file."""

    golden: list[Path]
    outcomes: list[Path] = field(default_factory=list)
    candidate: str | None = None
    config: Path | None = None
    compare: str | None = None
    baseline: Path | None = None
    fail_below: float | None = None
    max_drop: float | None = None


@dataclass(frozen=True)
class Case:
    """One golden case: its verdict, and what to show when it is not an agreement."""

    event_id: str
    verdict: str
    expected: Any = None
    got: Any = None
    error: str | None = None


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    message: str


@dataclass(frozen=True, slots=True)
class Rate:
    """Agreeing / compared golden cases with the 95 % Wilson interval."""

    rate: float | None
    low: float | None
    high: float | None
    compared: int
    agreed: int

    @classmethod
    def of(cls, agreed: int, compared: int) -> Rate:
        return cls(*wilson(agreed, compared), compared=compared, agreed=agreed)


@dataclass(frozen=True, slots=True)
class SegmentRate:
    field: str
    value: str
    rate: float | None
    low: float | None
    high: float | None
    compared: int
    agreed: int


@dataclass(frozen=True, slots=True)
class FieldRate:
    field: str
    rate: float | None
    low: float | None
    high: float | None
    compared: int
    agreed: int


@dataclass(frozen=True)
class EvalResult:
    candidate: str
    version: str | None
    agreement: Rate
    segments: list[SegmentRate]
    fields: list[FieldRate]
    cases: list[Case]
    errors: int
    changed: list[tuple[str, str, str]] = field(default_factory=list)
    """``(event_id, baseline verdict, verdict)``; ``absent`` where a side lacks the case."""
    baseline_rate: float | None = None
    gates: list[Gate] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(gate.passed for gate in self.gates)

    def as_json(self) -> dict[str, Any]:
        """The ``--out`` document, which is also the ``--baseline`` format."""
        return {
            "candidate": self.candidate, "version": self.version,
            "agreement": as_json(self.agreement), "segments": as_json(self.segments),
            "fields": as_json(self.fields),
            "cases": {case.event_id: case.verdict for case in self.cases},
            "errors": self.errors,
        }


# -- running ------------------------------------------------------------------


def run_eval(request: EvalRequest) -> EvalResult:
    """Replay the golden set into a temporary store, measure, compare with the baseline.

    Raises:
        ConfigError: a missing or malformed file, flag or baseline.
    """
    _check_flags(request)
    baseline = _load_baseline(request.baseline) if request.baseline is not None else None
    for path in [*request.golden, *request.outcomes]:
        if not path.is_file():
            raise ConfigError(f"no such file: {path}")
    with tempfile.TemporaryDirectory(prefix="shadow-eval-") as scratch:
        events, outcomes = request.golden, request.outcomes
        if not outcomes:
            events, outcomes = _split_golden(request, Path(scratch))
        db = Path(scratch) / "eval.duckdb"
        _replay(request, events, outcomes, db)
        result = _measure(db)
    if baseline is not None:
        result = _against_baseline(result, baseline)
    return _with_gates(result, request)


def _check_flags(request: EvalRequest) -> None:
    if request.fail_below is not None and not 0.0 <= request.fail_below <= 1.0:
        raise ConfigError(
            f"--fail-below: expected a rate between 0 and 1, got {request.fail_below}")
    if request.max_drop is not None:
        if request.max_drop < 0:
            raise ConfigError(f"--max-drop: expected points >= 0, got {request.max_drop}")
        if request.baseline is None:
            raise ConfigError("--max-drop needs --baseline (the --out JSON of an earlier run)")


def _load_baseline(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read baseline {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"baseline {path} is not JSON: {exc}") from exc
    ok = (isinstance(raw, dict) and isinstance(raw.get("agreement"), dict)
          and isinstance(raw.get("cases"), dict))
    if not ok:
        raise ConfigError(f"baseline {path}: expected the --out JSON of an earlier shadow eval")
    return dict(raw)


def _split_golden(request: EvalRequest, scratch: Path) -> tuple[list[Path], list[Path]]:
    """Write the single-file golden set as canonical events and outcomes files."""
    from shadow.config.file import load_config

    config = load_config(request.config)
    if config.mapping.model_dump() != type(config.mapping)().model_dump():
        raise ConfigError("a single-file golden set uses the canonical formats; with a "
                          "'mapping' in the config give the outcomes with --outcomes")
    events_path, outcomes_path = scratch / "events.jsonl", scratch / "outcomes.jsonl"
    with events_path.open("w", encoding="utf-8") as events, \
            outcomes_path.open("w", encoding="utf-8") as outcomes:
        for path in request.golden:
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                event, outcome = _split_line(line, f"{path}:{number}")
                events.write(json.dumps(event) + "\n")
                outcomes.write(json.dumps(outcome) + "\n")
    return [events_path], [outcomes_path]


def _split_line(line: str, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise ConfigError(f"{where}: not a JSON line ({exc})") from exc
    if not isinstance(event, dict) or "expected" not in event:
        raise ConfigError(f"{where}: expected an event with an 'expected' field "
                          "(or give the outcomes in their own file with --outcomes)")
    expected = event.pop("expected")
    if not event.get("key") or not event.get("occurred_at"):
        raise ConfigError(f"{where}: the event needs 'key' and 'occurred_at'")
    outcome = {"key": event["key"], "outcome": expected, "decided_at": event["occurred_at"]}
    return event, outcome


def _replay(request: EvalRequest, events: list[Path], outcomes: list[Path], db: Path) -> None:
    from shadow.config.file import load_config
    from shadow.pipeline.replay import ReplayRequest, replay_files

    if request.candidate is None and len(load_config(request.config).all_candidates()) > 1:
        raise ConfigError("the config names several candidates; pick one with --candidate")
    summary = replay_files(ReplayRequest(
        events=events, outcomes=outcomes, db=db, config=request.config,
        candidate=request.candidate, compare=request.compare,
    ))
    # A golden set is curated: a case silently dropped would weaken the gate.
    if summary.dead_letters or summary.outcome_dead_letters:
        raise ConfigError(f"the golden set has {summary.dead_letters} unreadable events and "
                          f"{summary.outcome_dead_letters} unreadable outcomes; see "
                          "`shadow dead-letters` after a `shadow replay` of the same files")
    if summary.duplicates:
        raise ConfigError(f"the golden set repeats {summary.duplicates} event ids")
    if not summary.events_stored:
        raise ConfigError("the golden set is empty")
    if summary.deferred:
        # Agreement over the cases the judge happened to answer would pass a weaker gate.
        raise ShadowError(f"the comparator gave no verdict on {summary.deferred} golden "
                          "cases (see the warning above); evaluate again once it can")


def _measure(db: Path) -> EvalResult:
    from shadow.store.database import Store

    with Store(db, read_only=True) as store:
        q = Queries(store)
        candidate, version = next(iter(q.totals))  # the one candidate that ran
        cases = [_case(row) for row in q.cases()]
        segments = [SegmentRate(s.field, s.value, *wilson(s.agreed, s.compared),
                                compared=s.compared, agreed=s.agreed)
                    for s in q.segments.get((candidate, version), [])]
        fields = [FieldRate(f.field, *wilson(f.agreed, f.compared), compared=f.compared,
                            agreed=f.agreed)
                  for f in q.fields.get((candidate, version), [])]
    agreed = sum(case.verdict == "agree" for case in cases)
    compared = agreed + sum(case.verdict == "disagree" for case in cases)
    return EvalResult(
        candidate=candidate, version=version, agreement=Rate.of(agreed, compared),
        segments=segments, fields=fields, cases=cases,
        errors=sum(case.verdict == "error" for case in cases),
    )


def _case(row: CaseRow) -> Case:
    expected = json.loads(row.outcome) if row.outcome is not None else None
    got = json.loads(row.output) if row.output is not None else None
    if row.error_type is not None:
        return Case(row.event_id, "error", expected, None,
                    f"{row.error_type}: {row.error_message}")
    if row.abstained:
        return Case(row.event_id, "abstain", expected, got)
    if row.agree is None:
        return Case(row.event_id, "no_outcome", None, got)
    return Case(row.event_id, "agree" if row.agree else "disagree", expected, got)


def _against_baseline(result: EvalResult, baseline: dict[str, Any]) -> EvalResult:
    before: dict[str, str] = {str(k): str(v) for k, v in baseline["cases"].items()}
    now = {case.event_id: case.verdict for case in result.cases}
    changed = [
        (event_id, before.get(event_id, "absent"), now.get(event_id, "absent"))
        for event_id in sorted(before.keys() | now.keys())
        if before.get(event_id, "absent") != now.get(event_id, "absent")
    ]
    rate = baseline["agreement"].get("rate")
    return replace(result, changed=changed,
                    baseline_rate=float(rate) if isinstance(rate, int | float) else None)


def _with_gates(result: EvalResult, request: EvalRequest) -> EvalResult:
    return replace(result, gates=gates(result.agreement.rate, result.baseline_rate,
                                        fail_below=request.fail_below,
                                        max_drop=request.max_drop))


def gates(rate: float | None, baseline_rate: float | None, *,
          fail_below: float | None, max_drop: float | None) -> list[Gate]:
    """The gates asked for, judged; an unknown agreement (nothing compared) fails them."""
    found: list[Gate] = []
    shown = percent(rate)
    if fail_below is not None:
        passed = rate is not None and rate >= fail_below
        found.append(Gate("agreement >= floor", passed,
                          f"agreement {shown} {'>=' if passed else '<'} floor "
                          f"{percent(fail_below)}"))
    if max_drop is not None:
        if rate is None or baseline_rate is None:
            found.append(Gate("drop <= max", False,
                              f"agreement {shown}, baseline {percent(baseline_rate)}: "
                              "cannot measure the drop"))
        else:
            drop = 100 * (baseline_rate - rate)
            passed = drop <= max_drop + 1e-9
            found.append(Gate("drop <= max", passed,
                              f"drop {drop:+.1f} points against baseline "
                              f"{percent(baseline_rate)} {'<=' if passed else '>'} "
                              f"max {max_drop:g}"))
    return found


def percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f} %"
