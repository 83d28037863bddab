"""The webhook server: one aiohttp server, on a thread of its own, for every endpoint.

:class:`WebhookServer` listens and routes each request by exact path to its
:class:`~connectors.webhooks.WebhookSource`, which verifies it, queues its
records for the pipeline and answers once they are stored. The server itself
answers only what it can tell before a source sees the body: 404 for an
unknown path, 405 for a method other than POST, 413 for a body larger than the
endpoint's ``max_body_bytes``, 503 once intake is stopped. The answers and the
contract with the sender are described in :mod:`connectors.webhooks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import structlog
from aiohttp import web

from connectors.webhooks import Answer, WebhookSource
from shadow.errors import SourceError

__all__ = ["ServerState", "WebhookServer"]

log = structlog.get_logger(__name__)

_RETRY_AFTER_S = 5
"""Asked of senders answered 503, for those that honour ``Retry-After``."""


class ServerState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class WebhookServer:
    """One HTTP server for every webhook endpoint, on a thread and event loop of its own.

    Requests are routed by exact path to their :class:`WebhookSource`;
    unknown paths get 404, methods other than POST 405. ``public_url`` is the
    scheme, host and any path prefix under which senders reach the server
    (``https://hooks.example.com``), for schemes that sign the URL (HubSpot)
    behind a proxy; without it the URL is rebuilt from ``X-Forwarded-Proto``
    and ``X-Forwarded-Host``, else from the request itself.

    Lifecycle: :meth:`start` (returns once listening; then :attr:`port` and
    :attr:`url` are known), :meth:`stop_intake` (new requests get 503,
    waiting ones still get their ack), :meth:`stop` (idempotent; waits up to
    ``shutdown_timeout_s`` for waiting requests). It cannot be restarted.
    Use it as a context manager. Constructing one does no I/O.

    Raises:
        ValueError: two sources on one path, a port out of range, a bad ``public_url``.
    """

    def __init__(
        self,
        *,
        sources: Sequence[WebhookSource],
        host: str = "127.0.0.1",
        port: int = 0,
        public_url: str | None = None,
        shutdown_timeout_s: float | None = None,
        body_timeout_s: float = 10.0,
    ) -> None:
        routes: dict[str, WebhookSource] = {}
        for source in sources:
            if source.path in routes:
                raise ValueError(f"sources {routes[source.path].name!r} and {source.name!r} "
                                 f"share the path {source.path}")
            routes[source.path] = source
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {port}")
        if public_url is not None:
            parts = urllib.parse.urlsplit(public_url)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
                raise ValueError(f"public_url must be http(s)://host[/prefix], got {public_url!r}")
        if not body_timeout_s > 0:
            raise ValueError(f"body_timeout_s must be positive, got {body_timeout_s}")
        self.body_timeout_s = body_timeout_s
        self.host, self.port = host, port
        self.public_url = public_url.rstrip("/") if public_url else None
        self.shutdown_timeout_s = (
            shutdown_timeout_s if shutdown_timeout_s is not None
            else max((s.ack_timeout_s for s in sources), default=0.0) + 1.0
        )
        self._routes = routes
        self._state = ServerState.NEW
        self._intake = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def sources(self) -> list[WebhookSource]:
        return list(self._routes.values())

    @property
    def url(self) -> str:
        """``http://host:port`` the server listens on (after :meth:`start`)."""
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> WebhookServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Listen; returns once connections are accepted.

        Raises:
            RuntimeError: the server was started before.
            SourceError: the address cannot be listened on.
        """
        if self._state is not ServerState.NEW:
            raise RuntimeError(f"cannot start a webhook server that is {self._state.value}")
        self._state = ServerState.RUNNING
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(RateLimitedErrors())
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="webhooks", daemon=True)
        self._thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout=30)
        except OSError as exc:
            self.stop()
            raise SourceError(f"cannot listen for webhooks on {self.host}:{self.port}: "
                              f"{exc}") from exc
        except BaseException:
            self.stop()
            raise
        log.info("webhook server listening", url=self.url,
                 paths=sorted(self._routes), public_url=self.public_url)

    def stop_intake(self) -> None:
        """Answer new requests 503 on every endpoint; waiting ones still get their ack."""
        self._intake = False
        for source in self._routes.values():
            source.stop_intake()

    def stop(self) -> None:
        """Stop intake, wait for waiting requests (up to ``shutdown_timeout_s``), stop listening.

        Idempotent; the sources are not closed (the pipeline closes them).
        """
        if self._state is ServerState.STOPPED:
            return
        self._state = ServerState.STOPPED
        self.stop_intake()
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None:
            return
        if runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(
                    timeout=self.shutdown_timeout_s + 5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop, self._thread, self._runner = None, None, None

    # -- on the server's loop -------------------------------------------------

    async def _listen(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=self.shutdown_timeout_s)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        port: int = runner.addresses[0][1]
        return port

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        source = self._routes.get(request.path)
        if source is None:
            return _reply(Answer(404, {"status": "not_found",
                                       "reason": f"no webhook endpoint at {request.path}"}))
        if request.method != "POST":
            return _reply(Answer(405, {"status": "method_not_allowed",
                                       "reason": "webhooks are POSTed"}), allow="POST")
        if not (self._intake and source.accepting):
            return _reply(Answer.unavailable("intake is stopped"))
        limit = source.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            return self._too_large(source, declared)
        refused = source.check_headers(request.headers)
        if refused is not None:
            return _reply(refused)
        try:
            body = await asyncio.wait_for(_read(request, limit), timeout=self.body_timeout_s)
        except TimeoutError:
            log.warning("webhook delivery refused: body not received in time", source=source.name,
                        body_timeout_s=self.body_timeout_s)
            slow = _reply(Answer(408, {"status": "timeout", "reason": "the body did not arrive "
                                       f"within {self.body_timeout_s:g} s"}))
            slow.force_close()
            return slow
        if body is None:
            return self._too_large(source, None)
        answer = await source.receive(method=request.method, url=self._signed_url(request),
                                      headers=request.headers, body=body)
        return _reply(answer)

    def _too_large(self, source: WebhookSource, declared: int | None) -> web.StreamResponse:
        log.warning("webhook delivery refused: body too large", source=source.name,
                    max_body_bytes=source.max_body_bytes, content_length=declared)
        response = _reply(Answer(413, {"status": "too_large", "reason":
                                       f"the body exceeds {source.max_body_bytes} bytes"}))
        response.force_close()  # the rest of the body is not read: the connection cannot be reused
        return response

    def _signed_url(self, request: web.Request) -> str:
        # The path and query exactly as sent (still percent-encoded): what a sender signs.
        if self.public_url is not None:
            return self.public_url + request.raw_path
        forwarded = request.headers
        scheme = forwarded.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
        host = forwarded.get("X-Forwarded-Host", request.host).split(",")[0].strip()
        return f"{scheme}://{host}{request.raw_path}"


class RateLimitedErrors:
    """The server loop's exception handler: each kind of error is logged at most once per
    ``every_s``, with how many were left out since. A flood of connections beyond the
    open-files limit makes asyncio report every failed accept; logged each time, they
    filled the disk faster than the flood could be noticed."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.every_s, self.clock = every_s, clock
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exception = context.get("exception")
        kind = f"{context.get('message', '')}|{type(exception).__name__}"
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.every_s:
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return
        self._last[kind] = now
        left_out = self._left_out.pop(kind, 0)
        log.error("webhook server error", message=context.get("message"),
                  error=repr(exception) if exception is not None else None,
                  left_out_since_last=left_out)


async def _read(request: web.Request, limit: int) -> bytes | None:
    """The body, or None as soon as it proves longer than ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _reply(answer: Answer, *, allow: str | None = None) -> web.Response:
    headers = {}
    if allow is not None:
        headers["Allow"] = allow
    if answer.status == 503:
        headers["Retry-After"] = str(_RETRY_AFTER_S)
    return web.Response(status=answer.status, body=orjson.dumps(answer.body),
                        content_type="application/json", headers=headers)
