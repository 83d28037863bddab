"""The rollout's spec: what is desired, as written in the ``rollout`` section.

The spec never changes while the daemon runs; what was observed (the current
step, its status, the history) lives in :mod:`rollout.state`. A plan looks like::

    rollout:
      candidate: triage          # which candidate acts; the only one by default
      steps:
        - {percent: 0, min_compared: 500, min_dwell: 1h}
        - {percent: 1, min_compared: 300, min_dwell: 1h, approval: true}
        - {percent: 5, min_compared: 300, min_dwell: 2h}
        - {percent: 25, min_compared: 500, min_dwell: 1d}
        - {percent: 100, min_compared: 500, min_dwell: 1d}
      gates:
        agreement: 0.90
        max_error_rate: 0.02
        max_p95_latency_ms: 3000
        segments: {min_samples: 200, floor: 0.85}
      rollback: {healthy: 0.95, degraded: 0.80}
      holdout: 0.05
      unit: first                # one vote per key: its first prediction of the step
      label_window: auto         # or 2d: how long a label may take to arrive

What the gates count is one observation per *key* (the case), judged once
its label window has passed; see docs/statistics.md.
"""

from __future__ import annotations

import enum
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from shadow.config.state_topic import StateTopicSpec
from shadow.config.tiers import Tier, TiersSpec
from shadow.core.spec import Duration, Spec, parse_duration


def _parse_window(value: Any) -> Any:
    return value if value == "auto" else parse_duration(value)


LabelWindow = Annotated[timedelta | Literal["auto"], BeforeValidator(_parse_window)]


def _parse_expiry(value: Any) -> Any:
    return value if value in ("auto", "never") else parse_duration(value)


LabelExpiry = Annotated[timedelta | Literal["auto", "never"], BeforeValidator(_parse_expiry)]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class Method(enum.Enum):
    """Which confidence sequence the gates use; see ``rollout/statistics.py``."""

    ONE_SIDED = "one_sided"
    """Beta mixtures on each side of the threshold (the default)."""
    BETA_BINOMIAL = "beta_binomial"
    NORMAL_MIXTURE = "normal_mixture"


class StepSpec(Spec):
    """One step of the plan: a share of traffic and what it takes to leave it."""

    percent: float = Field(ge=0.0, le=100.0)
    """Share of routable traffic (the holdout excluded) on which the AI acts; 0 is shadow only."""
    min_compared: int = Field(100, ge=1)
    """Compared events, made during this step, before promotion is considered."""
    min_dwell: Duration = timedelta(0)
    """Time spent at this step before promotion is considered."""
    approval: bool = False
    """When gates pass, wait for a person's ``promote`` instead of promoting."""


class SegmentGateSpec(Spec):
    """A segment with a floor holds the step until its own sequence shows it above
    the floor (pass) or below it (fail)."""

    min_samples: int = Field(100, ge=1)
    """Keys a segment needs before it is judged; a smaller one holds the step."""
    allow_small: bool = False
    """Let segments below ``min_samples`` through instead of holding the step."""
    floor: Rate | None = None
    """Applies to every segment value; ``None`` leaves segments without a floor of their own."""
    floors: dict[str, Rate] = Field(default_factory=dict)
    """Per segment, written ``field=value`` (``language=de: 0.8``); overrides ``floor``."""

    def floor_of(self, field: str, value: str) -> float | None:
        return self.floors.get(f"{field}={value}", self.floor)


class GateSpec(Spec):
    """What a step must hold before promotion."""

    agreement: Rate = 0.90
    """The agreement rate whose confidence-sequence lower bound must be reached."""
    max_error_rate: Rate | None = 0.05
    max_p95_latency_ms: float | None = Field(None, gt=0.0)
    min_coverage: Rate | None = None
    """Share of predictions that must not be abstentions (when abstention is used)."""
    max_violation_rate: Rate | None = None
    """Share of the checked (not errored) predictions allowed to violate a hard constraint."""
    segments: SegmentGateSpec = SegmentGateSpec()


