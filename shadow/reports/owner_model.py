"""The owner report as typed values: one frozen dataclass per section.

Field names, in order, are the keys of the report's JSON (``shadow.reports.values``
serialises them); what each figure means is written in :mod:`shadow.reports.owner`.
Rates come with their 95 % Wilson interval as ``rate``, ``low`` and ``high``, ``None``
when nothing was counted. Payloads, segments, outputs and outcomes are the stored JSON
values, whatever their shape (``Any``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shadow.reports.options import OwnerOptions
from shadow.reports.values import as_json

Number = float | int


@dataclass(frozen=True, slots=True)
class OwnerAgreement:
    rate: float | None
    low: float | None
    high: float | None
    n: int
    agreed: int
    method: str = "wilson"
    unit: str = "prediction"


@dataclass(frozen=True, slots=True)
class Day:
    """Comparisons of the events of one UTC day."""

    day: str
    compared: int
    agreed: int
    rate: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class Segment:
    field: str
    value: str
    compared: int
    agreed: int
    rate: float | None
    low: float | None
    high: float | None
    floor: float
    below_floor: bool


@dataclass(frozen=True, slots=True)
class Confusion:
    """Rows: people's labels; columns: the AI's; the most frequent labels, the rest in
    ``other``."""

    labels: tuple[str, ...]
    matrix: tuple[tuple[int, ...], ...]
    other: int


@dataclass(frozen=True, slots=True)
class FieldRate:
    field: str
    compared: int
    agreed: int
    rate: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class CoveragePoint:
    """At confidence ``threshold`` and above: the share acted on and its agreement."""

    threshold: float
    coverage: float
    n: int
    agreed: int
    agreement: float | None


@dataclass(frozen=True, slots=True)
class Bucket:
    le_ms: float
    count: int


@dataclass(frozen=True, slots=True)
class OwnerLatency:
    p50: float | None
    p95: float | None
    p99: float | None
    histogram: tuple[Bucket, ...]


@dataclass(frozen=True, slots=True)
class ErrorKind:
    kind: str
    count: int
    example: str | None


@dataclass(frozen=True, slots=True)
class Errors:
    rate: float
    count: int
    kinds: tuple[ErrorKind, ...]


@dataclass(frozen=True, slots=True)
class CheckKind:
    """One hard-constraint check: the predictions it caught (and their share of the
    checked ones) and its violation texts."""

    check: str
    predictions: int
    count: int
    rate: float


@dataclass(frozen=True, slots=True)
class ViolationExample:
    event_id: str
    key: str
    occurred_at: str
    violations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Violations:
    configured: bool | None
    checked: int
    violating: int
    rate: float | None
    threshold: float | None
    kinds: tuple[CheckKind, ...]
    examples: tuple[ViolationExample, ...]


@dataclass(frozen=True, slots=True)
class CostProjection:
    per_decision: float | None
    total: float | None
    daily_volume_current: float
    per_day_current: float | None
    per_month_current: float | None
    per_day_10x: float | None
    per_month_10x: float | None
    daily_volume_full: float | None
    per_day_full: float | None
    per_month_full: float | None


@dataclass(frozen=True, slots=True)
class Disagreement:
    """One prediction that disagreed with its case's outcome; ``payload`` is redacted and
    its fields are in the order to show them (``OwnerOptions.disagreement_fields`` first)."""

    event_id: str
    key: str
    segment: Any
    payload: Any
    output: Any
    outcome: Any
    decided_at: str
    """When the person decided (ISO-8601)."""
    note: str | None
    occurred_at: str | None = None
    """When the event happened (ISO-8601)."""


@dataclass(frozen=True, slots=True)
class ActionExample:
    """One action the AI would have taken and the person did not (``extra``), or the other
    way round (``missed``); ``arguments`` redacted like a disagreement's output."""

    event_id: str
    key: str
    occurred_at: str
    arguments: Any


@dataclass(frozen=True, slots=True)
class ToolRate:
    """One tool's actions over the predictions an ``actions`` comparator judged.

    Per prediction, ``min(proposed, taken)`` actions of the tool are ``matched``;
    ``precision`` is matched over the AI's proposed actions of the tool, ``recall`` matched
    over the person's. ``argument_agreement`` is the share of the argument verdicts
    (``tool.argument`` fields, one per argument per prediction) that agreed.
    """

    tool: str
    proposed: int
    taken: int
    matched: int
    precision: float | None
    recall: float | None
    arguments_compared: int
    arguments_agreed: int
    argument_agreement: float | None
    extra: tuple[ActionExample, ...]
    """The most recent extra actions, newest event first."""
    missed: tuple[ActionExample, ...]


