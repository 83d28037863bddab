"""The Python-callable candidate: loading, latency, and failures turned into data.

Candidates are defined here and named ``tests.candidates.test_candidates:NAME``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from shadow import batch
from shadow.candidates import CallableCandidate
from shadow.config.candidates import CallableCandidateSpec
from shadow.core.errors import LoadError
from shadow.core.loading import load_callable
from shadow.core.models import Event, PredictionError

__version__ = "2.7.1"

HERE = "tests.candidates.test_candidates"
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
NOT_CALLABLE = 42


def echo(event: Event) -> Any:
    return event.payload.get("label")


def slow(event: Event) -> Any:
    time.sleep(0.02)
    return "done"


@batch(size=3)
def slow_batch(events: list[Event]) -> list[Any]:
    time.sleep(0.02)
    return ["done" for _ in events]


def fussy(event: Event) -> Any:
    if event.payload.get("label") is None:
        raise KeyError("label")
    return event.payload["label"]


def make_events(*labels: str | None) -> list[Event]:
    return [
        Event(event_id=f"E{i}", key=f"K{i}", occurred_at=NOW,
              payload={} if label is None else {"label": label})
        for i, label in enumerate(labels)
    ]


def test_from_spec_loads_the_function_with_default_name_and_module_version() -> None:
    candidate = CallableCandidate.from_spec(CallableCandidateSpec(callable=f"{HERE}:echo"))

    assert candidate.name == f"{HERE}:echo"
    assert candidate.version == "2.7.1"
    predictions = candidate.predict(make_events("bug", "login"), NOW)
    assert [(p.event_id, p.output, p.error) for p in predictions] == [
        ("E0", "bug", None), ("E1", "login", None)]
    assert all(p.candidate == f"{HERE}:echo" and p.version == "2.7.1" for p in predictions)


def test_from_spec_keeps_an_explicit_name_and_version() -> None:
    spec = CallableCandidateSpec(callable=f"{HERE}:echo", name="triage", version="9")

    candidate = CallableCandidate.from_spec(spec)

    assert (candidate.name, candidate.version) == ("triage", "9")


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("tests.no_such_module_here:predict", "cannot import"),
        (f"{HERE}:no_such_function", "no_such_function"),
        (f"{HERE}:NOT_CALLABLE", "not callable"),
    ],
    ids=["no module", "no attribute", "not callable"],
)
def test_a_candidate_that_cannot_be_loaded_raises_candidate_load_error(
    path: str, problem: str
) -> None:
    with pytest.raises(LoadError) as from_spec:
        CallableCandidate.from_spec(CallableCandidateSpec(callable=path))
    with pytest.raises(LoadError) as direct:
        load_callable(path, what="candidate")

    for error in (from_spec.value, direct.value):
        assert path in str(error)
        assert problem in str(error)


def test_latency_is_measured() -> None:
    single = CallableCandidate(slow, name="slow").predict(make_events("a", "b"), NOW)
    batched = CallableCandidate(slow_batch, name="slow_batch").predict(
        make_events("a", "b", "c", "d"), NOW)

    assert [p.output for p in single + batched] == ["done"] * 6
    assert all(p.latency_ms >= 20 for p in single + batched)


def test_an_exception_becomes_a_prediction_error() -> None:
    candidate = CallableCandidate(fussy, name="fussy")

    predictions = candidate.predict(make_events("bug", None, "login"), NOW)

    assert [p.event_id for p in predictions] == ["E0", "E1", "E2"]
    failed = predictions[1]
    assert failed.error == PredictionError(type="KeyError", message=str(KeyError("label")))
    assert (failed.ok, failed.output, failed.confidence) == (False, None, None)
    assert failed.latency_ms >= 0
    assert [(p.ok, p.output) for p in (predictions[0], predictions[2])] == [
        (True, "bug"), (True, "login")]
