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
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from rollout.statistics import Cusum, Method

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(value: Any) -> Any:
    """``90``, ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"`` → a timedelta (numbers are seconds)."""
    if isinstance(value, timedelta) or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2] or "s"])
    raise ValueError(f"expected a duration such as 90s, 15m, 2h or 1d, got {value!r}")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StepSpec(_Spec):
    """One step of the plan: a share of traffic and what it takes to leave it."""

    percent: float = Field(ge=0.0, le=100.0)
    """Share of routable traffic (the holdout excluded) on which the AI acts; 0 is shadow only."""
    min_compared: int = Field(100, ge=1)
    """Compared events, made during this step, before promotion is considered."""
    min_dwell: Duration = timedelta(0)
    """Time spent at this step before promotion is considered."""
    approval: bool = False
    """When gates pass, wait for a person's ``promote`` instead of promoting."""


class SegmentGateSpec(_Spec):
    """No segment with enough samples may fall below its floor."""

    min_samples: int = Field(100, ge=1)
    floor: Rate | None = None
    """Applies to every segment value; ``None`` leaves segments without a floor of their own."""
    floors: dict[str, Rate] = Field(default_factory=dict)
    """Per segment, written ``field=value`` (``language=de: 0.8``); overrides ``floor``."""

    def floor_of(self, field: str, value: str) -> float | None:
        return self.floors.get(f"{field}={value}", self.floor)


class GateSpec(_Spec):
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


class RollbackSpec(_Spec):
    """What takes a live step back to shadow at once."""

    healthy: Rate = 0.95
    """Agreement of a healthy candidate; the detector's false-alarm budget holds at or above it."""
    degraded: Rate = 0.80
    """The agreement the detector must catch quickly."""
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

    @model_validator(mode="after")
    def _degraded_below_healthy(self) -> RollbackSpec:
        if not 0.0 < self.degraded < self.healthy < 1.0:
            raise ValueError(
                f"need 0 < degraded < healthy < 1, got degraded={self.degraded}, "
                f"healthy={self.healthy}")
        if self.healthy <= 0.5:
            raise ValueError(f"healthy must be above 0.5 (a detector in whole steps needs it), "
                             f"got {self.healthy}")
        return self

    def detector(self) -> Cusum:
        return Cusum.design(healthy=self.healthy, degraded=self.degraded,
                            false_alarm=self.false_alarm, horizon=self.horizon)


class RolloutSpec(_Spec):
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
    method: Method = Method.BETA_BINOMIAL
    tuning: int = Field(500, ge=1)
    """The normal mixture's tuning count (ignored by the beta-binomial)."""
    holdout: Rate = 0.0
    """Share of routing keys that stays with the humans at every step, 100 % included."""
    review: Rate = 0.0
    """Share of live decisions also sent for a person to confirm or correct."""
    sink: SinkSpec | None = None
    """Where live decisions are published; without one nothing can go live."""
    notify: list[NotifySpec] = Field(default_factory=list)

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

    def step(self, index: int) -> StepSpec:
        return self.steps[index]

    @property
    def last(self) -> int:
        return len(self.steps) - 1


class _Destination(_Spec):
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