class RollbackSpec(Spec):
    """What takes a live step back to shadow at once."""

    healthy: Rate | None = None
    """Agreement of a healthy candidate; the detector's false-alarm budget holds at or
    above it. Defaults to the promotion threshold plus ``margin``, and may not exceed it."""
    degraded: Rate | None = None
    """The agreement the detector must catch quickly; defaults to the promotion threshold
    minus 0.10, and must lie below the threshold."""
    margin: Rate = 0.05
    """How far above the promotion threshold ``healthy`` may lie: a candidate promoted just
    above the threshold but below ``healthy`` may be rolled back needlessly."""
    false_alarm: Rate = Field(0.01, gt=0.0, lt=1.0)
    horizon: int = Field(100_000, ge=1)
    """Compared events over which ``false_alarm`` is the chance of a needless rollback."""
    max_error_rate: Rate | None = 0.20
    max_p95_latency_ms: float | None = Field(None, gt=0.0)
    window: Duration = timedelta(minutes=10)
    """Error-rate and latency breaches must last this long (the whole trailing window)."""
    min_window_predictions: int = Field(20, ge=1)
    detect_within: Duration = timedelta(days=1)
    """``status`` warns when labels arrive too slowly to catch ``degraded`` within this."""

    def levels(self, threshold: float) -> tuple[float, float]:
        """``(healthy, degraded)``, the defaults filled in from the promotion threshold."""
        healthy = self.healthy if self.healthy is not None else min(threshold + self.margin,
                                                                     0.99)
        degraded = self.degraded if self.degraded is not None else max(threshold - 0.10, 0.01)
        return healthy, degraded


def _check_levels(rollback: RollbackSpec, threshold: float) -> None:
    """The promotion threshold, the healthy level and the degraded level must agree."""
    healthy, degraded = rollback.levels(threshold)
    if healthy > threshold + rollback.margin + 1e-12:
        raise ValueError(
            f"rollback.healthy ({healthy}) is more than rollback.margin ({rollback.margin}) "
            f"above gates.agreement ({threshold}): a candidate promoted between the two would "
            f"be rolled back needlessly; lower rollback.healthy or raise the margin")
    if not degraded < threshold:
        raise ValueError(
            f"rollback.degraded ({degraded}) must lie below gates.agreement ({threshold}): "
            f"the detector would roll back candidates the gate promotes")
    if not 0.0 < degraded < healthy < 1.0:
        raise ValueError(f"rollback: need 0 < degraded < healthy < 1, got degraded={degraded}, "
                         f"healthy={healthy}")
    if healthy <= 0.5:
        raise ValueError(f"rollback.healthy must be above 0.5 (a detector in whole steps needs "
                         f"it), got {healthy}")


class Unit(enum.StrEnum):
    """What one observation of agreement is: one per key (case), never one per event."""

    FIRST = "first"
    """The key's first prediction in the step: what the AI would have acted on."""
    LAST = "last"
    """The key's last prediction made before its outcome was decided."""
    MEAN = "mean"
    """The mean agreement of the key's compared predictions in the step."""


