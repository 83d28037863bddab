"""The bodies of the control API: what each route accepts and what it answers.

:class:`~shadow.service.api.ApiServer` validates every request body with these
models and builds every JSON answer through them; :func:`shadow.service.openapi.openapi`
describes them with ``model_json_schema`` (OpenAPI 3.1 is JSON Schema 2020-12). What a
schema says is what the server checks, so a client reading ``/openapi.json`` knows
what will be refused before it asks.

    body = Command.model_validate({"actor": "dana"}, context={"action": "pause"})
    answer = CommandResult.model_validate(control.rollout_command(...))

Request bodies are strict and closed (``extra="forbid"``). Answers are closed too: a
control that starts answering a field the description does not name fails here, as a
500 with the details in the daemon's log, instead of drifting away from the description.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from rollout.gates import Phase
from rollout.state import Action, Status
from shadow.core.models import RecordKind
from shadow.store.backup import NAME_MAX

COMMANDS = tuple(a.value for a in (Action.PROMOTE, Action.PAUSE, Action.RESUME, Action.ROLLBACK,
                                   Action.RESTART, Action.ABORT))
REASON_REQUIRED = (Action.ROLLBACK.value, Action.ABORT.value)
REPORT_TYPES = {"json": "application/json", "markdown": "text/markdown",
                "table": "text/plain", "html": "text/html"}
DEAD_LETTERS_MAX = 1000
REVIEWS_MAX = 1000

_NOT_BLANK = r"\S"
# What shadow.store.backup.check_name accepts: not starting with '.' or '~', no drive
# letter, no '..', no separator or control character anywhere, something not blank.
_BACKUP_NAME = (r"^(?![.~])(?!.:)(?![\s\S]*(?:\.\.|[/\\\x00-\x1f\x7f]))[\s\S]*\S")


def _named(value: str) -> str:
    if not re.search(_NOT_BLANK, value):
        raise PydanticCustomError("blank", "the name of the person giving the command is "
                                           "required")
    return value


def _reasoned(value: str, info: ValidationInfo) -> str:
    if not re.search(_NOT_BLANK, value):
        action = (info.context or {}).get("action", "this command")
        raise PydanticCustomError("blank", "{action} needs a reason, for the audit trail",
                                  {"action": action})
    return value


Actor = Annotated[str, AfterValidator(_named), Field(
    description="who gives the command, as they claim (the audit trail keeps the token's "
                "name beside it)", json_schema_extra={"pattern": _NOT_BLANK})]
Reason = Annotated[str, AfterValidator(_reasoned), Field(
    description="why, for the audit trail", json_schema_extra={"pattern": _NOT_BLANK})]
ReportFormat = Literal["json", "markdown", "table", "html"]


class _Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- requests ----------------------------------------------------------------------------


class Command(_Request):
    """The body of ``POST /rollout/{pause,resume,restart}``; validated with the action in
    the context (``context={"action": "pause"}``) so that refusals name it."""

    actor: Actor
    reason: str | None = Field(None, description="for the audit trail (default: the action "
                                                 "and the actor)")
    full: Literal[False] = Field(False, description="only promote takes it")
    force: Literal[False] = Field(False, description="only promote takes it")

    @field_validator("full", "force", mode="before")
    @classmethod
    def _promote_only(cls, value: object, info: ValidationInfo) -> object:
        if value is True:
            action = (info.context or {}).get("action", "this command")
            raise PydanticCustomError("promote_only", "only promote takes it, not {action}",
                                      {"action": action})
        if value is not False:  # Literal[False] alone would take 0, which equals False
            raise PydanticCustomError("bool_type", "Input should be false")
        return value


class ReasonedCommand(Command):
    """The body of ``POST /rollout/{rollback,abort}``: a reason is required."""

    reason: Reason  # required here, optional for the others


class PromoteCommand(_Request):
    """The body of ``POST /rollout/promote``."""

    actor: Actor
    reason: str | None = Field(None, description="for the audit trail (default: the action "
                                                 "and the actor)")
    full: bool = Field(False, description="to the last step at once")
    force: bool = Field(False, description="although the gates have not passed (audited)")


COMMAND_BODIES: dict[str, type[Command] | type[PromoteCommand]] = {
    action: (PromoteCommand if action == Action.PROMOTE.value
             else ReasonedCommand if action in REASON_REQUIRED else Command)
    for action in COMMANDS}
"""The body each rollout command takes."""


class ReportRequest(_Request):
    """The body of ``POST /reports`` (and the query of ``GET /report``)."""

    format: ReportFormat = Field("json", description="json is the report as data; "
                                                     "markdown and html the owners' views; "
                                                     "table the terminal summary")


class BackupRequest(_Request):
    """The body of ``POST /backup``."""

    name: str = Field(
        min_length=1, max_length=NAME_MAX,
        description=f"a new file name in the backup folder: no path separator or '..', not "
                    f"starting with '.' or '~', no control character, at most {NAME_MAX} "
                    f"bytes in UTF-8",
        json_schema_extra={"pattern": _BACKUP_NAME})


def _not_null(value: Any) -> Any:
    if value is None:
        raise PydanticCustomError("edit_output", "an edit needs the edited output")
    return value


class _Verdict(_Request):
    reviewer: str | None = Field(None, description="who decided (default: the token's name)")


class Decide(_Verdict):
    """Approve the proposal as it is (its output is published), or reject it (nothing is)."""

    verdict: Literal["approve", "reject", "approved", "rejected"]
    output: Any = Field(None, description="ignored: an approve publishes the proposal's output")


class Edit(_Verdict):
    """Publish the reviewer's output instead of the proposal's."""

    verdict: Literal["edit", "edited"]
    output: Annotated[Any, AfterValidator(_not_null)] = Field(
        description="the edited output, published as it is",
        json_schema_extra={"not": {"type": "null"}})


class VerdictRequest(RootModel[Annotated[Decide | Edit, Field(discriminator="verdict")]]):
    """The body of ``POST /reviews/{review_id}/verdict``: approve, edit (with the edited
    output) or reject."""


# -- answers -----------------------------------------------------------------------------


class Error(_Answer):
    """Every refusal and failure."""

    error: str


class Health(_Answer):
    """``ok`` alone without a valid token; the daemon's details with one."""

    status: Literal["ok", "alive"]
    pid: int | None = None
    started_at: str | None = Field(None, description="ISO 8601")