@dataclass(frozen=True, slots=True)
class RuleCount:
    """What chose a tier for how many predictions: ``rules[i]`` of the policy, ``default``,
    or why a prediction fell to ``human`` whatever the rules say (``error``, ``abstained``,
    ``violation``)."""

    rule: str
    predictions: int
    text: str | None = None
    """The rule as people read it, from the configured policy (``tool add_tag → auto``);
    why, for the choices that are not a rule; ``None`` when not known."""


@dataclass(frozen=True, slots=True)
class TierFigures:
    """One tier of a candidate's assessed predictions: how many, live and in shadow (what
    shadow would have done), their shares, and how often they agreed with the person."""

    tier: str
    """``auto``, ``review`` or ``human``."""
    predictions: int
    live: int
    shadow: int
    share: float | None
    """Of every assessed prediction, live and shadow; ``None`` when none was assessed."""
    live_share: float | None
    """Of the assessed live predictions; ``None`` when there were none."""
    shadow_share: float | None
    agreement: OwnerAgreement
    """The tier's predictions compared with the person's outcome."""
    rules: tuple[RuleCount, ...]
    """What chose the tier, most predictions first."""


@dataclass(frozen=True, slots=True)
class VerdictRate:
    """One kind of reviewer verdict (``approve``, ``edit``, ``reject``) over all verdicts."""

    verdict: str
    count: int
    rate: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class ReviewFigures:
    """The proposals of tier ``review`` and what reviewers made of them."""

    proposed: int
    """Proposals stored, live and shadow (withdrawn ones included)."""
    live: int
    shadow: int
    published: int
    """Live proposals the review sink received."""
    withdrawn: int
    open: int
    """Live proposals still waiting for a verdict (published or not), withdrawn ones not."""
    decided: int
    """Proposals with a reviewer's verdict."""
    verdicts: tuple[VerdictRate, ...]
    """``approve``, ``edit`` and ``reject``, in that order."""
    median_seconds: float | None
    """Time to review: the verdict's ``decided_at`` minus when the proposal reached the
    review sink (``published_at``), else when it was proposed (``proposed_at``)."""
    p90_seconds: float | None


@dataclass(frozen=True, slots=True)
class TierWork:
    """The work taken off people's hands, in minutes, at the configured cost per case.

    A case in tier ``auto`` saves ``handling_minutes_per_case``, one in ``review`` saves
    that less ``review_minutes_per_case``, one in ``human`` saves nothing. Projections use
    the cost projection's period basis: the candidate's predictions over the span of their
    events in days (at least one), a month is 30 days.
    """

    handling_minutes_per_case: float
    review_minutes_per_case: float
    auto_share: float | None
    """Cases the AI handles (or, in shadow, would handle) alone: tier ``auto`` over every
    assessed prediction."""
    live_auto_share: float | None
    """The same over the live decisions only: what is handled alone today."""
    minutes_saved_live: float
    """Saved over the assessed live decisions so far."""
    minutes_saved_per_case: float | None
    """The mean saving of an assessed prediction, live and shadow: per case once all is live."""
    daily_volume_live: float
    """Assessed live decisions per day."""
    daily_volume_current: float
    """Predictions per day, as the cost projection counts them."""
    daily_volume_full: float | None
    """Events per day at full production (``report.daily_volume``)."""
    per_day_current: float
    """Minutes saved per day at the current live traffic."""
    per_month_current: float
    per_day_all_live: float | None
    """At current traffic with every decision live (100 %)."""
    per_month_all_live: float | None
    per_day_full: float | None
    """At full production (``daily_volume``), every decision live."""
    per_month_full: float | None


@dataclass(frozen=True, slots=True)
class TierSection:
    """A candidate's predictions by tier (``rollout.tiers``), its reviews, and the work the
    tiers take off people's hands."""

    assessed: int
    """Predictions given a tier; those not assessed yet are left out of every figure."""
    live: int
    shadow: int
    unassessed: int
    tiers: tuple[TierFigures, ...]
    """``auto``, ``review`` and ``human``, in that order, empty ones included."""
    reviews: ReviewFigures
    work: TierWork


