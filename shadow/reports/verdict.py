"""The owner's verdict in one line, and the next step: what every rendering shows first.

:func:`headline` reads one candidate of the typed owner report (its checklist, segments,
errors and agreement) and returns the line and the next step that the terminal table,
Markdown, HTML and JSON all show, e.g.::

    NOT READY: language=de 52.4 % < floor 70 % (n=924); everything else passes (n/a: rollout state)

A check that checked nothing (``n/a``) is never counted as passing: the line names it.
Percentages are measured values to one decimal and limits as configured (``70 %``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shadow.reports.owner_model import Check, OwnerCandidate, OwnerReport

LABELS = {"ready": "READY", "not_ready": "NOT READY", "not_enough_data": "NOT ENOUGH DATA"}

NA = "n/a"


def percent(value: float | None) -> str:
    """A measured share, one decimal: ``52.4 %``."""
    return "–" if value is None else f"{100 * value:.1f} %"


def limit(value: float | None) -> str:
    """A configured share as written: ``70 %``, ``2.5 %``."""
    return "–" if value is None else f"{100 * value:.4g} %"


def headline(candidate: OwnerCandidate) -> tuple[str, str]:
    """The verdict line and the next step of ``candidate``."""
    verdict = candidate.verdict
    label = LABELS.get(verdict.status, verdict.status.upper())
    failing = [c for c in verdict.checks if c.status == "fail" and c.name != "sample size"]
    reasons = [reason for c in failing for reason in _reasons(c, candidate)]
    sample = verdict.check("sample size")
    short = sample is not None and sample.status == "fail"
    if verdict.status == "not_enough_data" and sample is not None:
        line = f"{label}: {_too_few(candidate, sample)}"
        if reasons:
            line += "; already failing: " + "; ".join(reasons)
        return line, _wait(candidate, sample)
    if short and sample is not None and reasons:
        reasons.append(_too_few(candidate, sample))
    if not reasons:
        reasons = [_agreement(candidate) if verdict.status == "ready"
                   else "agreement not measured yet"]
    line = f"{label}: " + "; ".join(reasons) + "; " + _rest(verdict.checks, failing)
    return line, _next(verdict.status, failing, candidate)


def _rest(checks: Sequence[Check], failing: Sequence[Check]) -> str:
    others = [c for c in checks if c not in failing and c.name not in ("sample size",
                                                                         "agreement")]
    unchecked = [c.name for c in others if c.status == NA]
    return "everything else passes" + (f" ({NA}: {', '.join(unchecked)})" if unchecked else "")


def _agreement(candidate: OwnerCandidate) -> str:
    agreement = candidate.agreement
    check = candidate.verdict.check("agreement")
    threshold = None if check is None else check.threshold
    return (f"agreement lower bound {percent(agreement.low)} ≥ {limit(_share(threshold))} "
            f"(n={agreement.n:,}, Wilson 95 %)")


def _share(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def _reasons(check: Check, candidate: OwnerCandidate) -> list[str]:
    """Why ``check`` failed, in the fewest words that carry the numbers."""
    if check.name == "segments below floor":
        return [f"{s.field}={s.value} {percent(s.rate)} < floor {limit(s.floor)} "
                f"(n={s.compared:,})" for s in candidate.segments if s.below_floor]
    if check.name == "agreement":
        agreement = candidate.agreement
        return [f"agreement lower bound {percent(agreement.low)} < "
                f"{limit(_share(check.threshold))} (n={agreement.n:,}, Wilson 95 %)"]
    if check.name == "error rate":
        errors, predictions = candidate.errors, candidate.predictions
        kind = f": {candidate.errors.kinds[0].kind}" if errors.kinds else ""
        if predictions and errors.count == predictions:
            return [f"every prediction failed ({errors.count:,} of {predictions:,}{kind}), "
                    "nothing was compared"]
        return [f"error rate {percent(errors.rate)} > budget {limit(_share(check.threshold))} "
                f"({errors.count:,} of {predictions:,} predictions{kind})"]
    if check.name == "p95 latency":
        return [f"p95 latency {check.value:,.1f} ms > budget {check.threshold:,} ms"]
    if check.name == "violation rate":
        return [f"hard-constraint violations {percent(_share(check.value))} > budget "
                f"{limit(_share(check.threshold))}"]
    if check.name == "rollout state":
        return [f"rollout {check.detail}"]
    return [f"{check.name}: {check.detail}"]


def _too_few(candidate: OwnerCandidate, sample: Check) -> str:
    needed = int(sample.threshold or 0)
    line = f"{candidate.agreement.n:,} of {needed:,} comparisons needed"
    if candidate.pending == 1:
        line += " (1 prediction awaits an outcome)"
    elif candidate.pending:
        line += f" ({candidate.pending:,} predictions await an outcome)"
    return line


def _wait(candidate: OwnerCandidate, sample: Check) -> str:
    missing = int(sample.threshold or 0) - candidate.agreement.n
    return (f"Next: wait for {missing:,} more outcomes to be compared (or replay more "
            "history), then report again.")


def _next(status: str, failing: Sequence[Check], candidate: OwnerCandidate) -> str:
    if status == "ready":
        return ("Next: start a staged rollout (shadow rollout), which promotes only while "
                "its gates hold.")
    names = {c.name for c in failing}
    if "error rate" in names:
        errors = candidate.errors
        if candidate.predictions and errors.count == candidate.predictions:
            example = errors.kinds[0].example if errors.kinds else None
            said = f" (it said: {example})" if example else ""
            return (f"Next: check that the candidate is running and reachable{said}, then "
                    "replay again.")
        return "Next: fix the most frequent error (see Errors), then replay again."
    if "agreement" in names:
        return ("Next: read the disagreements to see where the candidate differs from "
                "people, improve it, and replay.")
    if "segments below floor" in names:
        below = ", ".join(f"{s.field}={s.value}" for s in candidate.segments if s.below_floor)
        return (f"Next: improve the candidate on {below} (read its disagreements), or keep "
                "it out of the rollout; then replay and report again.")
    if "violation rate" in names:
        return "Next: fix the outputs that break hard constraints (see the violations)."
    if "p95 latency" in names:
        return "Next: make the candidate faster, or agree on a higher latency budget."
    if "rollout state" in names:
        return "Next: read the rollout timeline for why it stopped."
    return "Next: compare more cases; agreement is not measured yet."


@dataclass(frozen=True, slots=True)
class Headline:
    """One candidate's verdict line, as the terminal table shows it above the figures."""

    name: str
    version: str | None
    status: str
    line: str
    next_step: str


def headlines(report: OwnerReport) -> tuple[Headline, ...]:
    """The verdict lines of every candidate of ``report``."""
    return tuple(Headline(c.name, c.version, c.verdict.status, c.verdict.line,
                          c.verdict.next_step) for c in report.candidates)


def headlines_of_json(report: dict[str, Any]) -> tuple[Headline, ...]:
    """The verdict lines from a full report's JSON (``owner.candidates[*].verdict``), as a
    daemon sends it; none when it has no owner section."""
    owner = report.get("owner") or {}
    return tuple(Headline(c["name"], c.get("version"), c["verdict"]["status"],
                          c["verdict"].get("line", ""), c["verdict"].get("next_step", ""))
                 for c in owner.get("candidates", ()))


def verdict_text(verdicts: Sequence[Headline]) -> str:
    """The verdict lines as plain text, each with its next step; the candidate named when
    there are several."""
    lines: list[str] = []
    for h in verdicts:
        version = f" (version {h.version})" if h.version else ""
        lines.append((f"{h.name}{version}: " if len(verdicts) > 1 else "") + h.line)
        if h.next_step:
            lines.append(h.next_step)
    return "\n".join(lines)