class SourceState(_Answer):
    name: str
    state: Literal["up", "away"]
    reason: str | None = None
    since: str | None = Field(None, description="ISO 8601: away since")
    failures: int = 0
    retry_in_s: float | None = None


class WorkerHeard(_Answer):
    name: str = Field(description="how the worker names itself (shadow worker --name)")
    last_heard: str = Field(description="ISO 8601: when the recorder last stored a record "
                            "this worker handed over")


class ReadinessChecks(_Answer):
    ready: bool | None = None
    reasons: list[str] = Field(default_factory=list, description="why not ready")
    sources: list[SourceState] = Field(default_factory=list)
    away: list[str] = Field(default_factory=list, description="the sources that are away")
    webhooks: str | None = Field(None, description="the webhook server's URL, if any")
    workers: list[WorkerHeard] = Field(
        default_factory=list, description="candidate workers a recorder (shadow run --role "
        "recorder) has stored records from since it started, the latest first")


class Readiness(_Answer):
    ready: bool
    checks: ReadinessChecks


class GateCheck(_Answer):
    name: str
    phase: Phase
    detail: str
    value: float | None = None
    threshold: float | None = None
    low: float | None = None
    high: float | None = None
    n: int | None = None


class GateEvaluation(_Answer):
    phase: Phase
    checks: list[GateCheck]


class Transition(_Answer):
    """One audited transition of the rollout (``rollout.audit.AuditRecord.as_dict``)."""

    revision: int
    at: str = Field(description="ISO 8601")
    actor: str = Field(description="as the caller claimed")
    token: str | None = Field(None, description="the name of the token the command came "
                                                "with, which the daemon checked")
    action: Action
    from_step: int | None
    to_step: int
    from_status: Status | None
    to_status: Status
    percent: float
    reason: str
    evidence: dict[str, Any]


class RolloutStatus(_Answer):
    """What ``shadow rollout status --format json`` prints (``rollout.views.status_view``)."""

    rollout: str
    candidate: str
    version: str | None
    step: int
    steps: int
    percent: float
    status: Status
    live: bool
    live_share: float
    holdout: float
    review: float
    step_started_at: str = Field(description="ISO 8601")
    promotion: GateEvaluation | None
    rollback: GateEvaluation | None
    stored_evaluations: dict[str, Any]
    last_transition: Transition | None
    evidence: dict[str, Any] | None = Field(
        None, description="what the gates counted: units, label window, label delays, "
                          "the rollback detector, each tier's detector")
    warnings: list[str]
    tiers: dict[str, Any] | None = Field(
        None, description="the tier policy: its rules in order, the default, the label path, "
                          "and the share of each tier among the latest predictions; null "
                          "without one")


