"""Candidate specs: the AI systems under test, and the hard checks on their outputs.

A candidate is a Python callable, a JSON endpoint or a chat-completions
endpoint, picked by ``kind`` (``callable`` when absent); the remote ones share
retries and a circuit breaker. :func:`shadow.candidates.build_candidate` turns a
spec into a candidate, :mod:`shadow.candidates.constraints` turns check specs into checks.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from shadow.core.spec import URL_PATTERN, CallablePath, Spec


class _CheckBase(Spec):
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
"""A hard constraint on every output of a candidate (see :mod:`shadow.candidates.constraints`)."""

CHECK_KINDS = ("regex", "pii", "required", "json_schema", "labels", "max_length", "custom")


class _CandidateBase(Spec):
    """What every kind of candidate has."""

    name: str | None = None
    """Defaults to the callable path, URL or model."""
    version: str | None = None
    """A new version restarts a rollout from shadow. Without one, a callable's module
    ``__version__`` is used, and failing that a fingerprint of what determines the
    candidate's answers (:mod:`shadow.candidates.fingerprint`)."""
    confidence_path: str | None = None
    """Dotted path to a numeric confidence in the output; ``confidence`` by default."""
    abstain_below: float | None = Field(None, ge=0.0, le=1.0)
    """Predictions less confident than this are abstentions: stored, compared with
    nothing and never acted on; reported as coverage."""
    checks: list[CheckSpec] = Field(default_factory=list)
    """Hard constraints on every output; a violating live decision is never published."""

    @property
    def resolved_name(self) -> str:
        """The name its predictions are stored and reported under."""
        return self.name or self._default_name()

    def _default_name(self) -> str:
        raise NotImplementedError


class CallableCandidateSpec(_CandidateBase):
    """A Python function in this process.

    Its version defaults to the module's ``__version__``, then to a fingerprint
    of the ``module:function`` reference and the function's source.
    """

    kind: Literal["callable"] = "callable"
    callable: CallablePath
    batch_size: int = Field(64, ge=1, le=100_000)
    """How many events a batch callable receives at once."""

    def _default_name(self) -> str:
        return self.callable


class RetrySpec(Spec):
    """Retries of calls that may succeed later: connection errors, timeouts, 429 and 5xx."""

    max_attempts: int = Field(3, ge=1, le=20)
    """Attempts in all, the first one included."""
    backoff_s: float = Field(0.2, ge=0.0)
    """Upper bound of the first wait; it doubles per attempt (with full jitter)."""
    max_backoff_s: float = Field(5.0, ge=0.0)
    max_retry_after_s: float = Field(60.0, ge=0.0)
    """A server's Retry-After is honoured up to this long."""


class BreakerSpec(Spec):
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
            if is_credential_header(name) and "${" not in text:
                raise ValueError(
                    f"header {name!r} carries a secret: write it as ${{NAME}} and set the "
                    f"environment variable NAME, so it is never stored in this file"
                )
        return value


_SECRET_HEADER = re.compile(r"authorization|api[-_]?key|token|secret|password", re.IGNORECASE)


def is_credential_header(name: str) -> bool:
    """Whether a header of this name carries a credential (its value must say ``${NAME}``)."""
    return _SECRET_HEADER.search(name) is not None


class HttpCandidateSpec(RemoteSpec):
    """A JSON endpoint: the event is POSTed, the response JSON is the output."""

    kind: Literal["http"]
    url: Annotated[str, Field(pattern=URL_PATTERN)]
    body: Any = None
    """A template for the request body; the canonical event JSON when absent."""
    output_path: str | None = None
    """Dotted path into the response JSON to the output; the whole response when absent."""

    def _default_name(self) -> str:
        return self.url


class PricesSpec(Spec):
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
    base_url: Annotated[str, Field(pattern=URL_PATTERN)]
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

    def _default_name(self) -> str:
        return f"{self.model}@{self.base_url}"


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
