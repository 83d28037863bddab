"""Candidate specs: the AI systems under test, and the hard checks on their outputs.

A candidate is a Python callable, a JSON endpoint or a chat-completions
endpoint, picked by ``kind`` (``callable`` when absent); the remote ones share
retries and a circuit breaker. :func:`shadow.candidates.build_candidate` turns a
spec into a candidate, :mod:`shadow.candidates.constraints` turns check specs into checks.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

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


class ActionCheckSpec(_CheckBase):
    """A rule on the proposed calls of one tool (``shadow.core.actions``): the tool is
    forbidden, or an argument must lie within ``min``/``max``, match ``pattern`` or be
    valid against ``schema``. A call without the argument is not checked by the
    argument's rules (say ``required`` in a schema to demand it)."""

    kind: Literal["action"]
    tool: str = Field(min_length=1)
    argument: str | None = None
    """Dotted path into the call's arguments (``amount``, ``address.country``); the
    whole arguments object for ``schema`` when absent."""
    forbidden: bool = False
    """Any call of the tool is a violation."""
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    """A regular expression the argument (its JSON text if it is not a string) must
    contain a match of; anchor it (``^…$``) to demand a whole match."""
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    """A JSON schema (draft 2020-12) the argument (or the arguments) must be valid against."""

    @field_validator("min", "max", "pattern")
    @classmethod
    def _needs_an_argument(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("argument"):
            raise ValueError(f"{info.field_name} needs the argument it applies to: "
                             f"set argument (e.g. argument: amount)")
        return value

    @field_validator("max")
    @classmethod
    def _not_below_min(cls, value: float | None, info: ValidationInfo) -> float | None:
        low = info.data.get("min")
        if value is not None and low is not None and value < low:
            raise ValueError(f"max {value} is below min {low}")
        return value

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("schema_")
    @classmethod
    def _is_a_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else _valid_schema(value)

    @model_validator(mode="after")
    def _has_a_rule(self) -> ActionCheckSpec:
        rules = [self.min, self.max, self.pattern, self.schema_]
        if self.forbidden and any(rule is not None for rule in rules):
            raise ValueError("a forbidden tool needs no other rule: drop min, max, "
                             "pattern and schema, or forbidden")
        if not self.forbidden and all(rule is None for rule in rules):
            raise ValueError("an action check needs a rule: forbidden, min, max, "
                             "pattern or schema")
        return self


def _valid_schema(value: dict[str, Any]) -> dict[str, Any]:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as exc:
        raise ValueError(f"not a valid JSON schema: {exc.message}") from None
    return value


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
    | Annotated[CustomCheckSpec, Tag("custom")]
    | Annotated[ActionCheckSpec, Tag("action")],
    Discriminator(_check_kind),
]
"""A hard constraint on every output of a candidate (see :mod:`shadow.candidates.constraints`)."""

CHECK_KINDS = ("regex", "pii", "required", "json_schema", "labels", "max_length", "custom",
               "action")


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
    workers: int = Field(1, ge=1, le=64)
    """Processes the callable runs in: 1 runs it in this process; more run it on as many
    cores, started once when the candidate opens. Not part of its version."""

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


class FunctionSpec(Spec):
    """A function the model may call, as the chat-completions API describes one."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    """A JSON schema (draft 2020-12) of the arguments; the model's arguments are
    validated against it."""
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _is_a_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _valid_schema(value)


class ToolSpec(Spec):
    """An OpenAI tool definition: ``{type: function, function: {name, parameters}}``."""

    type: Literal["function"] = "function"
    function: FunctionSpec


class McpServerSpec(Spec):
    """Where an agent's tools come from: a command run over stdio, or a streamable HTTP URL."""

    command: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
    url: Annotated[str, Field(pattern=URL_PATTERN)] | None = None

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSpec:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of command (stdio) and url (streamable HTTP)")
        return self


