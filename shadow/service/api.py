"""The control API: a running daemon's status and commands over local HTTP.

:class:`ApiServer` serves a :class:`~shadow.service.control.Control` with aiohttp on
its own thread and event loop. Control calls block (the daemon runs them on its
pipeline thread), so they run in a small thread pool and the server keeps
answering ``/health`` meanwhile. The routes and their schemas are described by
:func:`shadow.service.openapi.openapi`, which is also served at ``/openapi.json``.

Authentication: every route needs ``Authorization: Bearer <token>`` except
``/health``, ``/ready``, ``/openapi.json`` and ``/review`` (and ``/metrics`` when
``metrics_token_required=False``). ``/review`` is the review page
(:mod:`shadow.service.review_page`): it holds no data, and every call it makes to
the API carries the token the person entered in it. A missing or malformed header
is answered 401 with ``WWW-Authenticate: Bearer``; a token the daemon does not know 403;
a known token without the scope the route needs (``x-scope`` in
:func:`shadow.service.openapi.openapi`, which is where each route's scope is
declared) 403 naming that scope, with ``error="insufficient_scope"`` in
``WWW-Authenticate``. A token is always required, on loopback too: any local
user, and any web page a browser on this machine opens, can reach 127.0.0.1,
and a rollback must not be one forged request away. The name of the token a
command came with is passed to the control, for the audit trail; refusals,
and every call beyond ``read``, are logged with it, as ``caller`` (a log key
naming a token is redacted as a secret).

Request bodies are validated with the models of :mod:`shadow.service.api_models`, and
every JSON answer is built through them: the description's schemas are theirs.

Status codes: 200; 400 a malformed request, a missing reason, a configuration
error; 401/403 as above; 404 an unknown route or action, or an event (or a
candidate's prediction of it) the store does not have, or a review it does not
have; 405 (with ``Allow``) a method a known route does not take; 409 a refused
transition (``rollout.state.Refused``), a backup name already taken, or a verdict
for a review that has another one or was withdrawn; 500 anything
unexpected, an answer the models refuse included (the body says only that, the
daemon's log has the traceback); 503 not ready. Error bodies are always
``{"error": "…"}``.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from rollout.state import Refused
from shadow.config.daemon import Scope
from shadow.core.errors import ConfigError, ShadowError
from shadow.reports.event_view import EventNotFound, PredictionNotFound
from shadow.service.api_models import (
    COMMAND_BODIES,
    COMMANDS,
    DEAD_LETTERS_MAX,
    REPORT_TYPES,
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
from shadow.service.api_tokens import ApiToken, Tokens
from shadow.service.control import Control
from shadow.service.openapi import openapi, public_operations, required_scopes
from shadow.service.review_page import review_page
from shadow.store.backup import BackupExists
from shadow.store.verdicts import ProblemKind, VerdictRefused

log = structlog.get_logger(__name__)

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MAX_BODY = 64 * 1024
_UNLIMITED = 2**62
_TOKEN = web.RequestKey("token", ApiToken)
_REFUSED = {ProblemKind.UNKNOWN: 404, ProblemKind.DECIDED: 409, ProblemKind.CLOSED: 409,
            ProblemKind.INVALID: 400}
"""The status of each reason a verdict is refused."""


class ApiState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class ApiServer:
    """The control API of one daemon, served from a thread of its own.

    ``start()`` returns once the socket listens (``port=0`` picks a free port;
    ``.port`` and ``.url`` then tell which); ``stop()`` may be called any
    number of times, also before ``start()``. A stopped server cannot be
    started again. The constructor does no I/O.

    Raises:
        ConfigError: a port out of range, or (from ``start``) an address that
            cannot be listened on. (``Tokens`` refuses to be empty: the API
            always requires a token.)
    """

    def __init__(self, control: Control, *, host: str = "127.0.0.1", port: int = 8787,
                 tokens: Tokens, metrics_token_required: bool = True) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"api: port {port} is not between 0 and 65535")
        self.control, self.host = control, host
        self.metrics_token_required = metrics_token_required
        self._tokens = tokens
        doc = openapi(metrics_token_required=metrics_token_required)
        self._public = public_operations(doc)
        self._scopes = required_scopes(doc)
        self._requested_port = port
        self._port: int | None = None
        self._state = ApiState.NEW
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._listening = threading.Event()
        self._abandoned = threading.Event()
        self._failure: BaseException | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- lifecycle ----------------------------------------------------------------

    @property
    def state(self) -> ApiState:
        return self._state

    @property
    def port(self) -> int:
        """The port listened on; with ``port=0`` known only once started."""
        return self._port if self._port is not None else self._requested_port

    @property
    def url(self) -> str:
        """Base URL for clients on this machine (a wildcard host is reached on loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Listen and serve; returns once the socket is bound.

        Raises:
            ConfigError: the address cannot be listened on (in use, unknown host).
            ShadowError: already started, or stopped.
        """
        with self._lock:
            if self._state is not ApiState.NEW:
                raise ShadowError(f"cannot start the control API: it is {self._state.value}")
            self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="shadow-api")
            self._thread = threading.Thread(target=self._run, name="shadow-api", daemon=True)
            self._thread.start()
            if not self._listening.wait(timeout_s):
                self._state = ApiState.STOPPED
                self._abandoned.set()  # should it bind after all, it stops at once
                raise ShadowError(f"the control API did not start within {timeout_s:g} s")
            if self._failure is not None:
                self._thread.join()
                self._executor.shutdown(wait=False)
                self._state = ApiState.STOPPED
                raise self._failure
            self._state = ApiState.RUNNING
        log.info("control api listening", url=self.url)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving; requests in flight get ``timeout_s`` to finish. Idempotent."""
        with self._lock:
            if self._state is not ApiState.RUNNING:
                self._state = ApiState.STOPPED
                return
            self._state = ApiState.STOPPED
            assert self._loop is not None and self._stopping is not None
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout_s)
        log.info("control api stopped", url=self.url)

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start(), or logged once serving
            if self._listening.is_set():
                log.error("control api failed", exc_info=exc)
            else:
                self._failure = exc
                self._listening.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        runner = web.AppRunner(self.application(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(f"api: cannot listen on {self.host}:{self._requested_port}: "
                                  f"{exc.strerror or exc}") from exc
            self._port = int(runner.addresses[0][1])
            self._listening.set()
            if not self._abandoned.is_set():
                await self._stopping.wait()
        finally:
            await runner.cleanup()
            if self._executor is not None:
                # A control call stuck on the pipeline thread must not hold up the shutdown.
                self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the application ------------------------------------------------------------

    def application(self) -> web.Application:
        """The aiohttp application: every route :func:`~shadow.service.openapi.openapi` describes,
        behind the guard."""
        app = web.Application(middlewares=[self._guard], client_max_size=_MAX_BODY)
        app.router.add_get("/health", self._health, allow_head=False)
        app.router.add_get("/ready", self._ready, allow_head=False)
        app.router.add_get("/openapi.json", self._openapi, allow_head=False)
        app.router.add_get("/rollout", self._rollout_status, allow_head=False)
        app.router.add_get("/rollout/history", self._rollout_history, allow_head=False)
        for action in COMMANDS:  # one route each: POST /rollout/history is then a 405
            app.router.add_post(f"/rollout/{action}", self._rollout_command)
        app.router.add_post("/reports", self._post_report)
        app.router.add_get("/report", self._get_report, allow_head=False)
        app.router.add_get("/dead-letters", self._dead_letters, allow_head=False)
        app.router.add_get("/events/{event_id}", self._event, allow_head=False)
        app.router.add_get("/reviews", self._reviews, allow_head=False)
        app.router.add_post("/reviews/{review_id}/verdict", self._review_verdict)
        app.router.add_get("/review", self._review_page, allow_head=False)
        app.router.add_get("/metrics", self._metrics, allow_head=False)
        app.router.add_post("/backup", self._backup)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        operation = self._operation(request)
        response = await self._answer(request, handler, operation)
        token = request.get(_TOKEN)
        needed = self._scopes.get(operation)
        if token is not None and needed is not None and needed is not Scope.READ:
            log.info("control api call", caller=token.name, method=request.method,
                     path=request.path, status=response.status)
        return response

    async def _answer(self, request: web.Request, handler: Handler,
                      operation: tuple[str, str]) -> web.StreamResponse:
        try:
            if operation not in self._public:
                request[_TOKEN] = self._authorize(request, self._scopes.get(operation))
            return await handler(request)
        except _HttpError as exc:
            return _error(exc.status, exc.message, exc.headers)
        except web.HTTPException as exc:  # aiohttp's own: no route, wrong method, too large
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            message = (_no_route(request) if exc.status == 404 else exc.reason.lower())
            return _error(exc.status, message, headers)
        except (Refused, BackupExists) as exc:
            return _error(409, str(exc))
        except ConfigError as exc:
            return _error(400, str(exc))
        except ShadowError as exc:
            log.error("control api request failed", path=request.path, error=str(exc))
            return _error(500, str(exc))
        except Exception:
            log.exception("control api request failed", method=request.method,
                          path=request.path)
            return _error(500, "internal error; the daemon's log has the details")

    @staticmethod
    def _operation(request: web.Request) -> tuple[str, str]:
        """``(METHOD, path)`` as the description names it (``/rollout/{action}``)."""
        resource = request.match_info.route.resource
        return request.method, resource.canonical if resource is not None else request.path

    def _authorize(self, request: web.Request, needed: Scope | None) -> ApiToken:
        """The token of the request, if it has the scope ``needed`` (any known token for an
        unknown route, which then answers 404)."""
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise _HttpError(401, "this route needs 'Authorization: Bearer <token>'",
                             {"WWW-Authenticate": 'Bearer realm="shadow"'})
        token = self._tokens.find(presented)
        if token is None:
            log.warning("control api refused an unknown token", method=request.method,
                        path=request.path)
            raise _HttpError(403, "the token is not one the daemon accepts (daemon.api: "
                                  "tokens, tokens_file or token_env)",
                             {"WWW-Authenticate": 'Bearer realm="shadow", error="invalid_token"'})
        if needed is not None and not token.allows(needed):
            log.warning("control api refused a token without the scope", caller=token.name,
                        scope=token.scope.value, needs=needed.value, method=request.method,
                        path=request.path)
            raise _HttpError(
                403, f"{request.method} {request.path} needs the scope {needed.value}; the "
                     f"token {token.name!r} has {token.scope.value}",
                {"WWW-Authenticate": f'Bearer realm="shadow", error="insufficient_scope", '
                                     f'scope="{needed.value}"'})
        return token

    def _valid(self, presented: str) -> bool:
        return self._tokens.find(presented) is not None

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    # -- handlers -------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self._valid(token):
            return _answer(Health(status="ok"))  # liveness only; details need the token
        # Answered on the event loop, never queued behind calls waiting on the pipeline.
        return _answer(Health.model_validate(self.control.health()))

    async def _ready(self, request: web.Request) -> web.Response:
        ready, checks = self.control.readiness()
        return _answer(Readiness.model_validate({"ready": ready, "checks": checks}),
                       status=200 if ready else 503)

    async def _openapi(self, request: web.Request) -> web.Response:
        return _json(openapi(metrics_token_required=self.metrics_token_required))

    async def _rollout_status(self, request: web.Request) -> web.Response:
        return _answer(RolloutStatus.model_validate(await self._call(self.control.rollout_status)))

    async def _rollout_history(self, request: web.Request) -> web.Response:
        limit = _limit(request, default=None, maximum=None)
        records = await self._call(self.control.rollout_history, limit)
        return _json([_dumped(Transition.model_validate(r)) for r in records])

    async def _rollout_command(self, request: web.Request) -> web.Response:
        action = request.path.rsplit("/", 1)[1]
        body = await _body(request, COMMAND_BODIES[action], context={"action": action})
        reason = (body.reason or "").strip()
        result = await self._call(
            self.control.rollout_command, action, actor=body.actor,
            reason=reason or f"{action} by {body.actor}", full=body.full, force=body.force,
            token=request[_TOKEN].name)
        return _answer(CommandResult.model_validate(result))

    async def _post_report(self, request: web.Request) -> web.Response:
        body = await _body(request, ReportRequest)
        return await self._report(body)

    async def _get_report(self, request: web.Request) -> web.Response:
        query = {k: v for k, v in request.query.items() if k == "format"}
        try:
            asked = ReportRequest.model_validate(query)
        except ValidationError as exc:
            raise _HttpError(400, _problems(exc)) from exc
        return await self._report(asked)

    async def _report(self, asked: ReportRequest) -> web.Response:
        text = await self._call(self.control.report, asked.format)
        return web.Response(text=text, content_type=REPORT_TYPES[asked.format], charset="utf-8")

    async def _dead_letters(self, request: web.Request) -> web.Response:
        limit = _limit(request, default=20, maximum=DEAD_LETTERS_MAX)
        assert limit is not None
        rows = await self._call(self.control.dead_letters, limit)
        return _answer(DeadLetters.model_validate({"dead_letters": rows}))

    async def _event(self, request: web.Request) -> web.Response:
        event_id, candidate = request.match_info["event_id"], request.query.get("candidate")
        try:
            found = await self._call(self.control.event, event_id, candidate)
        except (EventNotFound, PredictionNotFound) as exc:
            raise _HttpError(404, str(exc)) from exc
        return _answer(EventView.model_validate(found))

    async def _reviews(self, request: web.Request) -> web.Response:
        status = request.query.get("status", "open")
        if status != "open":
            raise _HttpError(400, f"status: only open reviews are listed, got {status!r}")
        limit = _limit(request, default=50, maximum=REVIEWS_MAX)
        assert limit is not None
        rows = await self._call(self.control.reviews, limit)
        return _answer(Reviews.model_validate({"reviews": rows}))

    async def _review_verdict(self, request: web.Request) -> web.Response:
        body = (await _body(request, VerdictRequest)).root
        try:
            found = await self._call(
                self.control.review_verdict, request.match_info["review_id"],
                verdict=body.verdict, output=body.output, reviewer=body.reviewer,
                token=request[_TOKEN].name)
        except VerdictRefused as exc:
            raise _HttpError(_REFUSED[exc.problem.kind], str(exc)) from exc
        return _answer(ReviewVerdict.model_validate(found))

    async def _review_page(self, request: web.Request) -> web.Response:
        page = review_page()
        return web.Response(body=page.body, content_type="text/html", charset="utf-8",
                            headers=page.headers)

    async def _backup(self, request: web.Request) -> web.Response:
        body = await _body(request, BackupRequest)
        return _answer(Backup.model_validate(
            await self._call(self.control.backup, body.name, token=request[_TOKEN].name)))

    async def _metrics(self, request: web.Request) -> web.Response:
        text = await self._call(self.control.metrics)
        return web.Response(body=text.encode(), headers={"Content-Type": METRICS_TYPE})


def _dumped(model: BaseModel) -> Any:
    """An answer as JSON data: only the fields the control gave, as the schema names them."""
    return model.model_dump(mode="json", exclude_unset=True)


def _answer(model: BaseModel, *, status: int = 200) -> web.Response:
    return _json(_dumped(model), status=status)


def _no_route(request: web.Request) -> str:
    message = f"no such route: {request.method} {request.path}"
    if request.method == "POST" and request.path.startswith("/rollout/"):
        message += f"; the rollout's commands are {', '.join(COMMANDS)}"
    return message


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=str), status=status,
                        content_type="application/json", headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json(_dumped(Error(error=message)), status=status, headers=headers)


def _limit(request: web.Request, *, default: int | None, maximum: int | None) -> int | None:
    raw = request.query.get("limit")
    if raw is None:
        return default
    bound = f"from 1 to {maximum}" if maximum else "of at least 1"
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1 or (maximum is not None and value > maximum):
        raise _HttpError(400, f"limit: expected a whole number {bound}, got {raw!r}")
    return min(value, _UNLIMITED)  # more than there can be is all of them, within a BIGINT


async def _json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _HttpError(400, f"the body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise _HttpError(400, "the body must be a JSON object")
    return value


M = TypeVar("M", bound=BaseModel)


async def _body(request: web.Request, model: type[M], *,
                context: dict[str, Any] | None = None) -> M:
    raw = await _json_object(request)
    try:
        return model.model_validate(raw, context=context)
    except ValidationError as exc:
        raise _HttpError(400, _problems(exc)) from exc


def _problems(exc: ValidationError) -> str:
    """Each problem as ``field: what is wrong``, as the tests and the CLI show them."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                     for e in exc.errors())
