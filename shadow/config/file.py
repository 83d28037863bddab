"""The configuration file: small frozen values, validated when loaded.

:class:`Config` is the whole file. Its larger parts are specified beside the
code they configure (:mod:`shadow.config.comparators`, :mod:`shadow.config.candidates`,
:mod:`connectors.specs`, :mod:`shadow.config.daemon`); the store, report,
drift and logging settings are here.

A bad file fails with :class:`ConfigError`, whose message names every
offending key path and what was expected there, e.g.
``comparator.threshold: expected a number between 0 and 1, got 'high'``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from connectors.specs import MappingConfig, SourcesConfig
from shadow.config.candidates import CHECK_KINDS, CandidateSpec, ChatCandidateSpec
from shadow.config.comparators import COMPARATOR_KINDS, ComparatorSpec, ExactSpec
from shadow.config.daemon import DaemonSpec
from shadow.config.rollout import RolloutSpec
from shadow.config.tiers import check_tools, with_defaults
from shadow.config.workers import WorkersSpec
from shadow.core.errors import ConfigError
from shadow.core.spec import CALLABLE_PATTERN, URL_PATTERN, Duration, Spec


class StoreConfig(Spec):
    path: str | None = None
    batch_size: int = Field(20_000, ge=1, le=1_000_000)
    """Records per write transaction."""


class ReportSpec(Spec):
    """What "ready" means to the owners reading ``shadow report``, and what it may show."""

    threshold: float | None = Field(None, ge=0.0, le=1.0)
    """The Wilson 95 % lower bound of agreement must reach it; the rollout's gate by default,
    else 0.9."""
    max_error_rate: float | None = Field(None, ge=0.0, le=1.0)
    max_p95_latency_ms: float | None = Field(None, gt=0.0)
    min_compared: int = Field(200, ge=1)
    segment_min_samples: int = Field(100, ge=1)
    segment_floor: float | None = Field(None, ge=0.0, le=1.0)
    daily_volume: float | None = Field(None, gt=0.0)
    """Events per day at full production, for the cost projection."""
    redact: list[str] = Field(default_factory=list)
    """Payload fields (relative to the payload, e.g. ``requester.email``) never shown."""
    top_disagreements: int = Field(20, ge=0, le=1000)
    top_violations: int = Field(10, ge=0, le=1000)
    """Recent violating predictions shown as examples, per candidate."""
    max_violation_rate: float | None = Field(None, ge=0.0, le=1.0)
    """Share of checked outputs allowed to violate a hard constraint; the rollout's gate by
    default, else no verdict line (the figures are shown either way)."""
    currency: str | None = None
    """Shown before costs, e.g. ``$``."""
    handling_minutes_per_case: float = Field(10.0, ge=0.0, allow_inf_nan=False)
    """Minutes a person spends on a case: what each case the AI handles alone (tier
    ``auto``) saves, in the report's work taken off people's hands."""
    review_minutes_per_case: float = Field(2.0, ge=0.0, allow_inf_nan=False)
    """Minutes a reviewer spends on a proposal (tier ``review``): such a case saves
    ``handling_minutes_per_case`` less this."""


class DriftSpec(Spec):
    """The current window of events against a reference window: has the traffic moved?"""

    reference_days: float = Field(7.0, gt=0.0)
    """The reference is the first days of events (the start of shadow mode) ..."""
    reference_start: datetime | None = None
    """... or this named period, with ``reference_end``."""
    reference_end: datetime | None = None
    current_days: float = Field(7.0, gt=0.0)
    """The current window: the last days before now."""
    numeric_fields: list[str] = Field(default_factory=list)
    """Dotted paths into payloads (``payload.amount``), compared besides payload length."""
    bins: int = Field(10, ge=2, le=100)
    psi: float = Field(0.25, gt=0.0)
    p_value: float = Field(0.001, gt=0.0, lt=1.0)
    new_outcome_share: float = Field(0.05, gt=0.0, le=1.0)
    pause_rollout: bool = False
    """When drift is detected, pause the rollout for a person to look."""
    every: Duration = timedelta(hours=1)
    """How often the daemon measures it."""

    @model_validator(mode="after")
    def _a_named_period_has_both_ends(self) -> DriftSpec:
        if (self.reference_start is None) != (self.reference_end is None):
            raise ValueError("give both reference_start and reference_end, or neither")
        return self


class LoggingSpec(Spec):
    redact: list[str] = Field(default_factory=list)
    """Payload fields (dotted paths, e.g. ``payload.requester.email``) never written to logs."""


class Config(Spec):
    version: Literal[1] = 1
    candidate: CandidateSpec | None = None
    candidates: list[CandidateSpec] = Field(default_factory=list)
    """Several candidates, each run on every event and reported side by side."""
    comparator: ComparatorSpec = ExactSpec()
    comparators: dict[str, ComparatorSpec] = Field(default_factory=dict)
    """Named comparators that ``--compare NAME`` can pick."""
    mapping: MappingConfig = MappingConfig()
    store: StoreConfig = StoreConfig()
    rollout: RolloutSpec | None = None
    """Staged rollout of one candidate; without it everything runs in shadow mode."""
    sources: SourcesConfig = SourcesConfig()
    """What ``shadow run`` consumes."""
    daemon: DaemonSpec = DaemonSpec()
    logging: LoggingSpec = LoggingSpec()
    report: ReportSpec = ReportSpec()
    drift: DriftSpec | None = None
    workers: WorkersSpec | None = None
    """Candidate workers and the recorder (``shadow worker``, ``shadow run --role
    recorder``); a plain ``shadow run`` ignores it."""

    @model_validator(mode="before")
    @classmethod
    def _tier_defaults(cls, raw: Any) -> Any:
        return with_defaults(raw)

    @field_validator("rollout")
    @classmethod
    def _tiers_name_known_tools(cls, value: RolloutSpec | None,
                                info: ValidationInfo) -> RolloutSpec | None:
        if value is None or value.tiers is None:
            return value
        specs = [info.data.get("candidate")] + list(info.data.get("candidates") or [])
        for spec in specs:
            if not isinstance(spec, ChatCandidateSpec):
                continue  # only a chat candidate lists its tools in the file
            tools, name = spec.tools, spec.resolved_name
            if isinstance(tools, list) and tools and value.candidate in (None, name):
                check_tools(value.tiers, [tool.function.name for tool in tools], candidate=name)
        return value

    @model_validator(mode="after")
    def _one_way_to_name_candidates(self) -> Config:
        if self.candidate is not None and self.candidates:
            raise ValueError("give either 'candidate' or 'candidates', not both")
        return self

    def all_candidates(self) -> list[CandidateSpec]:
        return [self.candidate] if self.candidate is not None else list(self.candidates)

    @field_validator("comparators")
    @classmethod
    def _names_do_not_shadow_kinds(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(set(value) & set(COMPARATOR_KINDS))
        if clash:
            raise ValueError(f"names {clash} are built-in comparator kinds; pick other names")
        return value

    def store_at(self, db: Path | None) -> Path:
        """The store a command works on: ``--db`` (or ``SHADOW_DB``), else ``store.path``.

        Raises:
            ConfigError: neither names one.
        """
        if db is not None:
            return Path(db)
        if self.store.path:
            return Path(self.store.path)
        raise ConfigError("--db is required (or set SHADOW_DB, or store.path in the config)")

    def comparator_named(self, name: str | None) -> ComparatorSpec:
        """The comparator ``--compare NAME`` selects: a named one, or a kind with defaults.

        Raises:
            ConfigError: when the name is neither.
        """
        if name is None:
            return self.comparator
        if name in self.comparators:
            return self.comparators[name]
        if name in COMPARATOR_KINDS:
            if name in ("exact", "normalized", "set", "numeric"):
                return _validate_comparator({"kind": name})
            if self.comparator.kind == name:
                return self.comparator
            raise ConfigError(
                f"--compare {name}: this kind needs parameters; define it under "
                f"'comparators' in the config file"
            )
        known = sorted(set(self.comparators) | {"exact", "normalized", "set", "numeric"})
        raise ConfigError(f"--compare {name}: no such comparator; expected one of {known}")


def _validate_comparator(raw: dict[str, Any]) -> ComparatorSpec:
    return Config.model_validate({"comparator": raw}).comparator


def load_config(path: str | Path | None) -> Config:
    """Read and validate a YAML configuration file; ``None`` gives the defaults.

    Raises:
        ConfigError: the file is missing, is not YAML, or fails validation.
    """
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    config = parse_config(raw, origin=str(path))
    # Files are relative to the config that names them, so it works from any directory.
    if config.store.path is not None:
        store = config.store.model_copy(update={"path": _beside(path, config.store.path)})
        config = config.model_copy(update={"store": store})
    rollout = config.rollout
    if rollout is not None and rollout.sink is not None and rollout.sink.path is not None:
        sink = rollout.sink.model_copy(update={"path": _beside(path, rollout.sink.path)})
        rollout = rollout.model_copy(update={"sink": sink})
        config = config.model_copy(update={"rollout": rollout})
    if rollout is not None and rollout.review_sink is not None \
            and rollout.review_sink.path is not None:
        reviews = rollout.review_sink.model_copy(
            update={"path": _beside(path, rollout.review_sink.path)})
        config = config.model_copy(
            update={"rollout": rollout.model_copy(update={"review_sink": reviews})})
    return config


def _beside(config_file: Path, name: str) -> str:
    return name if Path(name).is_absolute() else str(config_file.parent / name)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def parse_config(raw: dict[str, Any], *, origin: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = [(_user_path(error["loc"], raw), error) for error in exc.errors()]
        lines = [
            _describe(".".join(path) or "(top level)", error)
            for path, error in problems
            if not _shadowed(path, problems)
        ]
        # dict.fromkeys: one line per distinct problem, in order
        text = "\n  ".join(dict.fromkeys(lines))
        raise ConfigError(f"invalid configuration in {origin}:\n  {text}") from None


_KINDS_TEXT = ", ".join(COMPARATOR_KINDS)
_TAGS = {*COMPARATOR_KINDS, *CHECK_KINDS, "callable", "http", "chat"}
_PATTERN_NAMES = {
    CALLABLE_PATTERN: "the form module:function",
    URL_PATTERN: "an http:// or https:// URL",
}
_TYPE_LABELS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _describe(where: str, error: Any) -> str:
    kind, got = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return f"{where}: unknown setting"
    if kind == "missing":
        return f"{where}: required setting is missing"
    if kind == "union_tag_not_found":
        return f"{where}.kind: required; expected one of {_KINDS_TEXT}"
    if kind == "union_tag_invalid":
        expected = error["ctx"]["expected_tags"].replace("'", "")
        return f"{where}.kind: expected one of {expected}, got {got.get('kind')!r}"
    if kind == "string_pattern_mismatch":
        shape = _PATTERN_NAMES.get(error["ctx"]["pattern"], f"a match of {error['ctx']['pattern']}")
        return f"{where}: expected {shape}, got {got!r}"
    if kind in ("model_type", "model_attributes_type"):
        return f"{where}: expected a mapping of settings, got {_shown(got)}"
    if kind == "value_error":
        return f"{where}: {error['msg'].removeprefix('Value error, ')}"
    message = error["msg"][0].lower() + error["msg"][1:]
    return f"{where}: {message}, got {_shown(got)}"


def _shown(value: Any) -> str:
    return f"a {type(value).__name__}" if isinstance(value, dict | list) else repr(value)


def _user_path(loc: tuple[Any, ...], raw: Any) -> list[str]:
    """The key path as the user wrote it.

    Pydantic puts labels into the location that are not keys of the file: the
    tag of a discriminated union ("fields", "set") and the member of a plain
    union ("str", "dict[str,str]"). They are left out; a key that is missing
    from the file is kept, and so is everything after it.
    """
    path: list[str] = []
    node, tagged = raw, None
    for part in loc:
        # The tag comes right after the union's own key, before any key inside it
        # (which may have the same name: {"kind": "fields", "fields": ...}).
        if part in _TAGS and tagged is not node:
            if not isinstance(node, dict | list):
                continue  # the whole value has the wrong type for any kind
            if isinstance(node, dict) and (_kind_of(node) == part or part not in node):
                tagged = node
                continue
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif isinstance(part, str) and (part in _TYPE_LABELS or "[" in part):
            continue
        else:
            node = None
        path.append(str(part))
    return path


def _kind_of(node: dict[str, Any]) -> Any:
    if "kind" in node:
        return node["kind"]
    return "callable" if "callable" in node else None  # a candidate written without `kind`


def _shadowed(path: list[str], problems: list[tuple[list[str], Any]]) -> bool:
    """True when another problem lies deeper below this path.

    A value that fails every member of a union reports once per member; the
    member that got furthest names the actual mistake (``segment.tier``), so
    the shallower complaints ("should be a valid string") are dropped.
    """
    return any(len(other) > len(path) and other[: len(path)] == path for other, _ in problems)