class CommandState(_Answer):
    step: int
    percent: float | None = None
    status: Status | None = None


class CommandResult(_Answer):
    transition: str = Field(description="the transition made, as `shadow rollout history` "
                                        "shows it")
    state: CommandState


class Review(_Answer):
    """A live proposal waiting for its verdict (``shadow.store.verdicts.open_reviews``)."""

    review_id: str
    event_id: str
    key: str
    candidate: str
    version: str | None
    rollout: str
    step: int | None
    proposed_at: str = Field(description="ISO 8601")
    published_at: str | None = Field(description="ISO 8601: when the review sink took it")
    proposal: dict[str, Any] = Field(description="the message the review sink received: the "
                                                 "output, confidence, actions and evidence")


class Reviews(_Answer):
    reviews: list[Review]


class ReviewVerdict(_Answer):
    """The verdict a review has: the one just given, or the same one given before."""

    review_id: str
    verdict: Literal["approve", "edit", "reject"]
    status: Literal["approved", "edited", "rejected"]
    output: Any = Field(description="what is published: the proposal's output, the edit, or "
                                    "null for a reject")
    reviewer: str | None
    decided_at: str = Field(description="ISO 8601")
    source: str = Field(description="where the verdict came from: api:<token name>, or a "
                                    "verdict source")
    published_at: str | None = Field(description="ISO 8601: when the action sink took it")


class DeadLetter(_Answer):
    kind: RecordKind
    source: str
    position: str
    reason: str
    raw: str
    received_at: str = Field(description="ISO 8601")


class DeadLetters(_Answer):
    dead_letters: list[DeadLetter]


class Backup(_Answer):
    path: str
    rows: dict[str, int] = Field(description="rows per table")
    size_bytes: int
    seconds: float
    taken_at: str = Field(description="ISO 8601; later arrivals are not in the copy")


class ShownEvent(_Answer):
    event_id: str
    key: str
    occurred_at: str = Field(description="ISO 8601")
    payload: Any = Field(description="the event's payload, report.redact paths as "
                                     "[redacted]")


class ShownToolCall(_Answer):
    """One tool call an agent executed (table ``tool_calls``)."""

    ordinal: int | None = Field(description="its place in the output's list")
    step: int | None
    call_id: str | None
    tool: str | None
    arguments: Any
    result: Any = Field(description="as stored: JSON, cut to 8192 characters")
    latency_ms: float | None
    error: str | None
    problem: str | None = Field(description="why the element could not be read as a call")


class ShownPrediction(_Answer):
    """A candidate's prediction with the request it sent and the tool calls it executed."""

    candidate: str
    version: str | None
    mode: str
    predicted_at: str = Field(description="ISO 8601")
    model: str | None = Field(description="the model that answered")
    asked_model: str | None = Field(description="the model the request named")
    output: Any
    error_kind: str | None
    error_type: str | None
    error_message: str | None
    violations: list[str]
    latency_ms: float
    status: int | None
    attempts: int
    prompt_tokens: int | None
    completion_tokens: int | None
    cost: float | None
    request_hash: str | None = Field(description="SHA-256 of the request's canonical JSON")
    request: Any = Field(description="the exact request sent (messages after templating, "
                                     "tools, parameters, model; never headers); null for a "
                                     "candidate that keeps none")
    tool_calls: list[ShownToolCall]


class EventView(_Answer):
    """What ``shadow show EVENT_ID --format json`` prints, always redacted
    (``shadow.reports.event_view``)."""

    event: ShownEvent
    predictions: list[ShownPrediction]


REQUESTS: tuple[type[BaseModel], ...] = (Command, ReasonedCommand, PromoteCommand,
                                         ReportRequest, BackupRequest, VerdictRequest)
ANSWERS: tuple[type[BaseModel], ...] = (Error, Health, Readiness, RolloutStatus, Transition,
                                        CommandResult, DeadLetters, Backup, EventView, Reviews,
                                        ReviewVerdict)
