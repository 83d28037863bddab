"""The readiness settings a store was last run with, kept in the store itself.

A report judges "ready" by settings of the configuration: its ``report`` section (threshold,
floors, error and latency budgets), the rollout's gates where that section is silent, the
comparator's label paths, the ``drift`` section, and which candidates have hard-constraint
checks. A replay or a daemon given a configuration keeps these in the store's ``settings``
table, so that ``shadow report --db STORE`` without ``--config`` reaches the verdict that the
report with ``--config`` reaches.

    remember(store, config, now=utc_now())   # a replay, a daemon at start
    config = remembered(store) or Config()    # a report given no configuration

Only these settings are kept, as a configuration of their own: no sources, sinks, notify
targets or store options, whose settings may name hosts and credentials, and the candidates
(for their names and checks) without the headers they send.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
import structlog
from pydantic import ValidationError

from shadow.config.candidates import CandidateSpec, RemoteSpec
from shadow.config.comparators import ExactSpec
from shadow.config.file import Config, ReportSpec
from shadow.store.database import Store

log = structlog.get_logger(__name__)

READINESS = "readiness"
"""The name the settings are kept under in the ``settings`` table."""


def readiness_part(config: Config) -> Config:
    """The part of ``config`` a report judges by, as a configuration that judges the same.

    The rollout is left out; where the ``report`` section is silent, the rollout's gates
    fill it in, as the report would take them (``shadow.reports.build.owner_options``).
    """
    return Config(report=_filled(config), drift=config.drift,
                  comparator=ExactSpec(prediction_path=config.comparator.prediction_path,
                                       outcome_path=config.comparator.outcome_path),
                  candidates=[_without_headers(spec) for spec in config.all_candidates()])


def remember(store: Store, config: Config, *, now: datetime) -> None:
    """Keep the readiness settings of ``config`` in ``store``, in place of earlier ones."""
    store.save_setting(READINESS, as_json(readiness_part(config)), now=now)


def as_json(part: Config) -> str:
    """The kept sections as JSON text that :class:`Config` reads back (durations in seconds)."""
    kept = part.model_dump(mode="python", include={"report", "drift", "comparator",
                                                   "candidates"})
    return orjson.dumps(kept, default=_seconds).decode()


def remembered(store: Store) -> Config | None:
    """The readiness settings last kept in ``store``, else ``None``.

    Settings this version cannot read (kept by a newer one) count as none, and say so.
    """
    text = store.setting(READINESS)
    if text is None:
        return None
    try:
        return Config.model_validate_json(text)
    except ValidationError as exc:
        log.warning("stored readiness settings not read", store=str(store.path),
                    problems=exc.error_count())
        return None


def _seconds(value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    raise TypeError(f"{type(value).__name__} is not kept as JSON")


def _without_headers(spec: CandidateSpec) -> CandidateSpec:
    # A header may hold a credential written inline; the report needs none of them.
    return spec.model_copy(update={"headers": {}}) if isinstance(spec, RemoteSpec) else spec


def _filled(config: Config) -> ReportSpec:
    report, rollout = config.report, config.rollout
    if rollout is None:
        return report
    gates = rollout.gates
    fallbacks = {
        "threshold": gates.agreement,
        "max_error_rate": gates.max_error_rate,
        "max_p95_latency_ms": gates.max_p95_latency_ms,
        "segment_floor": gates.segments.floor,
        "max_violation_rate": gates.max_violation_rate,
    }
    return report.model_copy(update={
        name: fallback for name, fallback in fallbacks.items()
        if getattr(report, name) is None})
