"""The OpenAPI 3.1 description of the control API, and the vocabulary it shares.

:func:`openapi` describes every route :class:`shadow.api.ApiServer` serves
(it is also served at ``/openapi.json``); :func:`public_operations` reads from
it which operations need no token, which is what the server's guard allows.
The route vocabulary both sides use (the rollout commands, the report formats,
the dead-letter limit) is defined here, so the server depends on this module
and not the other way round.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from rollout.state import Action

COMMANDS = tuple(a.value for a in (Action.PROMOTE, Action.PAUSE, Action.RESUME, Action.ROLLBACK,
                                   Action.RESTART, Action.ABORT))
REPORT_TYPES = {"json": "application/json", "markdown": "text/markdown",
                "table": "text/plain", "html": "text/html"}
DEAD_LETTERS_MAX = 1000


def public_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """``(METHOD, path)`` of every operation the description marks as needing no token."""
    return {(method.upper(), path) for path, item in doc["paths"].items()
            for method, op in item.items() if op.get("security") == []}


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


def _op(summary: str, responses: dict[str, Any], *, public: bool = False,
        **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, **extra}
    if public:
        op["security"] = []
    else:
        responses = {**responses, "401": _ERROR, "403": _ERROR}
    op["responses"] = responses
    return op


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


def openapi(*, metrics_token_required: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route :class:`shadow.api.ApiServer` serves."""
    fmt = _query("format", "report format (default json)",
                 {"type": "string", "enum": list(REPORT_TYPES), "default": "json"})
    report_media = {media: {"schema": {"type": "string"}} for media in REPORT_TYPES.values()}
    report_ok = {"200": {"description": "the owner report, as text", "content": report_media},
                 "400": _ERROR}
    return {
        "openapi": "3.1.0",
        "info": {"title": "shadow daemon control API", "version": _version(),
                 "description": "Status and commands of a running `shadow run` daemon."},
        "security": [{"bearer": []}],
        "paths": {
            "/health": {"get": _op(
                "liveness: the process answers (details only with a valid token)",
                _responses("alive"), public=True)},
            "/ready": {"get": _op(
                "readiness: running, not stopping, a source up; each source up or away",
                {**_responses("ready", {"$ref": "#/components/schemas/Readiness"}),
                 "503": {"description": "not ready, with the checks", "content": {
                     "application/json": {"schema": {
                         "$ref": "#/components/schemas/Readiness"}}}}},
                public=True)},
            "/openapi.json": {"get": _op("this description", _responses("OpenAPI 3.1"),
                                         public=True)},
            "/rollout": {"get": _op(
                "rollout status with gate evidence (as `shadow rollout status --format json`)",
                _responses("status", None, 400))},
            "/rollout/history": {"get": _op(
                "every transition, oldest first, with actor, reason and evidence",
                _responses("transitions", {"type": "array", "items": _ANY}, 400),
                parameters=[_query("limit", "only the last N",
                                   {"type": "integer", "minimum": 1})])},
            "/rollout/{action}": {"post": _op(
                "a person's command: promote, pause, resume, rollback, restart or abort",
                {**_responses("the transition made and the new state",
                              {"$ref": "#/components/schemas/CommandResult"}, 400, 404),
                 "409": {**_ERROR, "description": "refused: unsafe or meaningless now; "
                                                  "nothing changed"}},
                parameters=[{"name": "action", "in": "path", "required": True,
                             "schema": {"type": "string", "enum": list(COMMANDS)}}],
                requestBody={"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Command"}}}})},
            "/reports": {"post": _op(
                "generate the owner report", report_ok,
                requestBody={"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "format": {"type": "string", "enum": list(REPORT_TYPES),
                                   "default": "json"}}}}}})},
            "/report": {"get": _op("the owner report (as POST /reports)", report_ok,
                                   parameters=[fmt])},
            "/dead-letters": {"get": _op(
                "the most recent dead letters, newest first, with their raw text",
                _responses("dead letters", {"type": "object", "properties": {
                    "dead_letters": {"type": "array", "items": _ANY}}}, 400),
                parameters=[_query("limit", "how many (default 20)",
                                   {"type": "integer", "minimum": 1,
                                    "maximum": DEAD_LETTERS_MAX, "default": 20})])},
            "/backup": {"post": _op(
                "copy the store, as of one moment, to a new file on the daemon's machine",
                _responses("the copy", {"$ref": "#/components/schemas/Backup"}, 400),
                requestBody={"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["path"], "additionalProperties": False,
                    "properties": {"path": {
                        "type": "string",
                        "description": "absolute path of a file that does not exist yet"}}}}}})},
            "/metrics": {"get": _op(
                "Prometheus metrics (text exposition format 0.0.4)",
                _responses("metrics", {"type": "string"}, media="text/plain"),
                public=not metrics_token_required)},
        },
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "the daemon's token (SHADOW_API_TOKEN); missing → 401, "
                               "wrong → 403"}},
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
