"""Shadow-mode replay for AI systems: run a candidate beside the humans, compare, report."""

from shadow.candidates import CallableCandidate, Candidate, batch
from shadow.core.models import Comparison, DeadLetter, Event, Mode, Outcome, Prediction
from shadow.service import logs

logs.configure_default()

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
