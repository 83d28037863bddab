"""Webhooks as a source: HTTP endpoints a CRM, inbox or ticketing system pushes to.

One :class:`WebhookServer` hosts every endpoint; each endpoint is a
:class:`WebhookSource`, polled by the pipeline like any other source and
mapped by the same mapping section as files and Kafka.

The contract with the sender
----------------------------
A delivery is acknowledged only once it is durably stored: the request waits
while the pipeline polls the record, writes the batch holding it and calls
:meth:`WebhookSource.commit`, which happens only after the store's
transaction has committed. Delivery is at least once: a sender that got no
2xx sends again, and the store's idempotency (``event_id``; ``key`` and
``decided_at`` for outcomes; source and position for dead letters) keeps what
it sends twice from counting twice.

======  ==========================================================================
status  meaning (the JSON body's ``status`` in brackets)
======  ==========================================================================
200     [``stored``] every record of the delivery is committed to the store (as an
        event or outcome, or as a dead letter when it did not fit the mapping).
        [``duplicate``] this delivery id was already stored (a retry, a replay);
        nothing was added
400     [``rejected``] the body is not JSON, or not an object or an array of
        objects. It is kept as a dead letter (answered after that is stored);
        sending the same body again will not help
401     [``unauthorized``] the signature is missing, wrong, or its timestamp is
        outside the tolerance. Nothing is stored
404     no endpoint at this path. 405: a method other than POST
413     the body is larger than the endpoint's ``max_body_bytes``; it is not read
        beyond the limit, and nothing is stored
503     [``unavailable``] not stored within ``ack_timeout_s`` (the pipeline is slow
        or down), or intake is stopped: send again later (``Retry-After``). A
        delivery answered 503 may still be stored; its retry is then answered
        ``duplicate``
======  ==========================================================================

A top-level JSON array (HubSpot sends its events in batches) becomes one record
per element, at positions ``delivery <id> #<index>``; an empty array is
acknowledged with nothing stored. Each object record gets the delivery under
``_webhook`` (``delivery``, ``signed_at``, ``path``) for the mapping to use.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson
import structlog
from aiohttp import web

from connectors.base import RawRecord, Source, SourceState
from connectors.signatures import Delivery, Scheme, verifier
from shadow.errors import SignatureError, SourceError
from shadow.models import RecordKind, utc_now

__all__ = ["METADATA_KEY", "Answer", "WebhookServer", "WebhookSource"]

log = structlog.get_logger(__name__)

METADATA_KEY = "_webhook"
"""Where a record's delivery id, signed time and endpoint path sit for the mapping."""

_RETRY_AFTER_S = 5
"""Asked of senders answered 503, for those that honour ``Retry-After``."""


class Answer(NamedTuple):
    """What an endpoint answers a request: a status and a JSON body."""

    status: int
    body: dict[str, Any]

    @classmethod
    def unavailable(cls, reason: str) -> Answer:
        return cls(503, {"status": "unavailable", "reason": reason})


@dataclass(eq=False, slots=True)
class _InFlight:
    """A delivery whose records are queued or handed out, but not all committed."""

    delivery: str
    future: asyncio.Future[Answer]
    records: int
    remaining: int
    reason: str | None
    """Why the body (or an element of it) is no record: it is answered 400."""

    def answer(self) -> Answer:
        if self.reason is None:
            return Answer(200, {"status": "stored", "records": self.records})
        return Answer(400, {"status": "rejected", "reason": self.reason,
                            "records": self.records})


