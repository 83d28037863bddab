"""Times and the data window as people read them, for every rendering of a report."""

from __future__ import annotations

from datetime import datetime

from shadow.reports.owner_model import Completeness, OwnerCandidate

INTERVALS = ("Intervals are 95 % Wilson score intervals over predictions, computed once. "
             "The rollout's gates use an anytime-valid confidence sequence over one vote per "
             "case instead (docs/statistics.md): it stays valid however often it is checked, "
             "and so its lower bound is lower than the Wilson bound on the same data.")
"""Why the report's bound and the rollout gate's differ, wherever a bound is shown."""


def moment(iso: str | None) -> str:
    """``2024-03-04 09:05 UTC`` from ISO-8601 text (in UTC); ``–`` for none."""
    if not iso:
        return "–"
    try:
        at = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return at.strftime("%Y-%m-%d %H:%M UTC")


def window(first: str | None, last: str | None) -> str:
    """The span of the events, ``2024-03-04 00:12 UTC to 2024-03-17 23:50 UTC (13.9 days)``."""
    if not first or not last:
        return "no events"
    days = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds() / 86_400
    return f"{moment(first)} to {moment(last)} ({days:.1f} days)"


def completeness_facts(data: Completeness | None,
                       candidates: tuple[OwnerCandidate, ...]) -> list[tuple[str, str]]:
    """What the report is made of, as (label, value) pairs: window, events, what is
    missing, per candidate its pending predictions and errors."""
    if data is None:
        return []
    facts = [("data window (event time)", window(data.first_event, data.last_event)),
             ("events", f"{data.events:,} stored, {data.duplicates:,} duplicates skipped, "
                        f"{data.dead_letters:,} dead letters (unreadable, kept)"),
             ("outcomes", f"{data.outcomes:,} stored, {data.outcome_dead_letters:,} dead "
                          "letters")]
    several = len(candidates) > 1
    for c in candidates:
        who = f" of {c.name}" if several else ""
        facts.append((f"predictions{who}",
                      f"{c.predictions:,}: {c.agreement.n:,} compared, {c.pending:,} pending "
                      f"(no outcome yet), {c.errors.count:,} errors"))
    return facts
