"""Comparators: does a prediction agree with what the human decided?

Build one from its configuration with :func:`build_comparator`; the result is a
small tree (a ``fields`` comparator holds one comparator per field).

>>> from shadow.config.file import parse_config
>>> spec = parse_config({"comparator": {"kind": "normalized"}}).comparator
>>> build_comparator(spec).compare("  Billing ", "billing").agree
True
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Hashable
from typing import Any

from shadow.compare.actions import ActionsComparator
from shadow.compare.base import (
    Comparator,
    Judgement,
    SpecComparator,
    agree,
    disagree,
    judge_absent,
)
from shadow.config.comparators import (
    ActionsSpec,
    ComparatorSpec,
    CustomSpec,
    ExactSpec,
    FieldsSpec,
    JudgeSpec,
    NormalizedSpec,
    NumericSpec,
    SemanticSpec,
    SetSpec,
    SimilaritySpec,
)
from shadow.core.loading import load_callable
from shadow.core.paths import get_path

__all__ = ["Comparator", "Judgement", "build_comparator"]

CustomFunction = Callable[[Any, Any], Any]


class _Exact(SpecComparator):
    def _judge(self, output: Any, outcome: Any) -> Judgement:
        return Judgement(_canonical(output) == _canonical(outcome), {})


class _Normalized(SpecComparator):
    def _judge(self, output: Any, outcome: Any) -> Judgement:
        same = _canonical(output, _normalize_text) == _canonical(outcome, _normalize_text)
        return Judgement(same, {})


class _Set(SpecComparator):
    def __init__(self, spec: SetSpec) -> None:
        super().__init__(spec)
        self._threshold = spec.threshold

    def _judge(self, output: Any, outcome: Any) -> Judgement:
        a, b = _as_set(output), _as_set(outcome)
        if not a and not b:
            return agree()
        return Judgement(len(a & b) / len(a | b) >= self._threshold, {})


class _Numeric(SpecComparator):
    def __init__(self, spec: NumericSpec) -> None:
        super().__init__(spec)
        self._abs_tol = spec.abs_tol
        self._rel_tol = spec.rel_tol

    def _judge(self, output: Any, outcome: Any) -> Judgement:
        a, b = _as_number(output), _as_number(outcome)
        if a is None:
            return disagree(f"prediction is not a finite number: {_show(output)}")
        if b is None:
            return disagree(f"outcome is not a finite number: {_show(outcome)}")
        tolerance = max(self._abs_tol, self._rel_tol * max(abs(a), abs(b)))
        return Judgement(abs(a - b) <= tolerance, {})


class _Fields(SpecComparator):
    def __init__(self, spec: FieldsSpec) -> None:
        super().__init__(spec)
        self._fields = {field: build_comparator(sub) for field, sub in spec.fields.items()}

    def _judge(self, output: Any, outcome: Any) -> Judgement:
        sides = {"prediction": output, "outcome": outcome}
        not_objects = [side for side, value in sides.items() if not isinstance(value, dict)]
        if not_objects:
            note = "; ".join(f"{side} is not an object" for side in not_objects)
            return Judgement(False, dict.fromkeys(self._fields, False), note)
        verdicts: dict[str, bool] = {}
        notes: list[str] = []
        for field, comparator in self._fields.items():
            judgement = self._judge_field(field, comparator, output, outcome)
            if judgement.deferred:
                # No verdict for the whole prediction; the other fields are judged again later.
                return Judgement.defer(f"{field}: {judgement.note}")
            verdicts[field] = judgement.agree
            verdicts.update({f"{field}.{inner}": v for inner, v in judgement.fields.items()})
            if judgement.note is not None:
                notes.append(f"{field}: {judgement.note}")
        return Judgement(all(verdicts.values()), verdicts, "; ".join(notes) or None)

    @staticmethod
    def _judge_field(field: str, comparator: Comparator, output: Any, outcome: Any) -> Judgement:
        output, outcome = get_path(output, field), get_path(outcome, field)
        absent = judge_absent(output, outcome, field, field)
        return absent if absent is not None else comparator.compare(output, outcome)


class _Custom(SpecComparator):
    def __init__(self, spec: CustomSpec, function: CustomFunction) -> None:
        super().__init__(spec)
        self._path = spec.function
        self._function = function

    def _judge(self, output: Any, outcome: Any) -> Judgement:
        try:
            result = self._function(output, outcome)
        except Exception as exc:  # noqa: BLE001 - a comparator never raises
            return disagree(f"custom comparator raised {type(exc).__name__}: {exc}")
        if not _is_bool(result):
            return disagree(
                f"custom comparator {self._path} returned {type(result).__name__}, not a bool"
            )
        return Judgement(bool(result), {})


def build_comparator(spec: ComparatorSpec) -> Comparator:
    """The comparator a spec describes, with its sub-comparators.

    Raises:
        ConfigError: a custom ``module:function`` cannot be imported or is not callable,
            or the ``semantic`` extra is not installed.
    """
    match spec:
        case ExactSpec():
            return _Exact(spec)
        case NormalizedSpec():
            return _Normalized(spec)
        case SetSpec():
            return _Set(spec)
        case NumericSpec():
            return _Numeric(spec)
        case FieldsSpec():
            return _Fields(spec)
        case CustomSpec():
            return _Custom(spec, load_callable(spec.function, what="custom comparator"))
        case ActionsSpec():
            return ActionsComparator(spec, build_comparator)
        case SimilaritySpec() | SemanticSpec() | JudgeSpec():
            # imported here: the text comparators load their models only when asked for
            from shadow.compare.text import build_text_comparator

            return build_text_comparator(spec)
    raise AssertionError(f"unknown comparator spec {spec!r}")  # pragma: no cover


# -- JSON values -------------------------------------------------------------


def _canonical(value: Any, text: Callable[[str], str] = str) -> Hashable:
    """A hashable form of a JSON value, equal exactly when the values are JSON-equal.

    Tags keep ``true`` apart from ``1`` (Python says ``True == 1``); ``1`` and
    ``1.0`` keep the same tag because JSON has one number type. ``text`` is
    applied to every string value.
    """
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        # NaN is not JSON, but equal inputs should not disagree only because NaN != NaN
        return ("number", "nan") if value != value else ("number", value)
    if isinstance(value, str):
        return ("string", text(value))
    if isinstance(value, list | tuple):
        return ("array", tuple(_canonical(item, text) for item in value))
    if isinstance(value, dict):
        # keys are names, not text, so `text` leaves them alone
        return ("object", frozenset((k, _canonical(v, text)) for k, v in value.items()))
    return ("other", type(value).__qualname__, repr(value))


def _normalize_text(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _as_set(value: Any) -> frozenset[Hashable]:
    if value is None:
        return frozenset()
    items = value if isinstance(value, list | tuple) else [value]
    return frozenset(_canonical(item) for item in items)


def _as_number(value: Any) -> float | None:
    """A finite float from a number or numeric text (CSV exports carry numbers as text)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _is_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    # numpy.bool_ (named ``bool`` in numpy 2) is not a subclass of bool
    kind = type(value)
    return kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_")


def _show(value: Any, limit: int = 60) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."
