"""Shadow-mode replay for AI systems: run a candidate beside the humans, compare, report."""

from shadow.candidates import CallableCandidate, Candidate, batch
from shadow.models import Comparison, DeadLetter, Event, Mode, Outcome, Prediction

__all__ = [
    "CallableCandidate",
    "Candidate",
    "Comparison",
    "DeadLetter",
    "Event",
    "Mode",
    "Outcome",
    "Prediction",
    "batch",
]
