"""Webhooks as a source: HTTP endpoints a CRM, inbox or ticketing system pushes to.

Each endpoint is a :class:`WebhookSource`, polled by the pipeline like any
other source and mapped by the same mapping section as files and Kafka. One
:class:`~connectors.webhook_server.WebhookServer` (in
:mod:`connectors.webhook_server`) hosts every endpoint and hands each request
to its source; the source knows nothing of the server.

The contract with the sender
----------------------------
A delivery is acknowledged only once it is durably stored: the request waits
while the pipeline polls the record, writes the batch holding it and calls
:meth:`WebhookSource.commit`, which happens only after the store's
transaction has committed. Delivery is at least once: a sender that got no
2xx sends again, and the store's idempotency (``event_id``; ``key`` and
``decided_at`` for outcomes; source and position for dead letters) keeps what
it sends twice from counting twice.

The server answers 404, 405 and 413 before any source sees the request; the
source answers the rest (a stopped server also answers 503 itself).

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
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson
import structlog

from connectors.base import RawRecord, Source, SourceState
from connectors.signatures import Delivery, Scheme, verifier
from shadow.core.errors import SignatureError
from shadow.core.models import RecordKind, utc_now

__all__ = ["METADATA_KEY", "Answer", "WebhookSource"]

log = structlog.get_logger(__name__)

METADATA_KEY = "_webhook"
"""Where a record's delivery id, signed time and endpoint path sit for the mapping."""


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
    ``poll_timeout_s``; ``on_arrival``, if given, is called (on the server's
    thread) each time records are queued, so a pipeline that polls without
    waiting can sleep until then. :meth:`commit` of a position releases every record
    handed out up to and including it, in the order they were handed out, and
    acknowledges each delivery whose records are all committed.

    After :meth:`stop_intake` new requests are answered 503, queued ones are
    still handed out and acknowledged, and once the queue is empty the source
    is :attr:`exhausted`, so a pipeline draining it ends on its own: a
    graceful shutdown. :meth:`close` answers 503 to every request still
    waiting; their records, if already handed out, may still be stored.

    Constructing one does no I/O; the
    :class:`~connectors.webhook_server.WebhookServer` listens.

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
        on_arrival: Callable[[], None] | None = None,
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
        self._on_arrival, self._now = on_arrival, now
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
        _settle_all([(flight.future, flight.answer()) for flight in done])

    def close(self) -> None:
        """Stop intake and answer 503 to every request still waiting. Idempotent."""
        with self._ready:
            self._accepting = False
            waiting = list(self._in_flight.values())
            self._queue.clear()
            self._handed.clear()
            self._in_flight.clear()
            self._ready.notify_all()
        _settle_all([(flight.future, Answer.unavailable("the source closed before storing it"))
                     for flight in waiting])
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
        if not joined and self._on_arrival is not None:
            self._on_arrival()
        try:
            async with asyncio.timeout(self.ack_timeout_s):
                answer = await asyncio.shield(flight.future)
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
            raw = _encoded(item)
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


def _encoded(item: Any) -> bytes | str:
    """An array element as JSON, for its dead letter; its ``repr`` (cut short) when it is
    nested deeper than orjson writes (254 levels; it reads 1,024): the mapping makes it a
    dead letter either way, and the delivery is answered like any other."""
    try:
        return orjson.dumps(item)
    except (TypeError, orjson.JSONEncodeError):
        return repr(item)[:65_536]


def _as_duplicate(answer: Answer) -> Answer:
    if answer.status != 200:
        return answer
    return Answer(200, {"status": "duplicate"})


def _settle_all(answers: list[tuple[asyncio.Future[Answer], Answer]]) -> None:
    """Answer each waiting request, with one wake-up of the server's loop for all of them."""
    if not answers:
        return

    def settle() -> None:
        for future, answer in answers:
            if not future.done():
                future.set_result(answer)

    with contextlib.suppress(RuntimeError):  # the server's loop is closed: nobody waits
        answers[0][0].get_loop().call_soon_threadsafe(settle)
