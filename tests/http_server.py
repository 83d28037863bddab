"""A real HTTP/1.1 server for tests, on 127.0.0.1 and an ephemeral port.

It runs ``asyncio.start_server`` on its own event loop in a background thread,
so a test can call blocking client code against it. Each request is answered
by a plain function ``Request -> Reply``; the reply says what to send, how long
to wait first (without blocking other connections) or to drop the connection.

    with TestServer(lambda request: Reply(body={"label": "refund"})) as server:
        httpx.post(server.url + "/predict", json={})
        assert server.requests[0].path == "/predict"

Supported: keep-alive (requests are read one after another on a connection
until the client closes it), ``Content-Length`` and chunked request bodies,
``Connection: close``. Responses always carry ``Content-Length``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any

_MAX_HEAD = 64 * 1024
_BACKLOG = 1024


@dataclass(frozen=True)
class Request:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names lower-cased; a repeated header keeps its last value."""
    body: bytes
    received_at: float
    """``time.monotonic()`` when the whole request had been read."""
    connection: int
    """Which connection it came on (numbered from 1 in order of acceptance)."""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """What to answer one request."""

    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] = b"{}"
    """Bytes as they are, text as UTF-8, an object or a list as JSON."""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    """Wait this long before answering; other connections are served meanwhile."""
    drop: bool = False
    """Close the connection without sending any response."""


Handler = Callable[[Request], Reply]


class TestServer:
    """A context manager: the server listens on enter and is stopped on exit.

    ``requests`` lists every request received, in order of arrival;
    ``max_in_flight`` is the most requests that were ever read but not yet
    answered (or dropped) at the same time.
    """

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.url = ""
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.handler_errors: list[str] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._accepted = 0

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("the test server is already running")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="test-http", daemon=True)
        self._thread.start()
        try:
            future = asyncio.run_coroutine_threadsafe(self._listen(), loop)
            port = future.result(timeout=5)
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Close the listener and every open connection; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()
        self._loop, self._thread = None, None

    def __enter__(self) -> TestServer:
        self.start()
        return self

    def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> int:
        """Wait until ``count`` requests have been read; return how many were.

        A client that gave up on a slow answer has sent its request, but on a
        loaded machine the server's thread may read it only after the client
        has moved on: counting without waiting would miss it.
        """
        deadline = time.monotonic() + timeout_s
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.requests)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- inside the server's loop ------------------------------------------

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", 0, backlog=_BACKLOG, limit=_MAX_HEAD
        )
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        for _ in range(3):
            await asyncio.sleep(0)  # let the transports run their connection_lost and close

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._accepted += 1
        try:
            await self._serve(reader, writer, self._accepted)
        except asyncio.CancelledError:
            writer.transport.abort()  # the server is stopping: no lingering over unsent data
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ):
            pass  # the client went away or sent garbage
        finally:
            writer.close()
            self._connections.discard(task)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: int
    ) -> None:
        while True:
            request = await _read_request(reader, connection)
            if request is None:
                return  # the client closed the connection between requests
            with self._lock:
                self.requests.append(request)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            keep_alive = request.headers.get("connection", "").lower() != "close"
            try:
                reply = self._reply_to(request)
                if reply.delay_s > 0:
                    await asyncio.sleep(reply.delay_s)
                if reply.drop:
                    return
                writer.write(_encode(reply, keep_alive=keep_alive))
                await writer.drain()
            finally:
                with self._lock:
                    self.in_flight -= 1
            if not keep_alive:
                return

    def _reply_to(self, request: Request) -> Reply:
        try:
            return self.handler(request)
        except Exception:  # noqa: BLE001 - a broken handler answers 500 and says why
            text = traceback.format_exc()
            with self._lock:
                self.handler_errors.append(text)
            return Reply(status=500, body=text)


async def _read_request(reader: asyncio.StreamReader, connection: int) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(
        method=method,
        path=target,
        headers=headers,
        body=body,
        received_at=time.monotonic(),
        connection=connection,
    )


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _encode(reply: Reply, *, keep_alive: bool) -> bytes:
    headers = {name.lower(): value for name, value in reply.headers.items()}
    if isinstance(reply.body, bytes):
        body = reply.body
    elif isinstance(reply.body, str):
        body = reply.body.encode()
        headers.setdefault("content-type", "text/plain; charset=utf-8")
    else:
        body = json.dumps(reply.body).encode()
        headers.setdefault("content-type", "application/json")
    headers["content-length"] = str(len(body))
    if not keep_alive:
        headers["connection"] = "close"
    try:
        reason = HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {reply.status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
