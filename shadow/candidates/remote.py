"""Candidates behind a network call: the machinery they share.

Calls run concurrently on one event loop, at most ``concurrency`` in flight,
each with a timeout; connection errors, timeouts, 429 and 5xx are retried with
exponential backoff and full jitter (a ``Retry-After``, in seconds or as an HTTP
date, is honoured: :func:`shadow.core.retry.delay`), other 4xx are not, and a
circuit breaker stops calling an endpoint that keeps failing. Every event ends
as exactly one prediction: an output or an error of a named kind.

The client is aiohttp: against a 100 ms endpoint with 64 calls in flight,
httpx's async client managed 74 requests/s on the reference machine (its pool
degrades past about 32 concurrent requests, encode/httpx#3215), aiohttp 576.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import aiohttp
import orjson

from shadow.candidates.base import MAX_BODY, Candidate, truncate
from shadow.candidates.fingerprint import fingerprint
from shadow.candidates.resilience import CircuitBreaker, retry_policy
from shadow.config.candidates import RemoteSpec
from shadow.core.errors import ConfigError, ShadowError
from shadow.core.models import ErrorKind, Event, Prediction, PredictionError, utc_now
from shadow.core.retry import delay, jitter
from shadow.core.templates import TemplateError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one request came to."""

    output: Any = None
    error: PredictionError | None = None
    retryable: bool = False
    status: int | None = None
    ttfb_ms: float | None = None
    retry_after: str | None = None
    """The ``Retry-After`` header of the answer, as the server sent it."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    model: str | None = None
    violations: tuple[str, ...] = ()
    """What the candidate itself found wrong with the output (a chat candidate's
    malformed tool calls); the configured checks add theirs."""


class RemoteCandidate(Candidate):
    """A candidate answering over HTTP; subclasses say what to send and how to read it.

    See the module docstring for the behaviour under failure. ``clock``,
    ``now``, ``uniform`` and ``sleep`` (the wait between attempts) are for tests.
    """

    url: str
    keeps_request: ClassVar[bool] = False
    """Whether each prediction keeps the body it sent (``Prediction.request``)."""

    def __init__(
        self,
        spec: RemoteSpec,
        *,
        clock: Callable[[], float] = time.monotonic,
        uniform: Callable[[float, float], float] | None = None,
        now: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.spec = spec
        self.name = spec.resolved_name
        self.version = spec.version or fingerprint(spec)
        self.confidence_path, self.abstain_below = spec.confidence_path, spec.abstain_below
        self.breaker = CircuitBreaker(spec.breaker, clock=clock)
        self._retry = retry_policy(spec.retry)
        self._uniform, self._now, self._sleep = uniform or jitter(), now, sleep
        self._runner: asyncio.Runner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {}

    @abstractmethod
    def request(self, event: Event) -> Any:
        """The JSON body to send for ``event``; may raise TemplateError."""

    @abstractmethod
    def read(self, answer: Any, status: int, ttfb: float, raw: bytes) -> Attempt:
        """The attempt's result from the decoded JSON ``answer`` of a 2xx response."""

    def extra_headers(self) -> dict[str, str]:
        """Headers a kind of candidate adds (an API key, say), resolved at open()."""
        return {}

    def open(self) -> None:
        """Resolve header secrets from the environment and open the connection pool.

        Raises:
            ConfigError: a header names an environment variable that is not set.
        """
        if self._runner is not None:
            raise ShadowError(f"candidate {self.name} is already open")
        self._headers = {"content-type": "application/json", **self.extra_headers(), **{
            name: expand(value, f"header {name!r}") for name, value in self.spec.headers.items()
        }}
        self._runner = asyncio.Runner()
        self._client = self._runner.run(self._new_client())

    async def _new_client(self) -> aiohttp.ClientSession:
        # Created inside the runner's loop, which its connection pool belongs to.
        # aiohttp: many calls in flight at once (httpx's async pool stalls past ~32).
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.spec.concurrency),
            timeout=aiohttp.ClientTimeout(total=self.spec.timeout_s),
            headers=self._headers,
        )

    def close(self) -> None:
        if self._runner is None:
            return
        try:
            if self._client is not None:
                self._runner.run(self._client.close())
        finally:
            self._runner.close()
            self._runner, self._client = None, None

    def predict(self, events: Sequence[Event], now: datetime) -> list[Prediction]:
        if self._runner is None:
            raise ShadowError(f"candidate {self.name} is not open; use it as a context manager")
        return self._runner.run(self._predict_all(events, now))

    async def _predict_all(self, events: Sequence[Event], now: datetime) -> list[Prediction]:
        slots = asyncio.Semaphore(self.spec.concurrency)
        return list(await asyncio.gather(*(self._call(event, now, slots) for event in events)))

    async def _call(self, event: Event, now: datetime, slots: asyncio.Semaphore) -> Prediction:
        async with slots:
            started = time.perf_counter()
            try:
                return await self._call_guarded(event, now, started)
            except Exception as exc:  # noqa: BLE001 - predict never raises, whatever breaks
                error = PredictionError(type=type(exc).__name__, message=truncate(str(exc)))
                return self._prediction(event, now, started, Attempt(error=error), attempts=0)

    async def _call_guarded(self, event: Event, now: datetime, started: float) -> Prediction:
        # The body first: an event that cannot be sent must not take the breaker's probe.
        try:
            request = self.request(event)
            body = orjson.dumps(request)
        except (TemplateError, TypeError) as exc:
            error = PredictionError(type=type(exc).__name__, message=truncate(str(exc)))
            return self._prediction(event, now, started, Attempt(error=error), attempts=0)
        if not self.breaker.allow():
            error = PredictionError(
                type="CircuitOpen", kind=ErrorKind.CIRCUIT_OPEN,
                message=f"not called: {self.url} kept failing and the circuit is open",
            )
            return self._prediction(event, now, started, Attempt(error=error), attempts=0)
        try:
            attempt, result = 1, await self._attempt(body)
            while result.retryable and attempt < self._retry.max_attempts:
                await self._sleep(delay(self._retry, attempt, result.retry_after,
                                        now=self._now, uniform=self._uniform))
                attempt, result = attempt + 1, await self._attempt(body)
        except BaseException:
            self.breaker.failed()  # a probe that broke must not leave the breaker half open
            raise
        if result.error is None:
            self.breaker.succeeded()
        else:
            self.breaker.failed()
        return self._prediction(event, now, started, result, attempts=attempt, request=request)

    async def _attempt(self, body: bytes) -> Attempt:
        assert self._client is not None
        sent = time.perf_counter()
        try:
            async with self._client.post(self.url, data=body) as response:
                ttfb = (time.perf_counter() - sent) * 1000.0
                raw = await response.read()
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutError subclasses
            message = f"no answer within {self.spec.timeout_s} s ({type(exc).__name__})"
            return failure(ErrorKind.TIMEOUT, "Timeout", message, retryable=True)
        except aiohttp.ClientError as exc:
            message = str(exc) or "connection failed"
            return failure(ErrorKind.CONNECTION, type(exc).__name__, message, retryable=True)
        return self._interpret(response, raw, ttfb)

    def _interpret(self, response: aiohttp.ClientResponse, raw: bytes, ttfb: float) -> Attempt:
        status = response.status
        if status >= 300:
            retryable = status == 429 or status >= 500
            return failure(ErrorKind.HTTP_STATUS, f"HTTP{status}",
                           f"{self.url} answered {status} {response.reason or ''}".rstrip(),
                           retryable=retryable, status=status, ttfb=ttfb, raw=raw,
                           retry_after=response.headers.get("retry-after"))
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return failure(ErrorKind.MALFORMED_RESPONSE, "NotJSON", f"response is not JSON: {exc}",
                           status=status, ttfb=ttfb, raw=raw)
        return self.read(answer, status, ttfb, raw)

    def _prediction(
        self, event: Event, now: datetime, started: float, result: Attempt, *, attempts: int,
        request: Any = None,
    ) -> Prediction:
        ok = result.error is None
        if ok and (problem := _unstorable(result.output)) is not None:
            result = dataclasses.replace(result, output=None, error=PredictionError(
                type="NotJSONSerializable", message=problem, kind=ErrorKind.NOT_JSON))
            ok = False
        confidence, abstained = self.judge(result.output) if ok else (None, False)
        return Prediction(
            event_id=event.event_id, candidate=self.name, version=self.version,
            output=result.output if ok else None, confidence=confidence, abstained=abstained,
            latency_ms=(time.perf_counter() - started) * 1000.0, error=result.error,
            predicted_at=now, status=result.status, attempts=attempts, ttfb_ms=result.ttfb_ms,
            prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            cost=result.cost, model=result.model, violations=result.violations if ok else (),
            request=request if self.keeps_request else None,
        )


