"""The candidate interface: the AI system under test, behind one small contract."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shadow.core.models import Event, Prediction
from shadow.core.paths import get_path

if TYPE_CHECKING:
    from shadow.candidates.constraints import Checks

MAX_MESSAGE = 2_000
MAX_BODY = 4_096
"""How much of a failed response is kept with the prediction, for debugging."""


class Candidate(ABC):
    """The AI system under test.

    ``predict`` is called with a batch of events that share nothing but arrival
    order. It returns exactly one :class:`Prediction` per event, in the same
    order, and never raises: a failure of the system under test is a
    prediction with an ``error``, never an exception.
    """

    name: str
    version: str | None
    confidence_path: str | None = None
    abstain_below: float | None = None
    checks: Checks | None = None
    """Hard constraints the runner applies to every prediction; None when there are none."""

    def judge(self, output: Any) -> tuple[float | None, bool]:
        """The output's confidence, and whether it is low enough to abstain.

        Without a confidence there is nothing to abstain on: the prediction stands.
        """
        confidence = confidence_of(output, self.confidence_path)
        floor = self.abstain_below
        return confidence, confidence is not None and floor is not None and confidence < floor

    @property
    def predicts_out_of_process(self) -> bool:
        """Whether ``predict`` mostly waits on other processes that do the work (worker
        processes of this machine), leaving this one free meanwhile.

        A pipeline may then call ``predict`` from another thread while it reads the next
        batch; it never calls it from two threads at once. False unless an adapter says
        otherwise.
        """
        return False

    @abstractmethod
    def predict(self, events: Sequence[Event], now: datetime) -> list[Prediction]: ...

    def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire what calls need (a connection pool, say). Called once, before ``predict``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release it. Idempotent; ``predict`` is never called after it."""

    def __enter__(self) -> Candidate:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def confidence_of(output: Any, path: str | None = None) -> float | None:
    """The finite number at ``path`` in the output (``confidence`` by default), if any."""
    if path is not None:
        value = get_path(output, path)
    elif type(output) is dict:
        value = output.get("confidence")
    else:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def truncate(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
