"""The Python-callable candidate: a function in this process.

A callable takes one :class:`~shadow.core.models.Event` and returns any JSON value. A callable
marked with :func:`batch` takes a list of events and returns a list of outputs
in the same order::

    from shadow import batch

    @batch(size=32)
    def classify(events):
        return [model.predict(e.payload["body"]) for e in events]

With ``workers`` above 1, the function runs in that many worker processes instead
(:mod:`shadow.candidates.workers`), started when the candidate opens; predictions,
their order and their errors are the same as in this process.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar, overload

import orjson

from shadow.candidates.base import Candidate, truncate
from shadow.candidates.fingerprint import fingerprint, source_of
from shadow.candidates.workers import MAX_WORKERS, WorkerPool
from shadow.config.candidates import CallableCandidateSpec
from shadow.core.loading import load_callable
from shadow.core.models import ErrorKind, Event, Mode, Prediction, PredictionError

F = TypeVar("F", bound=Callable[..., Any])

_BATCH_ATTR = "__shadow_batch__"
# Datetimes and dataclasses are refused rather than silently converted, so what
# is stored is what the candidate said. Subclasses of str, int and dict (enums,
# say) are stored as their plain value; NaN and infinities become null.
_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


@overload
def batch(fn: F) -> F: ...


@overload
def batch(*, size: int | None = None) -> Callable[[F], F]: ...


def batch(fn: F | None = None, *, size: int | None = None) -> F | Callable[[F], F]:
    """Mark a callable as taking a list of events; ``size`` caps the list length."""

    def mark(target: F) -> F:
        setattr(target, _BATCH_ATTR, size or True)
        return target

    return mark(fn) if fn is not None else mark


class CallableCandidate(Candidate):
    """A Python function, per event or per batch: in this process, or with ``workers``
    above 1 in that many worker processes (the function must then be importable by
    module and name, as every ``module:function`` of a configuration is)."""

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str,
        version: str | None = None,
        batch_size: int = 64,
        workers: int = 1,
    ) -> None:
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers: expected 1 to {MAX_WORKERS}, got {workers}")
        self._function = function
        self.name = name
        self.version = version
        marker = getattr(function, _BATCH_ATTR, None)
        self.batched = marker is not None
        self.batch_size = marker if isinstance(marker, int) and marker is not True else batch_size
        self.workers = workers
        self._pool: WorkerPool | None = None

    @classmethod
    def from_spec(cls, spec: CallableCandidateSpec) -> CallableCandidate:
        function = load_callable(spec.callable, what="candidate")
        module = importlib.import_module(spec.callable.partition(":")[0])
        version = (spec.version or _module_version(module)
                   or fingerprint(spec, source=source_of(function)))
        candidate = cls(function, name=spec.resolved_name, version=version,
                        batch_size=spec.batch_size, workers=spec.workers)
        candidate.confidence_path = spec.confidence_path
        candidate.abstain_below = spec.abstain_below
        return candidate

    def open(self) -> None:
        """With ``workers`` above 1, start the worker processes (once; they load the function).

        Raises:
            ConfigError: the function cannot be sent to a worker process.
            WorkerStartError: a worker could not load it.
        """
        if self.workers > 1 and self._pool is None:
            in_process = CallableCandidate(self._function, name=self.name,
                                           version=self.version, batch_size=self.batch_size)
            in_process.confidence_path = self.confidence_path
            in_process.abstain_below = self.abstain_below
            unit = self.batch_size if self.batched else 1
            self._pool = WorkerPool(in_process, workers=self.workers, unit=unit)
            self._pool.open()

    @property
    def predicts_out_of_process(self) -> bool:
        """True with ``workers`` above 1: the worker processes predict, this one waits."""
        return self.workers > 1

    @property
    def worker_pids(self) -> list[int]:
        """The process ids of the workers while open; empty when it runs in this process."""
        return self._pool.pids if self._pool is not None else []

    @property
    def worker_restarts(self) -> int:
        """Workers replaced after dying since it opened."""
        return self._pool.restarts if self._pool is not None else 0

    def close(self) -> None:
        """Stop the worker processes, if any. Idempotent."""
        if self._pool is not None:
            self._pool.close()

    def predict(self, events: Sequence[Event], now: datetime) -> list[Prediction]:
        if self._pool is not None:
            return self._pool.predict(events, now)
        if self.workers > 1:
            raise RuntimeError(f"candidate {self.name!r} runs in worker processes: "
                               f"open it before predict (use it as a context manager)")
        if self.batched:
            return self._predict_batch(events, now)
        return [self._predict_one(event, now) for event in events]

    def _predict_one(self, event: Event, now: datetime) -> Prediction:
        started = time.perf_counter()
        try:
            output = self._function(event)
        except Exception as exc:  # noqa: BLE001 - the candidate's failure is data, not a crash
            return self._failed(event, now, _elapsed_ms(started), _error_of(exc))
        return self._succeeded(event, now, _elapsed_ms(started), output)

    def _predict_batch(self, events: Sequence[Event], now: datetime) -> list[Prediction]:
        predictions: list[Prediction] = []
        for start in range(0, len(events), self.batch_size):
            chunk = events[start : start + self.batch_size]
            started = time.perf_counter()
            try:
                outputs = self._function(list(chunk))
                if not isinstance(outputs, list) or len(outputs) != len(chunk):
                    raise _BatchShapeError(outputs, len(chunk))
            except Exception as exc:  # noqa: BLE001 - as for one event
                error, latency = _error_of(exc), _elapsed_ms(started)
                predictions.extend(self._failed(event, now, latency, error) for event in chunk)
                continue
            # Every event in a batch waited for the whole call: that is its latency.
            latency = _elapsed_ms(started)
            predictions.extend(
                self._succeeded(event, now, latency, output)
                for event, output in zip(chunk, outputs, strict=True)
            )
        return predictions

    def _succeeded(self, event: Event, now: datetime, latency: float, output: Any) -> Prediction:
        try:
            orjson.dumps(output, option=_STRICT)
        except TypeError as exc:
            error = PredictionError(
                type="NotJSONSerializable", message=truncate(str(exc)), kind=ErrorKind.NOT_JSON
            )
            return self._failed(event, now, latency, error)
        confidence, abstained = self.judge(output)
        return Prediction(
            event_id=event.event_id, candidate=self.name, version=self.version,
            mode=Mode.SHADOW, output=output, confidence=confidence, abstained=abstained,
            latency_ms=latency, error=None, predicted_at=now,
        )

    def _failed(
        self, event: Event, now: datetime, latency: float, error: PredictionError
    ) -> Prediction:
        return Prediction(
            event_id=event.event_id, candidate=self.name, version=self.version,
            mode=Mode.SHADOW, output=None, confidence=None,
            latency_ms=latency, error=error, predicted_at=now,
        )


class _BatchShapeError(Exception):
    def __init__(self, outputs: Any, expected: int) -> None:
        got = f"a list of {len(outputs)}" if isinstance(outputs, list) else type(outputs).__name__
        super().__init__(f"batch callable returned {got}; expected a list of {expected}")


def _module_version(module: Any) -> str | None:
    version = getattr(module, "__version__", None)
    return str(version) if version is not None else None


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _error_of(exc: BaseException) -> PredictionError:
    return PredictionError(type=type(exc).__name__, message=truncate(str(exc)))