class RolloutSpec(Spec):
    """The whole plan: steps, gates, rollback, routing."""

    name: str | None = None
    """Defaults to the candidate's name."""
    candidate: str | None = None
    """The candidate whose output is acted on; the only configured one by default."""
    salt: str | None = None
    """Mixed into the routing hash; defaults to the rollout's name. Changing it reshuffles keys."""
    steps: list[StepSpec] = Field(min_length=1)
    gates: GateSpec = GateSpec()
    rollback: RollbackSpec = RollbackSpec()
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    """Error of each step's confidence sequence; see docs/statistics.md for across steps."""
    method: Method = Method.ONE_SIDED
    unit: Unit = Unit.FIRST
    label_window: LabelWindow = "auto"
    """How long after its first event a key's label may take to arrive (data time:
    the events' ``occurred_at``). Keys younger than that are not judged yet; older ones
    without a label count against the candidate. ``auto``: the 95th percentile of the
    label delays observed in the step."""
    label_expiry: LabelExpiry = "auto"
    """When a key still without a label stops counting against the candidate: some cases
    never get one (spam, merged tickets). ``auto``: four label windows; ``never`` keeps
    every unlabelled key against it, which holds whatever the reason labels are missing."""
    min_labelled: Rate = 0.8
    """Share of the keys past their label window that must be labelled, else the step waits."""
    independent_sources: list[str] = Field(default_factory=list)
    """Outcome sources (names or shell patterns, ``kafka:crm-*``) whose outcomes of live
    events are independent human decisions. Outcomes of other sources judge the AI only
    where it did not act (the shadow share, the holdout) and where a person reviewed it."""
    evaluate_every_compared: int = Field(100, ge=1)
    """Newly compared keys between evaluations of the gates, whatever the batch size."""
    tuning: int = Field(500, ge=1)
    """The normal mixture's tuning count (ignored by the beta-binomial)."""
    holdout: Rate = 0.0
    """Share of routing keys that stays with the humans at every step, 100 % included."""
    review: Rate = 0.0
    """Share of live decisions also sent for a person to confirm or correct."""
    max_decision_age: Duration | None = timedelta(hours=1)
    """A live decision not published within this (the sink was away) is withdrawn instead:
    production would act on a stale case. ``null`` publishes however late."""
    sink: SinkSpec | None = None
    """Where live decisions are published; without one nothing can go live."""
    tiers: TiersSpec | None = None
    """Which live decisions act alone, which a person reviews first and which stay with
    people (:mod:`shadow.config.tiers`). Without it every decision is tier ``auto``."""
    review_sink: SinkSpec | None = None
    """Where decisions of tier ``review`` are published as proposals, of the same kinds
    as ``sink``; needed when live steps can give that tier."""
    notify: list[NotifySpec] = Field(default_factory=list)
    state_topic: StateTopicSpec | None = None
    """A compacted Kafka topic every change of the rollout's state (and a heartbeat of
    it) is published on, for other processes to follow (:mod:`shadow.config.state_topic`)."""

    @model_validator(mode="after")
    def _levels_agree(self) -> RolloutSpec:
        _check_levels(self.rollback, self.gates.agreement)
        return self

    @model_validator(mode="after")
    def _steps_rise_from_shadow(self) -> RolloutSpec:
        percents = [s.percent for s in self.steps]
        if percents[0] != 0:
            raise ValueError("the first step must be shadow mode (percent: 0)")
        if any(b <= a for a, b in zip(percents, percents[1:], strict=False)):
            raise ValueError(f"step percents must rise strictly, got {percents}")
        if len(percents) > 1 and self.sink is None:
            raise ValueError("live steps need a 'sink' to publish decisions to")
        return self

    @model_validator(mode="after")
    def _reviews_have_a_sink(self) -> RolloutSpec:
        if (self.tiers is not None and Tier.REVIEW in self.tiers.tiers_used()
                and len(self.steps) > 1 and self.review_sink is None):
            raise ValueError("review_sink: tiers gives decisions the tier review, and live "
                             "steps publish them as proposals: name a review_sink")
        return self

    def step(self, index: int) -> StepSpec:
        return self.steps[index]

    @property
    def last(self) -> int:
        return len(self.steps) - 1


class _Destination(Spec):
    topic: str | None = None
    bootstrap: str | None = None
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    secret_env: str | None = None
    """Environment variable holding the signing secret (Standard Webhooks)."""
    path: str | None = None

    @model_validator(mode="after")
    def _has_its_destination(self) -> _Destination:
        kind: str = getattr(self, "kind")  # noqa: B009 - declared by each subclass
        needed = {"kafka": ("topic", "bootstrap"), "webhook": ("url",), "file": ("path",)}
        missing = [name for name in needed[kind] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {kind} destination needs {' and '.join(missing)}")
        return self


class SinkSpec(_Destination):
    """Where live decisions go for production to act on."""

    kind: Literal["kafka", "webhook", "file"]


class NotifySpec(_Destination):
    """Where rollbacks and promotions are announced."""

    kind: Literal["kafka", "webhook"]
