"""Shadow-mode replay for AI systems: run a candidate beside the humans, compare, report.

What a person writing a candidate, a comparator or a test needs, by name::

    from shadow import Event, Pipeline, Store, batch

The layers below (``shadow.core`` … ``shadow.cli``, see docs/architecture.md) are
imported only when a name from them is first used, and importing ``shadow`` changes
nothing outside it: it configures no logging and touches no path. The fakes for tests
(a source over a list, a sink that records) are in :mod:`shadow.testing`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shadow.candidates.base import Candidate
    from shadow.candidates.callable import CallableCandidate, batch
    from shadow.compare.base import Comparator, Judgement
    from shadow.compare.comparators import build_comparator
    from shadow.config.file import Config, load_config
    from shadow.core.models import Comparison, DeadLetter, Event, Mode, Outcome, Prediction
    from shadow.pipeline.replay import ReplayRequest, replay_files
    from shadow.pipeline.runner import Pipeline, ReplaySummary
    from shadow.store.database import Store

_HOMES = {
    "Candidate": "shadow.candidates.base",
    "CallableCandidate": "shadow.candidates.callable",
    "batch": "shadow.candidates.callable",
    "Comparator": "shadow.compare.base",
    "Judgement": "shadow.compare.base",
    "build_comparator": "shadow.compare.comparators",
    "Config": "shadow.config.file",
    "load_config": "shadow.config.file",
    "Comparison": "shadow.core.models",
    "DeadLetter": "shadow.core.models",
    "Event": "shadow.core.models",
    "Mode": "shadow.core.models",
    "Outcome": "shadow.core.models",
    "Prediction": "shadow.core.models",
    "ReplayRequest": "shadow.pipeline.replay",
    "replay_files": "shadow.pipeline.replay",
    "Pipeline": "shadow.pipeline.runner",
    "ReplaySummary": "shadow.pipeline.runner",
    "Store": "shadow.store.database",
}

__all__ = [
    "CallableCandidate", "Candidate", "Comparator", "Comparison", "Config", "DeadLetter",
    "Event", "Judgement", "Mode", "Outcome", "Pipeline", "Prediction", "ReplayRequest",
    "ReplaySummary", "Store", "batch", "build_comparator", "load_config", "replay_files",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'shadow' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