class WebhookSource(Source):
    """One webhook endpoint: deliveries pushed to ``path``, verified, then polled as records.

    ``kind`` (event or outcome) is carried for whoever wires sources to the
    pipeline. ``scheme`` and ``secret`` are those of
    :mod:`connectors.signatures`; a scheme other than ``none`` needs a
    secret, and ``none`` refuses one, so nothing unsigned is ever stored where
    a secret is configured. ``tolerance_s`` bounds the age (and the future
    skew) of signed timestamps; a delivery id seen in the last two tolerances
    is answered ``duplicate`` without being queued again (the last
    ``replay_capacity`` ids are remembered). A request waits for its ack at
    most ``ack_timeout_s``, by default below every sender's own timeout
    (HubSpot waits 5 s), so a sender gets a clean 503 rather than a timeout.

    Requests are received on the server's thread and queued; :meth:`poll`
    hands them out on the pipeline's, never waiting longer than
    ``poll_timeout_s``. :meth:`commit` of a position releases every record
    handed out up to and including it, in the order they were handed out, and
    acknowledges each delivery whose records are all committed.

    After :meth:`stop_intake` new requests are answered 503, queued ones are
    still handed out and acknowledged, and once the queue is empty the source
    is :attr:`exhausted`, so a pipeline draining it ends on its own: a
    graceful shutdown. :meth:`close` answers 503 to every request still
    waiting; their records, if already handed out, may still be stored.

    Constructing one does no I/O; the :class:`WebhookServer` listens.

    Raises:
        ValueError: a path not starting with ``/``, a scheme and secret that do
            not go together, an option out of range.
    """

    def __init__(
        self,
        *,
        name: str,
        path: str,
        scheme: Scheme | str,
        secret: str | None = None,
        kind: RecordKind | str = RecordKind.EVENT,
        tolerance_s: float = 300.0,
        max_body_bytes: int = 1 << 20,
        ack_timeout_s: float = 4.0,
        poll_timeout_s: float = 0.2,
        replay_capacity: int = 100_000,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        if not name:
            raise ValueError("a webhook source needs a name")
        if not path.startswith("/") or "?" in path or "#" in path:
            raise ValueError(f"a webhook path starts with '/' and has no query, got {path!r}")
        if tolerance_s <= 0 or max_body_bytes < 1 or ack_timeout_s <= 0 or poll_timeout_s < 0:
            raise ValueError("need tolerance_s > 0, max_body_bytes >= 1, ack_timeout_s > 0, "
                             "poll_timeout_s >= 0")
        if replay_capacity < 1:
            raise ValueError("replay_capacity must be at least 1")
        self.name, self.path, self.kind = name, path, RecordKind(kind)
        self.scheme = Scheme(scheme)
        self._verifier = verifier(self.scheme, secret, tolerance=timedelta(seconds=tolerance_s))
        self.tolerance_s, self.max_body_bytes = tolerance_s, max_body_bytes
        self.ack_timeout_s, self.poll_timeout_s = ack_timeout_s, poll_timeout_s
        self.replay_capacity = replay_capacity
        self._now = now
        self._ready = threading.Condition()
        self._accepting = True
        self._queue: deque[tuple[RawRecord, _InFlight]] = deque()
        self._handed: deque[tuple[str, _InFlight]] = deque()
        self._in_flight: dict[str, _InFlight] = {}
        self._seen: OrderedDict[str, tuple[datetime, Answer]] = OrderedDict()

    def __repr__(self) -> str:
        return (f"WebhookSource(name={self.name!r}, path={self.path!r}, "
                f"scheme={self.scheme.value!r}, kind={self.kind.value!r})")

    # -- the pipeline's side ------------------------------------------------

    @property
    def accepting(self) -> bool:
        """Whether new requests are taken in (not after :meth:`stop_intake` or :meth:`close`)."""
        return self._accepting and self._state is not SourceState.CLOSED

    @property
    def exhausted(self) -> bool:
        """True once intake is stopped and every queued record has been handed out."""
        with self._ready:
            return not self.accepting and not self._queue

    @property
    def queued(self) -> int:
        """Records received and not yet handed out (for metrics and tests)."""
        with self._ready:
            return len(self._queue)

    def stop_intake(self) -> None:
        """Answer new requests 503; queued and waiting ones still get their ack. Idempotent."""
        with self._ready:
            self._accepting = False
            self._ready.notify_all()

    def _open(self) -> None:
        pass

    def _poll(self, max_records: int) -> list[RawRecord]:
        with self._ready:
            if not self._queue and self._accepting:
                self._ready.wait(self.poll_timeout_s)
            batch: list[RawRecord] = []
            while self._queue and len(batch) < max_records:
                record, flight = self._queue.popleft()
                self._handed.append((record.position, flight))
                batch.append(record)
            return batch

    def commit(self, position: str) -> None:
        """Acknowledge every delivery whose records up to ``position`` are now all stored.

        Called by the pipeline only after the store has committed the records
        handed out up to ``position``. A position not handed out (or already
        committed) releases nothing.
        """
        done: list[_InFlight] = []
        with self._ready:
            if all(handed != position for handed, _ in self._handed):
                return
            now = self._now()
            while self._handed:
                handed, flight = self._handed.popleft()
                flight.remaining -= 1
                if flight.remaining == 0:
                    done.append(flight)
                    self._in_flight.pop(flight.delivery, None)
                    self._remember(flight.delivery, flight.answer(), now)
                if handed == position:
                    break
        for flight in done:
            _settle(flight.future, flight.answer())

    def close(self) -> None:
        """Stop intake and answer 503 to every request still waiting. Idempotent."""
        with self._ready:
            self._accepting = False
            waiting = list(self._in_flight.values())
            self._queue.clear()
            self._handed.clear()
            self._in_flight.clear()
            self._ready.notify_all()
        for flight in waiting:
            _settle(flight.future, Answer.unavailable("the source closed before storing it"))
        super().close()

    def _close(self) -> None:
        pass  # close() above does the work, whether or not the source was ever opened

    # -- the server's side --------------------------------------------------

    def check_headers(self, headers: Mapping[str, str]) -> Answer | None:
        """401 for a request lacking a header its scheme needs (checked before its body is read)."""
        try:
            self._verifier.check_headers(headers)
        except SignatureError as exc:
            return self._unauthorized(exc)
        return None

    async def receive(
        self, *, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> Answer:
        """Verify a request, queue its records, and wait until they are stored.

        Runs on the server's event loop; see the module's table for the answers.
        """
        if not self.accepting:
            return Answer.unavailable("intake is stopped")
        try:
            delivery = self._verifier.verify(method=method, url=url, headers=headers,
                                             body=body, now=self._now())
        except SignatureError as exc:
            return self._unauthorized(exc)
        joined, flight_or_answer = self._enqueue(delivery, body)
        if isinstance(flight_or_answer, Answer):
            return flight_or_answer
        flight = flight_or_answer
        try:
            answer = await asyncio.wait_for(asyncio.shield(flight.future), self.ack_timeout_s)
        except TimeoutError:
            log.warning("webhook delivery not stored in time; the sender should retry",
                        source=self.name, delivery=delivery.id, ack_timeout_s=self.ack_timeout_s)
            return Answer.unavailable(f"not stored within {self.ack_timeout_s:g} s; send it "
                                      f"again later")
        return _as_duplicate(answer) if joined else answer

    def _enqueue(self, delivery: Delivery, body: bytes) -> tuple[bool, _InFlight | Answer]:
        """Queue a verified delivery; or join the same one in flight; or answer a replay."""
        records, reason = self._records(delivery, body)
        now = self._now()
        with self._ready:
            if not self.accepting:
                return False, Answer.unavailable("intake is stopped")
            self._forget_expired(now)
            seen = self._seen.get(delivery.id)
            if seen is not None:
                log.info("webhook delivery already stored", source=self.name,
                         delivery=delivery.id)
                return True, _as_duplicate(seen[1])
            flight = self._in_flight.get(delivery.id)
            if flight is not None:
                return True, flight
            if not records:
                answer = Answer(200, {"status": "stored", "records": 0})
                self._remember(delivery.id, answer, now)
                return False, answer
            future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            flight = _InFlight(delivery.id, future, len(records), len(records), reason)
            self._in_flight[delivery.id] = flight
            self._queue.extend((record, flight) for record in records)
            self._ready.notify_all()
            return False, flight

    def _records(self, delivery: Delivery, body: bytes) -> tuple[list[RawRecord], str | None]:
        position = f"delivery {delivery.id}"
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            reason = f"not JSON: {exc}"
            return [RawRecord(self.name, position, None, body, reason)], reason
        metadata = {"delivery": delivery.id, "path": self.path,
                    "signed_at": delivery.signed_at.isoformat() if delivery.signed_at else None}
        if type(value) is dict:
            value[METADATA_KEY] = metadata
            return [RawRecord(self.name, position, value, body)], None
        if type(value) is not list:
            reason = f"expected a JSON object or an array of objects, got {type(value).__name__}"
            return [RawRecord(self.name, position, None, body, reason)], reason
        records: list[RawRecord] = []
        first_reason: str | None = None
        for index, item in enumerate(value):
            raw = orjson.dumps(item)
            at = f"{position} #{index}"
            if type(item) is dict:
                item[METADATA_KEY] = dict(metadata)
                records.append(RawRecord(self.name, at, item, raw))
                continue
            reason = f"element {index} of the array is {type(item).__name__}, not an object"
            first_reason = first_reason or reason
            records.append(RawRecord(self.name, at, None, raw, reason))
        return records, first_reason

    def _remember(self, delivery: str, answer: Answer, now: datetime) -> None:
        # A signed timestamp is accepted from `tolerance` before it to `tolerance`
        # after it: two tolerances cover every replay that would pass verification.
        self._seen[delivery] = (now + 2 * self._verifier.tolerance, answer)
        self._seen.move_to_end(delivery)
        while len(self._seen) > self.replay_capacity:
            self._seen.popitem(last=False)

    def _forget_expired(self, now: datetime) -> None:
        while self._seen:
            delivery, (expires, _) = next(iter(self._seen.items()))
            if expires > now:
                return
            del self._seen[delivery]

    def _unauthorized(self, exc: SignatureError) -> Answer:
        log.warning("webhook delivery refused: not signed as required", source=self.name,
                    scheme=self.scheme.value, reason=exc.reason)
        return Answer(401, {"status": "unauthorized", "reason": exc.reason})


def _as_duplicate(answer: Answer) -> Answer:
    if answer.status != 200:
        return answer
    return Answer(200, {"status": "duplicate"})


def _settle(future: asyncio.Future[Answer], answer: Answer) -> None:
    def settle() -> None:
        if not future.done():
            future.set_result(answer)

    with contextlib.suppress(RuntimeError):  # the server's loop is closed: nobody waits
        future.get_loop().call_soon_threadsafe(settle)


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
        body = await _read(request, limit)
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