OMIT_EMPTY = {"omit_empty": True}
"""Field metadata: :func:`shadow.reports.values.as_json` leaves the field out when empty,
so a report without the section reads as it did before the section existed."""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str
    """``pass``, ``fail`` or ``n/a``: a check that had nothing to check (no budget set, no
    data yet, no rollout) is ``n/a`` and never counts as a pass."""
    value: Number | None
    threshold: Number | None
    detail: str
    unit: str = ""
    """How ``value`` and ``threshold`` read: ``rate`` (a share), ``count``, ``ms``, ``money``,
    ``percent`` (traffic, already in per cent), ``segments`` (a count of segments against a
    floor that is a share) or ``""``."""


@dataclass(frozen=True, slots=True)
class Verdict:
    status: str
    """``ready``, ``not_ready`` or ``not_enough_data``."""
    checks: tuple[Check, ...]
    line: str = ""
    """The verdict and why, in one line (``shadow.reports.verdict.headline``), e.g.
    ``NOT READY: language=de 52.4 % < floor 70 % (n=924); everything else passes``."""
    next_step: str = ""
    """What to do next, one sentence."""

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)


@dataclass(frozen=True, slots=True)
class OwnerCandidate:
    name: str
    version: str | None
    agreement: OwnerAgreement
    over_time: tuple[Day, ...]
    segments: tuple[Segment, ...]
    confusion: Confusion | None
    fields: tuple[FieldRate, ...]
    coverage: tuple[CoveragePoint, ...] | None
    """``None`` when the candidate reports no confidence."""
    latency: OwnerLatency
    errors: Errors
    violations: Violations
    cost: CostProjection
    disagreements: tuple[Disagreement, ...]
    predictions: int
    verdict: Verdict
    pending: int = 0
    """Predictions acted on (not errored, not abstained) whose case has no outcome yet."""
    tools: tuple[ToolRate, ...] = field(default=(), metadata=OMIT_EMPTY)
    """Per tool, when an ``actions`` comparator judged this candidate; else empty (and
    absent from the JSON)."""
    tiers: TierSection | None = field(default=None, metadata=OMIT_EMPTY)
    """By tier, when the candidate has a tier policy and predictions assessed under it; else
    ``None`` (and absent from the JSON)."""


@dataclass(frozen=True, slots=True)
class SegmentBaseline:
    """The human baseline of the cases of one segment value (the segments of their events)."""

    field: str
    value: str
    pairs: int
    agreed: int
    rate: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class Baseline:
    """People against people: pairs of outcomes of one key from two different actors."""

    keys: int
    pairs: int
    agreed: int
    rate: float | None
    low: float | None
    high: float | None
    segments: tuple[SegmentBaseline, ...] = ()

    def segment(self, field: str, value: str) -> SegmentBaseline | None:
        return next((s for s in self.segments if s.field == field and s.value == value), None)


@dataclass(frozen=True, slots=True)
class Completeness:
    """What the report is made of: the events' time span and what did not make it in."""

    first_event: str | None
    """The earliest ``occurred_at`` of a stored event (ISO-8601); ``None`` when none."""
    last_event: str | None
    events: int
    duplicates: int
    dead_letters: int
    """Event records that could not be read, kept with the reason."""
    outcomes: int
    outcome_dead_letters: int


@dataclass(frozen=True, slots=True)
class RolloutState:
    rollout: str
    candidate: str
    version: str | None
    step: int
    percent: float
    status: str
    step_started_at: str | None
    updated_at: str
    revision: int


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    at: str
    actor: str
    token: str | None
    action: str
    from_step: int | None
    to_step: int | None
    percent: float | None
    status: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class VerdictDelay:
    verdict: str
    labelled: int
    median_seconds: float
    p95_seconds: float


@dataclass(frozen=True, slots=True)
class LabelDelays:
    unit: str
    by_verdict: tuple[VerdictDelay, ...]
    disagreements_later: bool


@dataclass(frozen=True, slots=True)
class Withdrawn:
    candidate: str
    version: str | None
    reason: str
    count: int


@dataclass(frozen=True, slots=True)
class RolloutSection:
    state: RolloutState | None
    """The most recently updated rollout; ``None`` when there is none."""
    timeline: tuple[TimelineEntry, ...]
    labels: LabelDelays | None
    withdrawn: tuple[Withdrawn, ...]


@dataclass(frozen=True, slots=True)
class OwnerReport:
    """Is each candidate ready, and the evidence behind the answer."""

    generated_at: datetime
    store: str
    options: OwnerOptions
    candidates: tuple[OwnerCandidate, ...]
    human_baseline: Baseline | None
    rollout: RolloutSection
    completeness: Completeness | None = None

    def as_dict(self) -> dict[str, Any]:
        """The report's JSON, as plain values."""
        out: dict[str, Any] = as_json(self)
        return out
