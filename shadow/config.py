"""The configuration file: small frozen values, validated when loaded.

A bad file fails with :class:`ConfigError`, whose message names every
offending key path and what was expected there, e.g.
``comparator.threshold: expected a number between 0 and 1, got 'high'``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from rollout.plan import Duration, RolloutSpec
from shadow.errors import ConfigError

_CALLABLE_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"
_URL_PATTERN = r"^https?://"

CallablePath = Annotated[str, Field(pattern=_CALLABLE_PATTERN, description="module:function")]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- comparators -------------------------------------------------------------


class _ComparatorBase(_Spec):
    prediction_path: str | None = None
    """Dotted path into the prediction output to compare, e.g. ``category``."""
    outcome_path: str | None = None
    """Dotted path into the outcome to compare."""


class ExactSpec(_ComparatorBase):
    kind: Literal["exact"] = "exact"


class NormalizedSpec(_ComparatorBase):
    kind: Literal["normalized"]


class SetSpec(_ComparatorBase):
    kind: Literal["set"]
    threshold: float = Field(1.0, ge=0.0, le=1.0)
    """Minimum Jaccard similarity of the two lists for agreement."""


class NumericSpec(_ComparatorBase):
    kind: Literal["numeric"]
    abs_tol: float = Field(0.0, ge=0.0)
    rel_tol: float = Field(0.0, ge=0.0)


class FieldsSpec(_ComparatorBase):
    kind: Literal["fields"]
    fields: dict[str, ComparatorSpec] = Field(min_length=1)
    """A comparator per field; the output agrees when every listed field agrees."""


class CustomSpec(_ComparatorBase):
    kind: Literal["custom"]
    function: CallablePath
    """``module:function`` taking ``(prediction_output, outcome)`` and returning a bool."""


class SimilaritySpec(_ComparatorBase):
    """Lexical similarity of two texts (see :mod:`shadow.text_comparators`)."""

    kind: Literal["similarity"]
    metric: Literal["f1", "rouge_l"] = "f1"
    """Token-level F1 (bag of words) or ROUGE-L (longest common subsequence) F-measure."""
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    """The texts agree when the score is at least this."""


class SemanticSpec(_ComparatorBase):
    """Cosine similarity of sentence embeddings from a model shipped in the ``semantic`` extra."""

    kind: Literal["semantic"]
    threshold: float = Field(0.8, ge=-1.0, le=1.0)
    """The texts agree when the cosine similarity is at least this."""


class JudgeSpec(_ComparatorBase):
    """An LLM asked, through an OpenAI-compatible chat API, whether the two agree."""

    kind: Literal["judge"]
    base_url: str = Field(pattern=_URL_PATTERN)
    """Up to ``/v1``; ``/chat/completions`` is appended."""
    model: str = Field(min_length=1)
    api_key_env: str | None = None
    """Environment variable holding the API key, sent as a bearer token."""
    rubric: str | None = None
    """The instructions; ``{{ output }}`` and ``{{ outcome }}`` are filled in. A default
    rubric asks whether the two say the same thing."""
    timeout_s: float = Field(30.0, gt=0.0)
    max_attempts: int = Field(3, ge=1, le=20)
    """Attempts per call in all; connection errors, timeouts, 429 and 5xx are retried."""
    cache: bool = True
    cache_path: str = ".shadow-judge-cache.sqlite"
    """SQLite file of verdicts by content hash, relative to the working directory."""


ComparatorSpec = Annotated[
    ExactSpec | NormalizedSpec | SetSpec | NumericSpec | FieldsSpec | CustomSpec
    | SimilaritySpec | SemanticSpec | JudgeSpec,
    Field(discriminator="kind"),
]
FieldsSpec.model_rebuild()

COMPARATOR_KINDS = (
    "exact", "normalized", "set", "numeric", "fields", "custom",
    "similarity", "semantic", "judge",
)


# -- candidates --------------------------------------------------------------


class _CheckBase(_Spec):
    name: Annotated[str, Field(pattern=r"^[\w.:-]+$")] | None = None
    """Names the check in violations and metrics; the kind by default."""


class RegexCheckSpec(_CheckBase):
    kind: Literal["regex"]
    pattern: str
    must: Literal["match", "not_match"]
    path: str | None = None
    """Dotted path into the output to the text; the whole output (as JSON text) by default."""
    ignore_case: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


PiiType = Literal["email", "phone", "card"]


def _every_pii_type() -> list[PiiType]:
    return ["email", "phone", "card"]


class PiiCheckSpec(_CheckBase):
    """Built-in patterns for personal data; card numbers must also pass the Luhn check."""

    kind: Literal["pii"]
    types: list[PiiType] = Field(default_factory=_every_pii_type, min_length=1)
    path: str | None = None
    """Where to look; every string in the output by default."""


class RequiredCheckSpec(_CheckBase):
    kind: Literal["required"]
    fields: list[str] = Field(min_length=1)
    """Dotted paths into the output that must be present and not null."""


class JsonSchemaCheckSpec(_CheckBase):
    kind: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")
    """A JSON schema (draft 2020-12) the whole output must be valid against."""

    @field_validator("schema_")
    @classmethod
    def _is_a_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON schema: {exc.message}") from None
        return value


class LabelsCheckSpec(_CheckBase):
    kind: Literal["labels"]
    path: str
    """The label (or list of labels) in the output; each must be one of ``allowed``."""
    allowed: list[str | int | float | bool | None] = Field(min_length=1)


class MaxLengthCheckSpec(_CheckBase):
    kind: Literal["max_length"]
    max: int = Field(ge=0)
    """Characters of the text at ``path``, or of the JSON text of anything else."""
    path: str | None = None


class CustomCheckSpec(_CheckBase):
    kind: Literal["custom"]
    function: CallablePath
    """``module:function`` taking the output; returns None or True when it is fine,
    False or a message when it is not."""


def _check_kind(raw: Any) -> str:
    # "" is no kind at all: reported as "expected one of …", naming the check kinds.
    kind = raw.get("kind") if isinstance(raw, dict) else getattr(raw, "kind", None)
    return kind if isinstance(kind, str) else ""


CheckSpec = Annotated[
    Annotated[RegexCheckSpec, Tag("regex")]
    | Annotated[PiiCheckSpec, Tag("pii")]
    | Annotated[RequiredCheckSpec, Tag("required")]
    | Annotated[JsonSchemaCheckSpec, Tag("json_schema")]
    | Annotated[LabelsCheckSpec, Tag("labels")]
    | Annotated[MaxLengthCheckSpec, Tag("max_length")]
    | Annotated[CustomCheckSpec, Tag("custom")],
    Discriminator(_check_kind),
]
"""A hard constraint on every output of a candidate (see :mod:`shadow.constraints`)."""

CHECK_KINDS = ("regex", "pii", "required", "json_schema", "labels", "max_length", "custom")


class _CandidateBase(_Spec):
    """What every kind of candidate has."""

    name: str | None = None
    """Defaults to the callable path, URL or model."""
    version: str | None = None
    confidence_path: str | None = None
    """Dotted path to a numeric confidence in the output; ``confidence`` by default."""
    abstain_below: float | None = Field(None, ge=0.0, le=1.0)
    """Predictions less confident than this are abstentions: stored, compared with
    nothing and never acted on; reported as coverage."""
    checks: list[CheckSpec] = Field(default_factory=list)
    """Hard constraints on every output; a violating live decision is never published."""


class CallableCandidateSpec(_CandidateBase):
    """A Python function in this process; its version defaults to the module's ``__version__``."""

    kind: Literal["callable"] = "callable"
    callable: CallablePath
    batch_size: int = Field(64, ge=1, le=100_000)
    """How many events a batch callable receives at once."""


