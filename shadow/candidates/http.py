"""The HTTP candidate: a JSON endpoint of the team's own, called in shadow mode.

Each event is POSTed (as canonical JSON, or shaped by the ``body`` template)
and the response JSON, or the value at ``output_path`` in it, is the output.
Calls run concurrently on one event loop (aiohttp: httpx's async client
measured 74 requests/s at 64 in flight here, aiohttp 576), at most
``concurrency`` in flight,
each with a timeout; connection errors, timeouts, 429 and 5xx are retried with
exponential backoff and jitter (a ``Retry-After`` is honoured), other 4xx are
not, and a circuit breaker stops calling an endpoint that keeps failing. Every
event ends as exactly one prediction: an output or an error of a named kind.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import orjson

from shadow.candidates.base import MAX_BODY, Candidate, confidence_of, truncate
from shadow.candidates.resilience import CircuitBreaker, backoff, jitter, retry_after
from shadow.config import HttpCandidateSpec
from shadow.errors import ConfigError, ShadowError
from shadow.models import ErrorKind, Event, Prediction, PredictionError, utc_now
from shadow.paths import MISSING, get_path
from shadow.templates import TemplateError, render

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class _Attempt:
    """What one request came to."""

    output: Any = None
    error: PredictionError | None = None
    retryable: bool = False
    status: int | None = None
    ttfb_ms: float | None = None
    wait_s: float | None = None
    """A wait the server asked for (Retry-After)."""


class HttpCandidate(Candidate):
    """A JSON endpoint; see the module docstring for the behaviour under failure."""

    def __init__(
        self,
        spec: HttpCandidateSpec,
        *,
        clock: Callable[[], float] = time.monotonic,
        uniform: Callable[[float, float], float] | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name or spec.url
        self.version = spec.version
        self.batch_size = max(spec.concurrency * 4, 64)
        self.breaker = CircuitBreaker(spec.breaker, clock=clock)
        self._uniform = uniform or jitter()
        self._runner: asyncio.Runner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {}

    @classmethod
    def from_spec(cls, spec: HttpCandidateSpec) -> HttpCandidate:
        return cls(spec)

    def open(self) -> None:
        """Resolve header secrets from the environment and open the connection pool.

        Raises:
            ConfigError: a header names an environment variable that is not set.
        """
        if self._runner is not None:
            raise ShadowError(f"candidate {self.name} is already open")
        self._headers = {"content-type": "application/json", **{
            name: _expand(value, name) for name, value in self.spec.headers.items()
        }}
        self._runner = asyncio.Runner()
        self._client = self._runner.run(self._new_client())

    async def _new_client(self) -> aiohttp.ClientSession:
        # Created inside the runner's loop, which its connection pool belongs to.
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
            if not self.breaker.allow():
                error = PredictionError(
                    type="CircuitOpen", kind=ErrorKind.CIRCUIT_OPEN,
                    message=f"not called: {self.spec.url} kept failing and the circuit is open",
                )
                return self._prediction(event, now, started, _Attempt(error=error), attempts=0)
            try:
                body = orjson.dumps(self._body(event))
            except (TemplateError, TypeError) as exc:
                error = PredictionError(type=type(exc).__name__, message=truncate(str(exc)))
                return self._prediction(event, now, started, _Attempt(error=error), attempts=0)
            attempt, result = 1, await self._attempt(body)
            while result.retryable and attempt < self.spec.retry.max_attempts:
                wait = result.wait_s
                if wait is None:
                    wait = backoff(self.spec.retry, attempt, self._uniform)
                await asyncio.sleep(wait)
                attempt, result = attempt + 1, await self._attempt(body)
            if result.error is None:
                self.breaker.succeeded()
            else:
                self.breaker.failed()
            return self._prediction(event, now, started, result, attempts=attempt)

    def _body(self, event: Event) -> Any:
        canonical = event.model_dump(mode="json")
        canonical["routing_key"] = event.route
        if self.spec.body is None:
            return canonical
        return render(self.spec.body, canonical)

    async def _attempt(self, body: bytes) -> _Attempt:
        assert self._client is not None
        sent = time.perf_counter()
        try:
            async with self._client.post(self.spec.url, data=body) as response:
                ttfb = (time.perf_counter() - sent) * 1000.0
                raw = await response.read()
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutError subclasses
            message = f"no answer within {self.spec.timeout_s} s ({type(exc).__name__})"
            return _failure(ErrorKind.TIMEOUT, "Timeout", message, retryable=True)
        except aiohttp.ClientError as exc:
            message = str(exc) or "connection failed"
            return _failure(ErrorKind.CONNECTION, type(exc).__name__, message, retryable=True)
        return self._interpret(response, raw, ttfb)

    def _interpret(self, response: aiohttp.ClientResponse, raw: bytes, ttfb: float) -> _Attempt:
        status = response.status
        if status >= 300:
            retryable = status == 429 or status >= 500
            wait = retry_after(response.headers.get("retry-after"), self.spec.retry, utc_now)
            return _failure(ErrorKind.HTTP_STATUS, f"HTTP{status}",
                            f"{self.spec.url} answered {status} {response.reason or ''}".rstrip(),
                            retryable=retryable, status=status, ttfb=ttfb, raw=raw,
                            wait=wait if retryable else None)
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _failure(ErrorKind.MALFORMED_RESPONSE, "NotJSON", f"response is not JSON: {exc}",
                            status=status, ttfb=ttfb, raw=raw)
        output = answer if self.spec.output_path is None else get_path(answer,
                                                                        self.spec.output_path)
        if output is MISSING:
            return _failure(ErrorKind.MALFORMED_RESPONSE, "NoOutput",
                            f"response has no value at {self.spec.output_path!r}",
                            status=status, ttfb=ttfb, raw=raw)
        return _Attempt(output=output, status=status, ttfb_ms=ttfb)

    def _prediction(
        self, event: Event, now: datetime, started: float, result: _Attempt, *, attempts: int
    ) -> Prediction:
        return Prediction(
            event_id=event.event_id, candidate=self.name, version=self.version,
            output=result.output if result.error is None else None,
            confidence=confidence_of(result.output) if result.error is None else None,
            latency_ms=(time.perf_counter() - started) * 1000.0, error=result.error,
            predicted_at=now, status=result.status, attempts=attempts, ttfb_ms=result.ttfb_ms,
        )


def _failure(
    kind: ErrorKind, type_: str, message: str, *, retryable: bool = False,
    status: int | None = None, ttfb: float | None = None, raw: bytes | None = None,
    wait: float | None = None,
) -> _Attempt:
    body = truncate(raw.decode("utf-8", "replace"), MAX_BODY) if raw is not None else None
    error = PredictionError(type=type_, message=truncate(message), kind=kind, body=body)
    return _Attempt(error=error, retryable=retryable, status=status, ttfb_ms=ttfb, wait_s=wait)


def _expand(value: str, header: str) -> str:
    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(
                f"header {header!r} names the environment variable {name}, which is not set"
            )
        return os.environ[name]

    return _ENV.sub(variable, value)
