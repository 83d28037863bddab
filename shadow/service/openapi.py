"""The OpenAPI 3.1 description of the control API, and the vocabulary it shares.

:func:`openapi` describes every route :class:`shadow.service.api.ApiServer` serves
(it is also served at ``/openapi.json``). Each operation names the scope a
token needs for it (``x-scope``, and the role in its ``security`` requirement);
operations that need no token have an empty ``security``. The server's guard
enforces what :func:`required_scopes` and :func:`public_operations` read from
this description, so a client reading it knows what each token may call.
The route vocabulary both sides use (the rollout commands, the report formats,
the dead-letter limit) is defined here, so the server depends on this module
and not the other way round.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from rollout.state import Action
from shadow.config.daemon import Scope
from shadow.store.backup import NAME_MAX as BACKUP_NAME_MAX

COMMANDS = tuple(a.value for a in (Action.PROMOTE, Action.PAUSE, Action.RESUME, Action.ROLLBACK,
                                   Action.RESTART, Action.ABORT))
REPORT_TYPES = {"json": "application/json", "markdown": "text/markdown",
                "table": "text/plain", "html": "text/html"}
DEAD_LETTERS_MAX = 1000


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


_ERROR = {"description": "an error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Error"}}}}
_ANY = {"type": "object", "additionalProperties": True}


def _responses(ok: str, schema: dict[str, Any] | None = None, *codes: int,
               media: str = "application/json") -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": ok, "content": {
        media: {"schema": schema or _ANY}}}}
    for code in codes:
        out[str(code)] = _ERROR
    return out


def _op(summary: str, responses: dict[str, Any], *, scope: Scope | None,
        **extra: Any) -> dict[str, Any]:
    """One operation; ``scope`` is what a token needs for it, ``None`` for no token at all."""
    op: dict[str, Any] = {"summary": summary, **extra}
    if scope is None:
        op["security"] = []
    else:
        op["security"] = [{"bearer": [scope.value]}]
        op["x-scope"] = scope.value
        responses = {**responses, "401": {**_ERROR, "description": "no token"},
                     "403": {**_ERROR, "description": f"an unknown token, or one without "
                                                      f"the scope {scope.value}"}}
    op["responses"] = responses
    return op


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


def openapi(*, metrics_token_required: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route :class:`shadow.service.api.ApiServer` serves."""
    fmt = _query("format", "report format (default json)",
                 {"type": "string", "enum": list(REPORT_TYPES), "default": "json"})
    report_media = {media: {"schema": _ANY if media == "application/json" else {"type": "string"}}
                    for media in REPORT_TYPES.values()}
    report_ok = {"200": {"description": "the owner report", "content": report_media},
                 "400": _ERROR}
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
                _responses("alive"), scope=None)},
            "/ready": {"get": _op(
                "readiness: running, not stopping, a source up; each source up or away",
                {**_responses("ready", {"$ref": "#/components/schemas/Readiness"}),
                 "503": {"description": "not ready, with the checks", "content": {
                     "application/json": {"schema": {
                         "$ref": "#/components/schemas/Readiness"}}}}},
                scope=None)},
            "/openapi.json": {"get": _op("this description", _responses("OpenAPI 3.1"),
                                         scope=None)},
            "/rollout": {"get": _op(
                "rollout status with gate evidence (as `shadow rollout status --format json`)",
                _responses("status", None, 400), scope=Scope.READ)},
            "/rollout/history": {"get": _op(
                "every transition, oldest first, with the token, the claimed actor, the "
                "reason and the evidence",
                _responses("transitions", {"type": "array", "items": _ANY}, 400),
                scope=Scope.READ,
                parameters=[_query("limit", "only the last N",
                                   {"type": "integer", "minimum": 1})])},
            "/rollout/{action}": {"post": _op(
                "a person's command: promote, pause, resume, rollback, restart or abort",
                {**_responses("the transition made and the new state",
                              {"$ref": "#/components/schemas/CommandResult"}, 400, 404),
                 "409": {**_ERROR, "description": "refused: unsafe or meaningless now; "
                                                  "nothing changed"}},
                scope=Scope.OPERATE,
                parameters=[{"name": "action", "in": "path", "required": True,
                             "schema": {"type": "string", "enum": list(COMMANDS)}}],
                requestBody={"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Command"}}}})},
            "/reports": {"post": _op(
                "generate the owner report", report_ok, scope=Scope.READ,
                requestBody={"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "format": {"type": "string", "enum": list(REPORT_TYPES),
                                   "default": "json"}}}}}})},
            "/report": {"get": _op("the owner report (as POST /reports)", report_ok,
                                   scope=Scope.READ, parameters=[fmt])},
            "/dead-letters": {"get": _op(
                "the most recent dead letters, newest first, with their raw text",
                _responses("dead letters", {"type": "object", "properties": {
                    "dead_letters": {"type": "array", "items": _ANY}}}, 400),
                scope=Scope.READ,
                parameters=[_query("limit", "how many (default 20)",
                                   {"type": "integer", "minimum": 1,
                                    "maximum": DEAD_LETTERS_MAX, "default": 20})])},
            "/backup": {"post": _op(
                "copy the store, as of one moment, to a new file in the daemon's backup "
                "folder (daemon.jobs.backup_dir)",
                {**_responses("the copy", {"$ref": "#/components/schemas/Backup"}, 400),
                 "409": {**_ERROR, "description": "a file of that name exists; nothing "
                                                  "was written"}},
                scope=Scope.ADMIN,
                requestBody={"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"name": {
                        "type": "string", "minLength": 1, "maxLength": BACKUP_NAME_MAX,
                        "description": "a new file name in the backup folder: no path "
                                       "separator or '..', not starting with '.', at most "
                                       f"{BACKUP_NAME_MAX} bytes in UTF-8"}}}}}})},
            "/metrics": {"get": _op(
                "Prometheus metrics (text exposition format 0.0.4)",
                _responses("metrics", {"type": "string"}, media="text/plain"),
                scope=Scope.READ if metrics_token_required else None)},
        },
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "one of the daemon's tokens (daemon.api.tokens, "
                               "daemon.api.tokens_file, or the one in SHADOW_API_TOKEN); "
                               "missing → 401, unknown or without the operation's scope → "
                               "403"}},
            "schemas": {
                "Backup": {
                    "type": "object",
                    "required": ["path", "rows", "size_bytes", "seconds", "taken_at"],
                    "properties": {
                        "path": {"type": "string"},
                        "rows": {"type": "object", "description": "rows per table",
                                 "additionalProperties": {"type": "integer"}},
                        "size_bytes": {"type": "integer"},
                        "seconds": {"type": "number"},
                        "taken_at": {"type": "string", "format": "date-time",
                                     "description": "later arrivals are not in the copy"}}},
                "Error": {"type": "object", "required": ["error"],
                          "properties": {"error": {"type": "string"}}},
                "Readiness": {"type": "object", "required": ["ready", "checks"],
                              "properties": {"ready": {"type": "boolean"}, "checks": _ANY}},
                "Command": {
                    "type": "object", "required": ["actor"], "additionalProperties": False,
                    "properties": {
                        "actor": {"type": "string", "description": "who gives the command"},
                        "reason": {"type": "string",
                                   "description": "for the audit trail; required for "
                                                  "rollback and abort"},
                        "full": {"type": "boolean", "default": False,
                                 "description": "promote: to the last step at once"},
                        "force": {"type": "boolean", "default": False,
                                  "description": "promote although the gates have not "
                                                 "passed (audited)"}}},
                "CommandResult": {"type": "object", "required": ["transition", "state"],
                                  "properties": {"transition": {"type": "string"},
                                                 "state": _ANY}},
            },
        },
    }