class RetrySpec(_Spec):
    """Retries of calls that may succeed later: connection errors, timeouts, 429 and 5xx."""

    max_attempts: int = Field(3, ge=1, le=20)
    """Attempts in all, the first one included."""
    backoff_s: float = Field(0.2, ge=0.0)
    """Upper bound of the first wait; it doubles per attempt (with full jitter)."""
    max_backoff_s: float = Field(5.0, ge=0.0)
    max_retry_after_s: float = Field(60.0, ge=0.0)
    """A server's Retry-After is honoured up to this long."""


class BreakerSpec(_Spec):
    """A circuit breaker: stop calling an endpoint that keeps failing."""

    failures: int = Field(10, ge=1)
    """Consecutive failed calls (after their retries) that open the circuit."""
    cooldown_s: float = Field(30.0, ge=0.0)
    """How long it stays open before one call is let through to probe."""


class RemoteSpec(_CandidateBase):
    """What every candidate behind a network call shares.

    Header values may name environment variables as ``${NAME}``; secrets
    belong there, never in this file.
    """

    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(10.0, gt=0.0)
    concurrency: int = Field(16, ge=1, le=10_000)
    """Calls in flight at most."""
    retry: RetrySpec = RetrySpec()
    breaker: BreakerSpec = BreakerSpec()

    @field_validator("headers")
    @classmethod
    def _secrets_come_from_the_environment(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if _SECRET_HEADER.search(name) and "${" not in text:
                raise ValueError(
                    f"header {name!r} carries a secret: write it as ${{NAME}} and set the "
                    f"environment variable NAME, so it is never stored in this file"
                )
        return value


_SECRET_HEADER = re.compile(r"authorization|api[-_]?key|token|secret|password", re.IGNORECASE)


class HttpCandidateSpec(RemoteSpec):
    """A JSON endpoint: the event is POSTed, the response JSON is the output."""

    kind: Literal["http"]
    url: Annotated[str, Field(pattern=_URL_PATTERN)]
    body: Any = None
    """A template for the request body; the canonical event JSON when absent."""
    output_path: str | None = None
    """Dotted path into the response JSON to the output; the whole response when absent."""


class PricesSpec(_Spec):
    """What the provider charges, per 1,000 tokens."""

    prompt_per_1k: float = Field(ge=0.0)
    completion_per_1k: float = Field(ge=0.0)


class ChatCandidateSpec(RemoteSpec):
    """A prompt against an OpenAI-compatible chat-completions endpoint.

    ``system`` and ``user`` are templates filled from the event
    (``{{ payload.subject }}``). With ``json_schema`` the server is asked for
    structured output and the answer is validated against the schema.
    """

    kind: Literal["chat"]
    base_url: Annotated[str, Field(pattern=_URL_PATTERN)]
    """E.g. ``https://api.openai.com/v1``; ``/chat/completions`` is appended."""
    model: str = Field(min_length=1)
    system: str | None = None
    user: str = Field(min_length=1)
    json_schema: dict[str, Any] | None = None
    output: Literal["json", "text"] = "json"
    """``json``: the reply is parsed as JSON; ``text``: the reply text is the output."""
    temperature: float | None = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    api_key_env: str | None = "OPENAI_API_KEY"
    """The environment variable holding the API key, sent as a bearer token."""
    prices: PricesSpec | None = None


def _candidate_kind(raw: Any) -> str:
    # Configurations written before there was more than one kind have no `kind`.
    if isinstance(raw, dict):
        return str(raw.get("kind", "callable"))
    return str(getattr(raw, "kind", "callable"))


CandidateSpec = Annotated[
    Annotated[CallableCandidateSpec, Tag("callable")]
    | Annotated[HttpCandidateSpec, Tag("http")]
    | Annotated[ChatCandidateSpec, Tag("chat")],
    Discriminator(_candidate_kind),
]


# -- mapping -----------------------------------------------------------------


class EventMapping(_Spec):
    """Where each canonical field of an Event sits in a raw record.

    Values are dotted paths (``ticket.via.channel``, ``tags.0``); ``$`` is the
    whole record. ``segment`` is either a path to an object of strings or a
    table of segment field to path.
    """

    event_id: str = "event_id"
    key: str = "key"
    occurred_at: str = "occurred_at"
    routing_key: str | None = "routing_key"
    segment: str | dict[str, str] = "segment"
    payload: str = "payload"


class OutcomeMapping(_Spec):
    key: str = "key"
    outcome: str = "outcome"
    decided_at: str = "decided_at"
    actor: str | None = "actor"


class MappingConfig(_Spec):
    events: EventMapping = EventMapping()
    outcomes: OutcomeMapping = OutcomeMapping()


# -- store and the whole file ------------------------------------------------


class StoreConfig(_Spec):
    path: str | None = None
    batch_size: int = Field(20_000, ge=1, le=1_000_000)
    """Records per write transaction."""


# -- sources and the daemon ----------------------------------------------------


class FileSourceSpec(_Spec):
    """An export file, read once (the daemon reads it at start-up; replays are idempotent)."""

    kind: Literal["file"]
    path: str


class KafkaSourceSpec(_Spec):
    kind: Literal["kafka"]
    bootstrap: str = Field(min_length=1)
    topics: list[str] = Field(min_length=1)
    group: str = Field(min_length=1)
    start: Literal["committed", "earliest", "latest"] = "committed"
    options: dict[str, Any] = Field(default_factory=dict)
    """Passed to kafka-python's consumer (e.g. security settings)."""


class WebhookSourceSpec(_Spec):
    """An HTTP endpoint a vendor pushes to, verified with the vendor's signature scheme."""

    kind: Literal["webhook"]
    name: str = Field(min_length=1)
    path: str = Field(pattern=r"^/[\w\-./]*$")
    scheme: Literal["zendesk", "hubspot_v3", "standard", "github", "none"] = "none"
    secret_env: str | None = None
    """Environment variable holding the signing secret; required unless the scheme is none."""
    tolerance: Duration = timedelta(minutes=5)
    max_body_bytes: int = Field(1_048_576, ge=1)
    ack_timeout: Duration = timedelta(seconds=4)
    """How long a delivery may wait to be stored before it gets 503 (the vendor retries)."""

    @model_validator(mode="after")
    def _signed_sources_name_their_secret(self) -> WebhookSourceSpec:
        if self.scheme != "none" and self.secret_env is None:
            raise ValueError(f"the {self.scheme} scheme needs secret_env")
        return self


SourceSpec = Annotated[
    FileSourceSpec | KafkaSourceSpec | WebhookSourceSpec, Field(discriminator="kind")
]


class SourcesConfig(_Spec):
    events: list[SourceSpec] = Field(default_factory=list)
    outcomes: list[SourceSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_group_per_kafka_source(self) -> SourcesConfig:
        # Members of one group are rebalanced together; one thread polling them in
        # turn could wait forever on a rebalance the other member must join.
        groups = [s.group for s in [*self.events, *self.outcomes] if s.kind == "kafka"]
        shared = sorted({g for g in groups if groups.count(g) > 1})
        if shared:
            raise ValueError(f"each Kafka source needs a consumer group of its own; "
                             f"{shared} is used by more than one")
        return self


class ListenSpec(_Spec):
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65_535)


class ApiSpec(ListenSpec):
    port: int = Field(8787, ge=0, le=65_535)
    token_env: str = "SHADOW_API_TOKEN"
    """The bearer token every data or state-changing call must carry."""


class WebhookServerSpec(ListenSpec):
    port: int = Field(8788, ge=0, le=65_535)
    public_url: str | None = Field(None, pattern=r"^https?://")
    """The URL vendors call, when a proxy sits in front (HubSpot signs the full URL)."""


class RetentionSpec(_Spec):
    payload_older_than: Duration | None = None
    """Raw event payloads and dead-letter records older than this are archived then blanked;
    counts, predictions, outcomes and comparisons stay. ``None`` keeps everything."""
    archive_dir: str | None = None
    """Parquet files of what was blanked; ``None`` deletes without archiving."""


class JobsSpec(_Spec):
    evaluate_every: Duration = timedelta(seconds=30)
    compare_every: Duration = timedelta(seconds=60)
    report_every: Duration = timedelta(days=1)
    reports_dir: str = "reports"
    retention_every: Duration = timedelta(days=1)
    checkpoint_every: Duration = timedelta(hours=1)
    retention: RetentionSpec = RetentionSpec()


class DaemonSpec(_Spec):
    api: ApiSpec = ApiSpec()
    webhooks: WebhookServerSpec = WebhookServerSpec()
    jobs: JobsSpec = JobsSpec()
    shutdown_deadline: Duration = timedelta(seconds=30)
    """How long in-flight work may take to finish after SIGTERM."""
    poll_timeout_s: float = Field(0.5, gt=0.0, le=60.0)


class ReportSpec(_Spec):
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


class DriftSpec(_Spec):
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


class LoggingSpec(_Spec):
    redact: list[str] = Field(default_factory=list)
    """Payload fields (dotted paths, e.g. ``payload.requester.email``) never written to logs."""


class Config(_Spec):
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
        config = config.model_copy(
            update={"rollout": rollout.model_copy(update={"sink": sink})})
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
    _CALLABLE_PATTERN: "the form module:function",
    _URL_PATTERN: "an http:// or https:// URL",
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