def _unstorable(output: Any) -> str | None:
    """Why an answer that parsed cannot be stored (orjson reads JSON 1,024 levels deep
    but writes 254), or ``None``: it becomes the prediction's error, not the batch's."""
    try:
        orjson.dumps(output)
    except TypeError as exc:
        return truncate(f"the answer cannot be stored as JSON: {exc}")
    return None


def failure(
    kind: ErrorKind, type_: str, message: str, *, retryable: bool = False,
    status: int | None = None, ttfb: float | None = None, raw: bytes | None = None,
    retry_after: str | None = None,
) -> Attempt:
    """A failed attempt, keeping the start of the response body for debugging."""
    body = truncate(raw.decode("utf-8", "replace"), MAX_BODY) if raw is not None else None
    error = PredictionError(type=type_, message=truncate(message), kind=kind, body=body)
    return Attempt(error=error, retryable=retryable, status=status, ttfb_ms=ttfb,
                   retry_after=retry_after)


def expand(value: str, where: str) -> str:
    """``value`` with every ``${NAME}`` replaced from the environment.

    Raises:
        ConfigError: a named variable is not set.
    """

    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{where} names the environment variable {name}, which is not set")
        # Secrets mounted from files often end in a newline; a header cannot hold one.
        value = os.environ[name].strip()
        if any(ord(char) < 32 or ord(char) == 127 for char in value):
            raise ConfigError(
                f"{where}: the environment variable {name} holds a control character"
            )
        return value

    return _ENV.sub(variable, value)