ToolChoice = str | dict[str, Any]
"""``auto``, ``required``, ``none``, or the one tool the model must call, by name or in
the API's object form ``{type: function, function: {name: …}}``."""


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
    tools: list[ToolSpec] | McpServerSpec = Field(default_factory=list)
    """Functions the model may call, or the MCP server whose tools (``tools/list``, read
    when the candidate opens) are offered as functions. The model's calls become proposed
    actions (``actions`` of the output), checked against each function's parameters;
    none is executed, not even a server's read-only tools."""
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("tools")
    @classmethod
    def _names_are_unique(cls, value: list[ToolSpec] | McpServerSpec
                          ) -> list[ToolSpec] | McpServerSpec:
        if isinstance(value, McpServerSpec):
            return value
        names = [tool.function.name for tool in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"tool names must be unique; repeated: {', '.join(repeated)}")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _chooses_an_offered_tool(cls, value: ToolChoice | None,
                                 info: ValidationInfo) -> ToolChoice | None:
        if value is None or "tools" not in info.data:  # bad tools are reported already
            return value
        if isinstance(info.data["tools"], McpServerSpec):
            # The server says which tools there are when the candidate opens.
            if chosen_tool(value) == "":
                raise ValueError("expected auto, required, none, the name of a tool, or "
                                 "{type: function, function: {name: <a tool>}}")
            return value
        offered = [tool.function.name for tool in info.data["tools"]]
        if not offered:
            raise ValueError("tool_choice needs tools to choose from: set tools")
        named = chosen_tool(value)
        if named == "":
            raise ValueError("expected auto, required, none, the name of a tool, or "
                             "{type: function, function: {name: <a tool>}}")
        if named is not None and named not in offered:
            raise ValueError(f"names the tool {named!r}, which is not among the tools "
                             f"({', '.join(offered)})")
        return value

    @field_validator("parallel_tool_calls")
    @classmethod
    def _needs_tools(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if value is not None and not info.data.get("tools"):
            raise ValueError("parallel_tool_calls needs tools: set tools")
        return value

    def _default_name(self) -> str:
        return f"{self.model}@{self.base_url}"


def chosen_tool(choice: ToolChoice) -> str | None:
    """The tool a ``tool_choice`` names; None for ``auto``, ``required`` and ``none``, and
    ``""`` for what is not a tool choice at all."""
    if isinstance(choice, dict):
        function = choice.get("function")
        if (set(choice) != {"type", "function"} or choice["type"] != "function"
                or not isinstance(function, dict) or set(function) != {"name"}):
            return ""
        name = function["name"]
        return name if isinstance(name, str) else ""
    return None if choice in ("auto", "required", "none") else choice


class ChatModelSpec(Spec):
    """An agent's model step as an OpenAI-compatible chat-completions endpoint
    (``shadow.candidates.agent_chat``): every tool of the MCP server is offered as a
    function, and the model's ``tool_calls`` are the agent's calls."""

    base_url: Annotated[str, Field(pattern=URL_PATTERN)]
    """E.g. ``https://api.openai.com/v1``; ``/chat/completions`` is appended."""
    model: str = Field(min_length=1)
    api_key_env: str | None = "OPENAI_API_KEY"
    """The environment variable holding the API key, sent as a bearer token."""
    temperature: float | None = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    parallel_tool_calls: bool | None = None
    timeout_s: float = Field(60.0, gt=0.0)
    """Per model call."""
    max_attempts: int = Field(3, ge=1, le=20)
    """Attempts per model call in all; connection errors, timeouts, 408, 429 and 5xx are
    retried."""
    prices: PricesSpec | None = None


class AgentCandidateSpec(_CandidateBase):
    """A multi-step agent whose tools come from an MCP server (``shadow.candidates.agent``).

    Only the tools in ``allow`` that the server does not mark as writing are executed in
    shadow; the first call to any other tool ends the run as a proposed action.
    """

    kind: Literal["agent"]
    model: CallablePath | ChatModelSpec
    """The model step: a chat-completions endpoint, or ``module:function`` called as
    ``(messages, tools) -> Turn``."""
    tools: McpServerSpec
    allow: list[str] = Field(default_factory=list)
    """Tools safe to run in shadow (lookups)."""
    system: str | None = None
    user: str
    max_steps: int = Field(8, ge=1, le=1_000)
    max_calls: int = Field(16, ge=1, le=10_000)
    call_timeout_s: float = Field(10.0, gt=0)
    connect_timeout_s: float = Field(30.0, gt=0)

    def _default_name(self) -> str:
        if isinstance(self.model, ChatModelSpec):
            return f"agent:{self.model.model}@{self.model.base_url}"
        return self.model


def _candidate_kind(raw: Any) -> str:
    # Configurations written before there was more than one kind have no `kind`.
    if isinstance(raw, dict):
        return str(raw.get("kind", "callable"))
    return str(getattr(raw, "kind", "callable"))


CandidateSpec = Annotated[
    Annotated[CallableCandidateSpec, Tag("callable")]
    | Annotated[HttpCandidateSpec, Tag("http")]
    | Annotated[ChatCandidateSpec, Tag("chat")]
    | Annotated[AgentCandidateSpec, Tag("agent")],
    Discriminator(_candidate_kind),
]
