"""The OpenAPI 3.1 description of the control API, generated from the models it validates with.

:func:`openapi` describes every route :class:`shadow.service.api.ApiServer` serves
(it is also served at ``/openapi.json``). The schemas of the bodies are those of
:mod:`shadow.service.api_models`, written by ``model_json_schema`` (OpenAPI 3.1 is
JSON Schema 2020-12): the server validates requests and builds answers with the
same models, so the description cannot drift from what it checks. Each rollout
command is an operation of its own, since each takes its own body.

Each operation names the scope a token needs for it (``x-scope``, and the role in its
``security`` requirement); operations that need no token have an empty ``security``.
The server's guard enforces what :func:`required_scopes` and :func:`public_operations`
read from this description, so a client reading it knows what each token may call.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shadow.config.daemon import Scope
from shadow.service.api_models import (
    ANSWERS,
    COMMAND_BODIES,
    COMMANDS,
    DEAD_LETTERS_MAX,
    REPORT_TYPES,
    REQUESTS,
    REVIEWS_MAX,
    Backup,
    BackupRequest,
    CommandResult,
    DeadLetters,
    Error,
    EventView,
    Health,
    Readiness,
    ReportRequest,
    Reviews,
    ReviewVerdict,
    RolloutStatus,
    Transition,
    VerdictRequest,
)

__all__ = ["COMMANDS", "DEAD_LETTERS_MAX", "REPORT_TYPES", "openapi", "public_operations",
           "required_scopes"]

_REF = "#/components/schemas/{model}"


def public_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """``(METHOD, path)`` of every operation the description marks as needing no token."""
    return {(method.upper(), path) for path, item in doc["paths"].items()
            for method, op in item.items() if op.get("security") == []}


def required_scopes(doc: dict[str, Any]) -> dict[tuple[str, str], Scope]:
    """``(METHOD, path)`` of every operation that needs a token, with the scope it needs."""
    return {(method.upper(), path): Scope(op["x-scope"]) for path, item in doc["paths"].items()
            for method, op in item.items() if "x-scope" in op}


def _version() -> str:
    try:
        return metadata.version("shadow-rollout")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _schemas() -> dict[str, Any]:
    """``components.schemas``: every model's JSON Schema, requests as they are validated and
    answers as they are serialised, each under its class name."""
    _, found = models_json_schema(
        [*((m, "validation") for m in REQUESTS), *((m, "serialization") for m in ANSWERS)],
        ref_template=_REF)
    schemas: dict[str, Any] = found.get("$defs", {})
    return schemas


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(description: str, model: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    schema = model if isinstance(model, dict) else _ref(model)
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(description, Error)


def _op(summary: str, ok: dict[str, Any], *, scope: Scope | None,
        errors: dict[int, str] | None = None, also: dict[str, Any] | None = None,
        **extra: Any) -> dict[str, Any]:
    """One operation; ``scope`` is what a token needs for it, ``None`` for no token at all.

    ``errors`` are the refusals it may answer (``{"error": …}``), ``also`` other answers.
    """
    responses: dict[str, Any] = {"200": ok, **(also or {})}
    for code, description in (errors or {}).items():
        responses[str(code)] = _error(description)
    op: dict[str, Any] = {"summary": summary, **extra}
    if scope is None:
        op["security"] = []
    else:
        op["security"] = [{"bearer": [scope.value]}]
        op["x-scope"] = scope.value
        responses["401"] = _error("no token")
        responses["403"] = _error(f"an unknown token, or one without the scope {scope.value}")
    responses["500"] = _error("unexpected; the daemon's log has the details")
    op["responses"] = responses
    return op


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


def _body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(model)}}}


def _report_ok() -> dict[str, Any]:
    """The owner report: data as JSON, the views as text, by the format asked for."""
    content = {media: {"schema": {"type": "object", "description": "the report as data"}
                       if media == "application/json" else {"type": "string"}}
               for media in REPORT_TYPES.values()}
    return {"description": "the owner report, in the content type of its format: "
                           + ", ".join(f"{f} as {m}" for f, m in REPORT_TYPES.items()),
            "content": content}


def _commands() -> dict[str, Any]:
    paths = {}
    for action, model in COMMAND_BODIES.items():
        paths[f"/rollout/{action}"] = {"post": _op(
            f"a person's command: {action}",
            _json("the transition made and the new state", CommandResult),
            scope=Scope.OPERATE,
            errors={400: "a malformed body, or no rollout configured",
                    409: "refused: unsafe or meaningless now; nothing changed"},
            requestBody=_body(model))}
    return paths


def openapi(*, metrics_token_required: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route :class:`shadow.service.api.ApiServer` serves."""
    schemas = _schemas()
    fmt = _query("format", "report format (default json)",
                 {"type": "string", "enum": list(REPORT_TYPES), "default": "json"})
    return {
        "openapi": "3.1.0",
        "info": {"title": "shadow daemon control API", "version": _version(),
                 "description": "Status and commands of a running `shadow run` daemon. "
                                "Each operation needs a token with the scope in its "
                                "`x-scope`: read < operate < admin, each including the ones "
                                "before it."},
        "security": [{"bearer": []}],
        "paths": {
            "/health": {"get": _op(
                "liveness: the process answers (details only with a valid token)",
                _json("alive", Health), scope=None)},
            "/ready": {"get": _op(
                "readiness: running, not stopping, a source up; each source up or away",
                _json("ready", Readiness), scope=None,
                also={"503": _json("not ready, with the checks", Readiness)})},
            "/openapi.json": {"get": _op("this description",
                                         _json("OpenAPI 3.1", {"type": "object"}),
                                         scope=None)},
            "/rollout": {"get": _op(
                "rollout status with gate evidence (as `shadow rollout status --format json`)",
                _json("status", RolloutStatus), scope=Scope.READ,
                errors={400: "no rollout configured"})},
            "/rollout/history": {"get": _op(
                "every transition, oldest first, with the token, the claimed actor, the "
                "reason and the evidence",
                _json("transitions", {"type": "array", "items": _ref(Transition)}),
                scope=Scope.READ, errors={400: "a bad limit, or no rollout configured"},
                parameters=[_query("limit", "only the last N",
                                   {"type": "integer", "minimum": 1})])},
            **_commands(),
            "/reports": {"post": _op(
                "generate the owner report", _report_ok(), scope=Scope.READ,
                errors={400: "a malformed body or an unknown format"},
                requestBody=_body(ReportRequest, required=False))},
            "/report": {"get": _op("the owner report (as POST /reports)", _report_ok(),
                                   scope=Scope.READ, errors={400: "an unknown format"},
                                   parameters=[fmt])},
            "/dead-letters": {"get": _op(
                "the most recent dead letters, newest first, with their raw text",
                _json("dead letters", DeadLetters), scope=Scope.READ,
                errors={400: "a bad limit"},
                parameters=[_query("limit", "how many (default 20)",
                                   {"type": "integer", "minimum": 1,
                                    "maximum": DEAD_LETTERS_MAX, "default": 20})])},
            "/events/{event_id}": {"get": _op(
                "one event: each candidate's prediction, the exact request it sent and the "
                "tool calls it executed, with the payload's report.redact fields redacted "
                "wherever they show (as `shadow show --format json`)",
                _json("the event and its predictions", EventView), scope=Scope.READ,
                errors={404: "no such event, or no prediction of the candidate asked for"},
                parameters=[
                    {"name": "event_id", "in": "path", "required": True,
                     "description": "the event's id", "schema": {"type": "string"}},
                    _query("candidate", "only this candidate's predictions",
                           {"type": "string"})])},
            "/reviews": {"get": _op(
                "live proposals waiting for a verdict, oldest first, with their evidence",
                _json("open reviews", Reviews), scope=Scope.READ,
                errors={400: "a bad limit or status"},
                parameters=[
                    _query("status", "which reviews (only open ones are listed)",
                           {"type": "string", "enum": ["open"], "default": "open"}),
                    _query("limit", "how many (default 50)",
                           {"type": "integer", "minimum": 1, "maximum": REVIEWS_MAX,
                            "default": 50})])},
            "/reviews/{review_id}/verdict": {"post": _op(
                "a reviewer's verdict on a proposal: approve publishes its output to the "
                "action sink, edit publishes the edited output, reject publishes nothing; "
                "the first verdict stands, the same one again is answered alike",
                _json("the review's verdict", ReviewVerdict), scope=Scope.OPERATE,
                errors={400: "a malformed body (an edit needs its output)",
                        404: "no review of that id",
                        409: "the review has another verdict, or was withdrawn"},
                parameters=[{"name": "review_id", "in": "path", "required": True,
                             "description": "the proposal's review_id",
                             "schema": {"type": "string"}}],
                requestBody=_body(VerdictRequest))},
            "/review": {"get": _op(
                "the review page: open proposals with approve, edit and reject; it holds no "
                "data and calls /reviews with the token entered in it",
                {"description": "the page", "content": {"text/html": {
                    "schema": {"type": "string"}}}},
                scope=None)},
            "/backup": {"post": _op(
                "copy the store, as of one moment, to a new file in the daemon's backup "
                "folder (daemon.jobs.backup_dir)",
                _json("the copy", Backup), scope=Scope.ADMIN,
                errors={400: "a malformed body or a name that is not a plain file name",
                        409: "a file of that name exists; nothing was written"},
                requestBody=_body(BackupRequest))},
            "/metrics": {"get": _op(
                "Prometheus metrics (text exposition format 0.0.4)",
                {"description": "metrics", "content": {"text/plain": {
                    "schema": {"type": "string"}}}},
                scope=Scope.READ if metrics_token_required else None)},
        },
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "one of the daemon's tokens (daemon.api.tokens, "
                               "daemon.api.tokens_file, or the one in SHADOW_API_TOKEN); "
                               "missing → 401, unknown or without the operation's scope → "
                               "403"}},
            "schemas": schemas,
        },
    }
