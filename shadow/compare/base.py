"""What every comparator is: a :class:`Comparator` giving a :class:`Judgement`, and the
:class:`SpecComparator` that the structured, text and judge comparators build on."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any, NamedTuple

from shadow.config.comparators import ComparatorSpec
from shadow.core.paths import MISSING, get_path

__all__ = ["Comparator", "Judgement", "SpecComparator", "agree", "disagree", "fingerprint",
           "judge_absent"]


class Judgement(NamedTuple):
    """The verdict on one prediction.

    ``fields`` maps each field of a ``fields`` comparator to its verdict (a nested
    ``fields`` comparator adds its own as ``outer.inner``); it is empty otherwise.
    ``note`` says why: the score (``f1=0.667``), the judge's reason, or why the
    values could not be compared normally. It is stored with the comparison.

    ``deferred`` means there is no verdict yet: the comparator cannot judge now
    (an LLM judge that is unreachable or gave no usable answer). ``agree`` is
    then meaningless, ``note`` says what failed, and the runner stores nothing,
    so the prediction stays pending and is judged at the next compare. Build one
    with :meth:`defer`.
    """

    agree: bool
    fields: dict[str, bool]
    note: str | None = None
    deferred: bool = False

    @classmethod
    def defer(cls, note: str) -> Judgement:
        """No verdict now; ask again later. ``agree`` is false for readers that ignore
        ``deferred``, which is what they were given before deferral existed."""
        return cls(False, {}, note, deferred=True)


def agree() -> Judgement:
    return Judgement(True, {})


def disagree(note: str | None = None) -> Judgement:
    return Judgement(False, {}, note)


class Comparator(ABC):
    """Decides whether a prediction's output agrees with the outcome of its key.

    ``name`` fingerprints the configuration: it changes when any parameter changes,
    so the store knows which comparisons to redo.
    """

    name: str

    @abstractmethod
    def compare(self, output: Any, outcome: Any) -> Judgement:
        """Judge a prediction's ``output`` against the final ``outcome`` of its key.

        A pure function of its two JSON values: same inputs, same judgement. It
        never raises; a value of the wrong type, an absent path, or a custom
        function that raises or returns a non-bool all yield a disagreeing
        judgement with a ``note``. The one exception to purity is a comparator
        that depends on a service (the ``judge``): when the service fails it
        returns :meth:`Judgement.defer` instead of a verdict, never a
        disagreement, and the same inputs may be judged later.
        """


class SpecComparator(Comparator):
    """Applies the spec's ``prediction_path`` and ``outcome_path``, then judges."""

    def __init__(self, spec: ComparatorSpec) -> None:
        self.name = fingerprint(spec)
        self._prediction_path = spec.prediction_path
        self._outcome_path = spec.outcome_path

    def compare(self, output: Any, outcome: Any) -> Judgement:
        if self._prediction_path is not None:
            output = get_path(output, self._prediction_path)
        if self._outcome_path is not None:
            outcome = get_path(outcome, self._outcome_path)
        absent = judge_absent(output, outcome, self._prediction_path, self._outcome_path)
        return absent if absent is not None else self._judge(output, outcome)

    @abstractmethod
    def _judge(self, output: Any, outcome: Any) -> Judgement:
        """Judge two present values (neither is MISSING)."""


def judge_absent(
    output: Any, outcome: Any, prediction_at: str | None, outcome_at: str | None
) -> Judgement | None:
    """The judgement when a side has no value at its path, else ``None``."""
    if output is MISSING and outcome is MISSING:
        return agree()
    if output is MISSING:
        return disagree(f"prediction has no value at {prediction_at or '$'!r}")
    if outcome is MISSING:
        return disagree(f"outcome has no value at {outcome_at or '$'!r}")
    return None


def fingerprint(spec: ComparatorSpec) -> str:
    digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()
    return f"{spec.kind}:{digest[:12]}"
