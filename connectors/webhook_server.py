"""The webhook server: one aiohttp server, on a thread of its own, for every endpoint.

:class:`WebhookServer` listens and routes each request by exact path to its
:class:`~connectors.webhooks.WebhookSource`, which verifies it, queues its
records for the pipeline and answers once they are stored. The server itself
answers only what it can tell before a source sees the body: 404 for an
unknown path, 405 for a method other than POST, 413 for a body larger than the
endpoint's ``max_body_bytes``, 503 once intake is stopped. The answers and the
contract with the sender are described in :mod:`connectors.webhooks`.

It also refuses what would hold a connection, or a file, for nothing:

- request headers not complete within ``header_timeout_s`` of connecting: 408,
  and the connection is closed. On a kept-alive connection the time counts
  from the previous answer, and the connection is closed without an answer;
- a body not received within ``body_timeout_s``: 408, and the connection is closed;
- a connection beyond ``max_connections`` open: a 503 (``Retry-After``) written
  as soon as it is accepted, then closed, before any request is read.

The timeouts and refusals are logged at most once per 10 s each, with a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import http
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, cast

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from connectors.webhooks import Answer, WebhookSource
from shadow.core.errors import SourceError

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

    Bounds: a request's headers must arrive within ``header_timeout_s`` of
    connecting or of the previous answer (which also closes a kept-alive
    connection left idle that long), its body within ``body_timeout_s``. At
    most ``max_connections`` are open at once; one more is answered 503 and
    closed. The default of 512 is half the common soft limit of 1,024 open
    files, so that where the daemon cannot raise that limit, the store, the
    API and the sources still have files of their own; webhook vendors
    rarely hold more than a few connections each.

    Raises:
        ValueError: two sources on one path, a port out of range, a bad ``public_url``,
            a timeout that is not positive, ``max_connections`` below 1.
    """

    def __init__(
        self,
        *,
        sources: Sequence[WebhookSource],
        host: str = "127.0.0.1",
        port: int = 0,
        public_url: str | None = None,
        shutdown_timeout_s: float | None = None,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 10.0,
        max_connections: int = 512,
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
        for name, timeout in (("header_timeout_s", header_timeout_s),
                              ("body_timeout_s", body_timeout_s)):
            if not timeout > 0:
                raise ValueError(f"{name} must be positive, got {timeout}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.header_timeout_s, self.body_timeout_s = header_timeout_s, body_timeout_s
        self.max_connections = max_connections
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
        self._listener: asyncio.Server | None = None

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
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(
                timeout=self.shutdown_timeout_s + 5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop, self._thread = None, None

    # -- on the server's loop -------------------------------------------------

    async def _listen(self) -> int:
        app = web.Application(middlewares=[_handling])
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=self.shutdown_timeout_s)
        await runner.setup()
        self._runner = runner
        assert runner.server is not None
        gate = _Gate(runner.server, max_connections=self.max_connections,
                     header_timeout_s=self.header_timeout_s)
        self._listener = await asyncio.get_running_loop().create_server(
            gate, self.host, self.port, backlog=128)
        port: int = self._listener.sockets[0].getsockname()[1]
        return port

    async def _close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

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
            async with asyncio.timeout(self.body_timeout_s):  # no task per request, as wait_for
                body = await _read(request, limit)
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


class _Gate:
    """The listening socket's protocol factory: admits up to ``max_connections`` at once,
    each behind a timer for its request headers, and refuses the rest with a raw 503."""

    def __init__(self, server: web.Server, *, max_connections: int,
                 header_timeout_s: float) -> None:
        self.server = server
        self.max_connections, self.header_timeout_s = max_connections, header_timeout_s
        self.open = 0
        self.refusals, self.timeouts = _Window(), _Window()

    def __call__(self) -> asyncio.Protocol:
        # Counted here rather than at connection_made: a burst of accepts makes every
        # protocol before any connection_made runs.
        if self.open >= self.max_connections:
            if (left_out := self.refusals.admit()) is not None:
                log.warning("webhook connections refused: too many open",
                            max_connections=self.max_connections, refused=left_out + 1)
            return _Refused()
        self.open += 1
        return _Connection(self.server(), self)

    def release(self) -> None:
        self.open -= 1

    def headers_late(self) -> None:
        if (left_out := self.timeouts.admit()) is not None:
            log.warning("webhook connections closed: request headers not received in time",
                        header_timeout_s=self.header_timeout_s, closed=left_out + 1)


class _Connection(asyncio.Protocol):
    """An admitted connection: aiohttp's protocol for it, behind a timer for request headers.

    The timer runs from connect, and again from each answer, until a request
    reaches the handler (:meth:`request_started`). When it fires, the
    connection is closed, after a 408 if no request got in before; a kept-alive
    connection that sent nothing since its answer is merely idle, and closed
    without a log line.
    """

    def __init__(self, inner: asyncio.Protocol, gate: _Gate) -> None:
        self._inner, self._gate = inner, gate
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._answered = 0
        self._heard = False
        """Whether bytes arrived since the last answer."""

    @staticmethod
    def of(request: web.BaseRequest) -> _Connection | None:
        transport = request.transport
        protocol = transport.get_protocol() if transport is not None else None
        return protocol if isinstance(protocol, _Connection) else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        self._heard = True
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._transport = None
        self._gate.release()
        self._inner.connection_lost(exc)

    def request_started(self) -> None:
        self._disarm()

    def request_answered(self) -> None:
        self._answered += 1
        self._heard = False
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        if self._transport is not None and not self._transport.is_closing():
            self._timer = asyncio.get_running_loop().call_later(
                self._gate.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_late(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._heard or not self._answered:
            self._gate.headers_late()
        if not self._answered and not transport.get_write_buffer_size():
            transport.write(_raw_reply(Answer(408, {
                "status": "timeout", "reason": "the request headers did not arrive "
                f"within {self._gate.header_timeout_s:g} s"})))
        if transport.get_write_buffer_size():
            transport.abort()  # a peer that does not read would hold a graceful close open
        else:
            transport.close()


@web.middleware
async def _handling(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stops the connection's header timer while a request is handled, restarts it after."""
    connection = _Connection.of(request)
    if connection is not None:
        connection.request_started()
    try:
        return await handler(request)
    finally:
        if connection is not None:
            connection.request_answered()


class _Refused(asyncio.Protocol):
    """A connection beyond ``max_connections``: answered 503 and closed, nothing read."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        writer = cast(asyncio.Transport, transport)
        writer.write(_TOO_MANY_CONNECTIONS)
        writer.close()


class _Window:
    """Lets one call through per ``every_s`` and counts those held back in between."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.every_s, self.clock = every_s, clock
        self._last: float | None = None
        self._held_back = 0

    def admit(self) -> int | None:
        """None to hold this call back, else how many were held back since the last one."""
        now = self.clock()
        if self._last is not None and now - self._last < self.every_s:
            self._held_back += 1
            return None
        self._last = now
        held_back, self._held_back = self._held_back, 0
        return held_back


class RateLimitedErrors:
    """The server loop's exception handler: each kind of error is logged at most once per
    ``every_s``, with how many were left out since. A flood of connections beyond the
    open-files limit makes asyncio report every failed accept; logged each time, they
    filled the disk faster than the flood could be noticed."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.every_s, self.clock = every_s, clock
        self._windows: dict[str, _Window] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exception = context.get("exception")
        kind = f"{context.get('message', '')}|{type(exception).__name__}"
        window = self._windows.get(kind)
        if window is None:
            window = self._windows[kind] = _Window(self.every_s, self.clock)
        left_out = window.admit()
        if left_out is None:
            return
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


def _raw_reply(answer: Answer) -> bytes:
    """The whole HTTP/1.1 response, written straight to a connection that is then closed."""
    body = orjson.dumps(answer.body)
    retry = f"Retry-After: {_RETRY_AFTER_S}\r\n" if answer.status == 503 else ""
    return (f"HTTP/1.1 {answer.status} {http.HTTPStatus(answer.status).phrase}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{retry}Connection: close\r\n\r\n").encode() + body


_TOO_MANY_CONNECTIONS = _raw_reply(Answer.unavailable("too many connections are open"))


def _reply(answer: Answer, *, allow: str | None = None) -> web.Response:
    headers = {}
    if allow is not None:
        headers["Allow"] = allow
    if answer.status == 503:
        headers["Retry-After"] = str(_RETRY_AFTER_S)
    return web.Response(status=answer.status, body=orjson.dumps(answer.body),
                        content_type="application/json", headers=headers)
