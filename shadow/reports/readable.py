"""Times and the data window as people read them, for every rendering of a report."""

from __future__ import annotations

from datetime import datetime

from shadow.reports.owner_model import Completeness, OwnerCandidate, TierWork

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


def duration(seconds: float | None) -> str:
    """``45 s``, ``12.5 min``, ``3.2 h``, ``1.5 d``: three significant digits; ``–`` for none."""
    if seconds is None:
        return "–"
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def minutes(value: float | None) -> str:
    """People's time: ``1,234 min``, or ``–`` for none."""
    return "–" if value is None else f"{value:,.0f} min"


def hours(value_minutes: float | None) -> str:
    """People's time over a month, in hours: ``205.7 h``, or ``–`` for none."""
    return "–" if value_minutes is None else f"{value_minutes / 60:,.1f} h"


def work_rows(work: TierWork) -> list[tuple[str, float | None, float | None, float | None]]:
    """The projection of people's time saved, as ``(traffic, decisions per day, minutes per
    day, minutes per month)``: at the current live traffic, at current traffic all live,
    and at full production."""
    return [("current live traffic", work.daily_volume_live, work.per_day_current,
             work.per_month_current),
            ("current traffic, 100 % live", work.daily_volume_current, work.per_day_all_live,
             work.per_month_all_live),
            ("full production, 100 % live", work.daily_volume_full, work.per_day_full,
             work.per_month_full)]
