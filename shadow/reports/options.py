"""What "ready" means to an owner, and what their report may show."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shadow.core.models import utc_now


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnerOptions:
    """What "ready" means to this owner, and what the report may show.

    Raises:
        ValueError: a rate outside [0, 1] or a negative count.
    """

    threshold: float = 0.9
    """The Wilson 95 % lower bound of agreement must reach this."""
    max_error_rate: float = 0.05
    max_p95_latency_ms: float | None = None
    min_compared: int = 200
    """Fewer comparisons than this: "not enough data"."""
    segment_min_samples: int = 100
    segment_floor: float | None = None
    """A segment's agreement rate must reach this; ``threshold`` when unset."""
    daily_volume: float | None = None
    """Events per day at full production, for the cost projection."""
    redact: tuple[str, ...] = ()
    """Dotted paths relative to the payload, e.g. ``requester.email``."""
    top_disagreements: int = 20
    disagreement_fields: tuple[str, ...] = ()
    """Dotted payload paths shown first in a disagreement, in this order; when empty, the
    payload's short text fields come first. The rest follows in the payload's own order."""
    max_violation_rate: float | None = None
    """Share of checked predictions allowed to violate a hard constraint; no verdict line
    when unset."""
    top_violations: int = 10
    """How many recent violating predictions to show as examples."""
    checked: frozenset[str] | None = None
    """Names of the candidates configured with hard-constraint checks; ``None`` when not
    known (a report made without the configuration)."""
    tiered: frozenset[str] | None = None
    """Names of the candidates with a tier policy (``rollout.tiers``), whose report has a
    section by tier; ``None`` when not known (a report made without the configuration):
    then every candidate with predictions given a tier has one."""
    tier_rules: tuple[str, ...] = ()
    """The tier policy's rules as people read them, in order (``tool add_tag → auto``), to
    say what ``rules[i]`` is; empty when not known."""
    handling_minutes_per_case: float = 10.0
    """What a case handled by a person costs, in minutes: the saving of a case in tier
    ``auto``."""
    review_minutes_per_case: float = 2.0
    """What reviewing a proposal costs, in minutes: a case in tier ``review`` saves
    ``handling_minutes_per_case`` less this."""
    prediction_label: str | None = None
    """Dotted path to the label inside outputs, for the confusion matrix (whole output if unset)."""
    outcome_label: str | None = None
    """Dotted path to the label inside outcomes (whole outcome if unset)."""
    now: Callable[[], datetime] = field(default=utc_now, compare=False)

    def __post_init__(self) -> None:
        for name in ("threshold", "max_error_rate", "segment_floor", "max_violation_rate"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        for name in ("min_compared", "segment_min_samples", "top_disagreements",
                     "top_violations"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("max_p95_latency_ms", "daily_volume", "handling_minutes_per_case",
                     "review_minutes_per_case"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def floor(self) -> float:
        return self.threshold if self.segment_floor is None else self.segment_floor

    def as_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "now"}
        out["redact"] = list(self.redact)
        out["disagreement_fields"] = list(self.disagreement_fields)
        out["checked"] = None if self.checked is None else sorted(self.checked)
        out["tiered"] = None if self.tiered is None else sorted(self.tiered)
        return out
