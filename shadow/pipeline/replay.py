"""``shadow replay``: wire files, configuration, candidate and store into one run."""

from __future__ import annotations

import shlex
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.files import FileSource
from connectors.mapping import EventMapper, OutcomeMapper
from shadow.candidates import Candidate, build_candidate
from shadow.compare.comparators import build_comparator
from shadow.config.candidates import (
    CallableCandidateSpec,
    CandidateSpec,
    HttpCandidateSpec,
    RemoteSpec,
)
from shadow.config.file import Config, load_config
from shadow.core.errors import ConfigError
from shadow.core.models import utc_now
from shadow.pipeline.columnar import ColumnarPipeline
from shadow.pipeline.readiness import remember
from shadow.pipeline.runner import ReplaySummary
from shadow.store.database import Store


@dataclass(frozen=True)
class ReplayRequest:
    """What the user asked for; flags win over the configuration file."""

    events: list[Path]
    outcomes: list[Path] = field(default_factory=list)
    db: Path | None = None
    config: Path | None = None
    candidate: str | None = None
    compare: str | None = None
    batch_size: int | None = None
    concurrency: int | None = None
    retry_errors: bool = False


def replay_files(request: ReplayRequest, *, progress: Any = None) -> ReplaySummary:
    """Run the request; raises ConfigError for anything the user must fix first."""
    config = load_config(request.config)
    db = _store_path(request, config)
    for path in [*request.events, *request.outcomes]:
        if not path.is_file():
            raise ConfigError(f"no such file: {path}")
    candidates = [build_candidate(spec) for spec in _candidate_specs(request, config)]
    _check_distinct(candidates)
    comparator = build_comparator(config.comparator_named(request.compare))
    batch_size = config.store.batch_size if request.batch_size is None else request.batch_size
    if batch_size < 1:
        raise ConfigError(f"--batch-size: expected a positive number, got {batch_size}")
    events = [FileSource(path.resolve()) for path in request.events]
    outcomes = [FileSource(path.resolve()) for path in request.outcomes]
    with Store(db) as store, ExitStack() as opened:
        if request.config is not None:
            remember(store, config, now=utc_now())
        for candidate in candidates:
            opened.enter_context(candidate)
        rollout = None
        if config.rollout is not None:
            from rollout.runtime import open_rollout

            rollout = open_rollout(config.rollout, store, candidates, comparator, opened)
        replay = ColumnarPipeline(
            store, candidates, comparator,
            event_mapper=EventMapper(config.mapping.events),
            outcome_mapper=OutcomeMapper(config.mapping.outcomes),
            batch_size=batch_size, progress=progress, rollout=rollout,
        )
        try:
            summary = replay.run(events, outcomes, retry_errors=request.retry_errors)
        finally:
            if progress is not None:
                progress.close()
    return summary


def _store_path(request: ReplayRequest, config: Config) -> Path:
    if request.db is not None:
        return request.db
    if config.store.path is not None:
        return Path(config.store.path)
    raise ConfigError("--db is required (or set SHADOW_DB, or store.path in the config)")


def _candidate_specs(request: ReplayRequest, config: Config) -> list[CandidateSpec]:
    if request.candidate is not None:
        specs = [_named_candidate(request, config)]
    else:
        specs = config.all_candidates()
        if not specs:
            raise ConfigError("--candidate is required (or 'candidate' in the config)")
    if request.concurrency is None:
        return specs
    if request.concurrency < 1:
        raise ConfigError(f"--concurrency: expected a positive number, got {request.concurrency}")
    if not any(isinstance(spec, RemoteSpec) for spec in specs):
        raise ConfigError("--concurrency: applies to HTTP and chat candidates only")
    return [
        spec.model_copy(update={"concurrency": request.concurrency})
        if isinstance(spec, RemoteSpec) else spec
        for spec in specs
    ]


def _check_distinct(candidates: list[Candidate]) -> None:
    seen: set[tuple[str, str | None]] = set()
    for candidate in candidates:
        identity = (candidate.name, candidate.version)
        if identity in seen:
            raise ConfigError(
                f"two candidates are named {candidate.name!r} (version {candidate.version}); "
                "give each a distinct name"
            )
        seen.add(identity)


def _named_candidate(request: ReplayRequest, config: Config) -> CandidateSpec:
    assert request.candidate is not None
    if request.candidate.startswith(("http://", "https://")):
        if isinstance(config.candidate, HttpCandidateSpec):
            return config.candidate.model_copy(update={"url": request.candidate})
        return HttpCandidateSpec(kind="http", url=request.candidate)
    base = {}
    if isinstance(config.candidate, CallableCandidateSpec):
        base = config.candidate.model_dump()
    if base.get("callable") != request.candidate:
        base = {"batch_size": base.get("batch_size", 64)}
    try:
        return CallableCandidateSpec.model_validate({**base, "callable": request.candidate})
    except ValueError:
        raise ConfigError(
            f"--candidate: expected the form module:function, got {request.candidate!r}"
        ) from None


def describe(summary: ReplaySummary, request: ReplayRequest | None = None, *,
             program: str = "shadow") -> str:
    """The summary a person reads after a replay; ``program`` runs ``shadow`` in its hint."""
    s = summary
    lines = [
        f"events read     {s.events_read:>10,} = stored {s.events_stored:,}"
        f" + duplicates {s.duplicates:,} + dead letters {s.dead_letters:,}"
        + (f" + skipped {s.events_skipped:,}" if s.events_skipped else ""),
        f"predictions     {s.predictions:>10,}   errors {s.prediction_errors:,}"
        + (f"   violating a check {s.violations:,}" if s.violations else ""),
    ]
    if s.already_stored:
        lines.insert(1, f"{'':>29}of the duplicates, {s.already_stored:,} were already stored "
                        "from the same position by an earlier replay")
    if s.outcomes_read:
        lines.append(
            f"outcomes read   {s.outcomes_read:>10,} = stored {s.outcomes_stored:,}"
            f" + duplicates {s.outcome_duplicates:,} + dead letters {s.outcome_dead_letters:,}"
            + (f" + skipped {s.outcomes_skipped:,}" if s.outcomes_skipped else "")
        )
    if s.retried:
        lines.append(f"retried errors  {s.retried:>10,}")
    if s.live:
        lines.append(f"routed live     {s.live:>10,}   published {s.published:,}")
    rate = f"{100 * s.agreed / s.compared:.1f} % agree" if s.compared else "nothing new to compare"
    lines.append(f"compared        {s.compared:>10,}   {rate}")
    if s.deferred:
        lines.append(f"not judged yet  {s.deferred:>10,}   the comparator could not judge them "
                     "now; they are compared at the next run")
    lines.append(f"took {s.seconds:.1f} s")
    if request is not None and (request.db is not None or request.config is not None):
        lines.append(f"next: {program} report{report_options(request)}")
    return "\n".join(lines)


def report_options(request: ReplayRequest) -> str:
    """``--db`` and ``--config`` as the replay was given them, for the report to read the
    same store with the same readiness settings (threshold, floors) and so the same verdict."""
    options = ""
    if request.db is not None:
        options += f" --db {shlex.quote(str(request.db))}"
    if request.config is not None:
        options += f" --config {shlex.quote(str(request.config))}"
    return options
