"""The HTTP candidate against a real local server (tests/http_server.py).

The first tests check the test server itself; the rest drive
:class:`HttpCandidate` through success, failure, retries, the circuit breaker
and the concurrency bound, counting on the server side what was really sent.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import structlog

from shadow.candidates.http import HttpCandidate
from shadow.config.candidates import BreakerSpec, HttpCandidateSpec, RetrySpec
from shadow.core.errors import ConfigError
from shadow.core.models import ErrorKind, Event, Prediction
from tests.http_server import Reply, Request, TestServer

OCCURRED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
FAST_RETRY = RetrySpec(max_attempts=3, backoff_s=0.01, max_backoff_s=0.05, max_retry_after_s=60.0)
NO_BREAKER = BreakerSpec(failures=10_000, cooldown_s=30.0)


def _event(i: int, **fields: Any) -> Event:
    values: dict[str, Any] = {
        "event_id": f"e{i}",
        "key": f"k{i}",
        "occurred_at": OCCURRED,
        "segment": {"tier": "pro"},
        "payload": {"subject": f"Refund {i}", "n": i},
    }
    return Event(**{**values, **fields})


def _events(n: int) -> list[Event]:
    return [_event(i) for i in range(n)]


def _spec(url: str, **options: Any) -> HttpCandidateSpec:
    values: dict[str, Any] = {
        "kind": "http",
        "url": url + "/predict",
        "name": "triage",
        "version": "v7",
        "timeout_s": 2.0,
        "retry": FAST_RETRY,
        "breaker": NO_BREAKER,
    }
    return HttpCandidateSpec(**{**values, **options})


class Waits(list[float]):
    """An async ``sleep`` that records the retry waits instead of waiting them."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)
        await asyncio.sleep(0)  # still let the other calls run, as a real wait would


def _predict(
    spec: HttpCandidateSpec, events: Sequence[Event], waits: Waits | None = None, **options: Any
) -> list[Prediction]:
    sleep = Waits() if waits is None else waits
    with HttpCandidate(spec, sleep=sleep, **options) as candidate:
        return candidate.predict(events, datetime.now(UTC))


def _event_id(request: Request) -> str:
    event_id: str = request.json()["event_id"]
    return event_id


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _ok(request: Request) -> Reply:
    echo = request.json().get("event_id")  # None for a templated body
    return Reply(body={"label": "refund", "confidence": 0.8, "echo": echo})


@pytest.fixture
def ok_server() -> Iterator[TestServer]:
    with TestServer(_ok) as server:
        yield server


# -- the test server ----------------------------------------------------------


def test_server_keeps_a_connection_alive_across_requests() -> None:
    with TestServer(lambda request: Reply(body={"got": request.json()})) as server:
        with httpx.Client() as client:
            answers = [client.post(server.url + "/x", json={"n": n}).json() for n in range(3)]
    assert answers == [{"got": {"n": n}} for n in range(3)]
    assert [r.connection for r in server.requests] == [1, 1, 1]
    assert server.requests[0].method == "POST"
    assert server.requests[0].headers["content-type"] == "application/json"


def test_server_closes_after_connection_close_and_can_drop() -> None:
    def handler(request: Request) -> Reply:
        return Reply(drop=request.path == "/drop", headers={"x-path": request.path})

    with TestServer(handler) as server:
        with httpx.Client() as client:
            first = client.get(server.url + "/a", headers={"Connection": "close"})
            client.get(server.url + "/b")
            with pytest.raises(httpx.RemoteProtocolError):
                client.get(server.url + "/drop")
    assert first.headers["connection"] == "close"
    assert first.headers["x-path"] == "/a"
    assert [r.connection for r in server.requests] == [1, 2, 2]


def test_server_serves_200_connections_at_once() -> None:
    n = 200

    async def call_all(url: str) -> list[int]:
        limits = httpx.Limits(max_connections=n + 10)
        async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
            responses = await asyncio.gather(*(client.get(f"{url}/{i}") for i in range(n)))
        return [response.status_code for response in responses]

    with TestServer(lambda request: Reply(delay_s=0.3)) as server:
        statuses = asyncio.run(call_all(server.url))
    assert statuses == [200] * n
    assert server.max_in_flight == n
    assert len({r.connection for r in server.requests}) == n


def test_server_stops_fast_with_a_request_in_progress() -> None:
    server = TestServer(lambda request: Reply(delay_s=30.0))
    with server, socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 2.0
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 1.0
        assert s.recv(100) == b""  # closed without an answer


# -- success --------------------------------------------------------------------


def test_output_is_the_response_json(ok_server: TestServer) -> None:
    events = _events(3)
    predictions = _predict(_spec(ok_server.url), events)
    assert [p.event_id for p in predictions] == ["e0", "e1", "e2"]
    for prediction in predictions:
        assert prediction.error is None
        assert prediction.output == {
            "label": "refund",
            "confidence": 0.8,
            "echo": prediction.event_id,
        }
        assert prediction.confidence == 0.8
        assert (prediction.candidate, prediction.version) == ("triage", "v7")
        assert (prediction.status, prediction.attempts) == (200, 1)
        assert prediction.latency_ms > 0
        assert prediction.ttfb_ms is not None


def test_candidate_name_defaults_to_the_url(ok_server: TestServer) -> None:
    spec = _spec(ok_server.url, name=None)
    [prediction] = _predict(spec, [_event(0)])
    assert prediction.candidate == spec.url


def test_output_path_selects_a_value_in_the_response(ok_server: TestServer) -> None:
    [prediction] = _predict(_spec(ok_server.url, output_path="label"), [_event(0)])
    assert prediction.error is None
    assert prediction.output == "refund"


def test_request_body_is_the_canonical_event(ok_server: TestServer) -> None:
    event = _event(1, routing_key="r1")
    _predict(_spec(ok_server.url), [event])
    [request] = ok_server.requests
    sent = request.json()
    assert (request.method, request.path) == ("POST", "/predict")
    assert datetime.fromisoformat(sent.pop("occurred_at")) == OCCURRED
    assert sent == {
        "event_id": "e1",
        "key": "k1",
        "segment": {"tier": "pro"},
        "payload": {"subject": "Refund 1", "n": 1},
        "routing_key": "r1",
    }


def test_headers_are_sent_with_environment_variables_expanded(
    ok_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIAGE_TOKEN", "tok-123")
    spec = _spec(ok_server.url, headers={"Authorization": "Bearer ${TRIAGE_TOKEN}", "X-Team": "t"})
    _predict(spec, [_event(0)])
    [request] = ok_server.requests
    assert request.headers["authorization"] == "Bearer tok-123"
    assert request.headers["x-team"] == "t"
    assert request.headers["content-type"].startswith("application/json")


def test_body_template_fills_values_and_text(ok_server: TestServer) -> None:
    template = {
        "text": "{{ payload.subject }}",
        "n": "{{ payload.n }}",
        "meta": {"tier": "{{ segment.tier }}", "line": "Ticket {{ key }}: {{ payload.subject }}"},
        "all": ["{{ segment }}", 3, None],
    }
    _predict(_spec(ok_server.url, body=template), [_event(4)])
    [request] = ok_server.requests
    assert request.json() == {
        "text": "Refund 4",
        "n": 4,
        "meta": {"tier": "pro", "line": "Ticket k4: Refund 4"},
        "all": [{"tier": "pro"}, 3, None],
    }


def test_a_template_naming_a_missing_path_is_an_error_not_an_exception(
    ok_server: TestServer,
) -> None:
    predictions = _predict(_spec(ok_server.url, body={"x": "{{ payload.nope }}"}), _events(2))
    assert [p.event_id for p in predictions] == ["e0", "e1"]
    assert all(p.error is not None and p.output is None for p in predictions)
    assert ok_server.requests == []


# -- failures and retries ---------------------------------------------------------


def test_a_slow_server_times_out_after_every_attempt() -> None:
    # A timeout long enough that, on a loaded machine, each attempt's request is still sent
    # and read by the server before the client gives up on its answer.
    timeout_s = 0.3
    with TestServer(lambda request: Reply(delay_s=1.5)) as server:
        predictions = _predict(_spec(server.url, timeout_s=timeout_s), _events(2))
        attempts = FAST_RETRY.max_attempts
        requests = server.wait_for_requests(2 * attempts)
    for prediction in predictions:
        assert prediction.error is not None
        assert prediction.error.kind is ErrorKind.TIMEOUT
        assert prediction.attempts == attempts
        assert prediction.status is None
        assert prediction.output is None
        # the whole call, retries included
        assert prediction.latency_ms >= attempts * timeout_s * 1000 * 0.95
    assert requests == 2 * attempts


def _flaky_plan(i: int) -> tuple[str, int]:
    """What happens to event ``i``: its failure mode and the attempts it takes."""
    if i % 7 == 0:
        return "always 500", FAST_RETRY.max_attempts
    if i % 5 == 0:
        return "drop twice", 3
    if i % 3 == 0:
        return "500 once", 2
    return "fine", 1


def test_a_flaky_server_yields_exactly_one_prediction_per_event() -> None:
    n = 40
    seen: Counter[str] = Counter()

    def handler(request: Request) -> Reply:
        event_id = _event_id(request)
        seen[event_id] += 1
        mode, _ = _flaky_plan(int(event_id[1:]))
        if mode == "always 500" or (mode == "500 once" and seen[event_id] == 1):
            return Reply(status=500, body="oops")
        if mode == "drop twice" and seen[event_id] <= 2:
            return Reply(drop=True)
        return Reply(body={"echo": event_id})

    events = _events(n)
    with TestServer(handler) as server:
        predictions = _predict(_spec(server.url, concurrency=8), events)
        per_event = Counter(_event_id(r) for r in server.requests)

    assert [p.event_id for p in predictions] == [e.event_id for e in events]
    failing = [i for i in range(n) if _flaky_plan(i)[0] == "always 500"]
    successes = [p for p in predictions if p.error is None]
    errors = [p for p in predictions if p.error is not None]
    assert len(successes) == n - len(failing)
    assert len(errors) == len(failing)
    assert len(successes) + len(errors) == n
    assert all(p.output == {"echo": p.event_id} for p in successes)
    for p in errors:
        assert p.error is not None and p.error.kind is ErrorKind.HTTP_STATUS
        assert (p.status, p.attempts) == (500, FAST_RETRY.max_attempts)
    assert {p.event_id: p.attempts for p in predictions} == {
        f"e{i}": _flaky_plan(i)[1] for i in range(n)
    }
    assert per_event == {p.event_id: p.attempts for p in predictions}
    assert len(server.requests) == sum(_flaky_plan(i)[1] for i in range(n))


def test_a_dropped_connection_is_a_connection_error_after_every_attempt() -> None:
    with TestServer(lambda request: Reply(drop=True)) as server:
        [prediction] = _predict(_spec(server.url), [_event(0)])
        requests = len(server.requests)
    assert prediction.error is not None
    assert prediction.error.kind is ErrorKind.CONNECTION
    assert prediction.attempts == FAST_RETRY.max_attempts
    assert requests == FAST_RETRY.max_attempts


def test_connection_refused_is_a_connection_error_after_every_attempt() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    predictions = _predict(_spec(url), _events(2))
    for prediction in predictions:
        assert prediction.error is not None
        assert prediction.error.kind is ErrorKind.CONNECTION
        assert prediction.attempts == FAST_RETRY.max_attempts
        assert prediction.status is None


def _highest(low: float, high: float) -> float:
    return high


def test_backoff_waits_double_up_to_their_cap() -> None:
    retry = RetrySpec(max_attempts=4, backoff_s=0.05, max_backoff_s=0.08)
    waits = Waits()
    with TestServer(lambda request: Reply(status=500)) as server:
        _predict(_spec(server.url, retry=retry), _events(1), waits, uniform=_highest)
        assert len(server.requests) == 4
    # The jitter's upper bound: 0.05, then 0.10 capped at 0.08, twice.
    assert waits == pytest.approx([0.05, 0.08, 0.08])


def _fails_first(status: int, headers: dict[str, str]) -> tuple[TestServer, Counter[str]]:
    seen: Counter[str] = Counter()

    def handler(request: Request) -> Reply:
        event_id = _event_id(request)
        seen[event_id] += 1
        if seen[event_id] == 1:
            return Reply(status=status, body="slow down", headers=headers)
        return Reply(body={"label": "refund"})

    return TestServer(handler), seen


def test_429_with_retry_after_waits_that_long_then_succeeds() -> None:
    server, _ = _fails_first(429, {"Retry-After": "1"})
    waits = Waits()
    with server:
        [prediction] = _predict(_spec(server.url), [_event(0)], waits)
        assert len(server.requests) == 2
    assert waits == [1.0]
    assert prediction.error is None
    assert prediction.output == {"label": "refund"}
    assert (prediction.status, prediction.attempts) == (200, 2)


def test_retry_after_as_an_http_date_waits_until_then() -> None:
    server, _ = _fails_first(503, {"Retry-After": "Wed, 01 May 2024 12:00:07 GMT"})
    waits = Waits()
    with server:
        [prediction] = _predict(_spec(server.url), [_event(0)], waits,
                                now=lambda: datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    assert waits == [7.0]
    assert (prediction.error, prediction.attempts) == (None, 2)


def test_503_retry_after_is_capped_at_max_retry_after_s() -> None:
    server, _ = _fails_first(503, {"Retry-After": "30"})
    retry = RetrySpec(max_attempts=3, backoff_s=0.01, max_retry_after_s=0.3)
    waits = Waits()
    with server:
        [prediction] = _predict(_spec(server.url, retry=retry), [_event(0)], waits)
    assert waits == [0.3]
    assert (prediction.error, prediction.attempts) == (None, 2)


def test_404_is_not_retried() -> None:
    with TestServer(lambda request: Reply(status=404, body="no such model")) as server:
        [prediction] = _predict(_spec(server.url), [_event(0)])
        requests = len(server.requests)
    assert prediction.error is not None
    assert prediction.error.kind is ErrorKind.HTTP_STATUS
    assert (prediction.status, prediction.attempts) == (404, 1)
    assert prediction.output is None
    assert requests == 1


def test_a_response_that_is_not_json_is_malformed_and_kept() -> None:
    raw = "<html>" + "x" * 20_000
    with TestServer(lambda request: Reply(body=raw)) as server:
        [prediction] = _predict(_spec(server.url), [_event(0)])
        requests = len(server.requests)
    error = prediction.error
    assert error is not None
    assert error.kind is ErrorKind.MALFORMED_RESPONSE
    assert error.body is not None and error.body.startswith("<html>xxx")
    assert raw.startswith(error.body.removesuffix("…"))
    assert len(error.body) < len(raw)
    assert (prediction.status, prediction.attempts) == (200, 1)
    assert requests == 1


def test_a_missing_output_path_is_malformed(ok_server: TestServer) -> None:
    [prediction] = _predict(_spec(ok_server.url, output_path="result.label"), [_event(0)])
    assert prediction.error is not None
    assert prediction.error.kind is ErrorKind.MALFORMED_RESPONSE
    assert prediction.output is None
    assert prediction.attempts == 1
    assert len(ok_server.requests) == 1


# -- the circuit breaker -------------------------------------------------------------


class _Switch:
    """A server handler that fails with 500 until it is told to recover."""

    def __init__(self) -> None:
        self.healthy = False

    def __call__(self, request: Request) -> Reply:
        return Reply(body={"ok": True}) if self.healthy else Reply(status=500, body="down")


def _breaker_spec(url: str) -> HttpCandidateSpec:
    return _spec(
        url,
        concurrency=1,
        retry=RetrySpec(max_attempts=1, backoff_s=0.01),
        breaker=BreakerSpec(failures=3, cooldown_s=0.5),
    )


def _kinds(predictions: Sequence[Prediction]) -> list[ErrorKind | None]:
    return [p.error.kind if p.error is not None else None for p in predictions]


def test_the_breaker_opens_after_consecutive_failures() -> None:
    with TestServer(_Switch()) as server:
        predictions = _predict(_breaker_spec(server.url), _events(10))
        requests = len(server.requests)
    assert requests == 3
    assert _kinds(predictions) == [ErrorKind.HTTP_STATUS] * 3 + [ErrorKind.CIRCUIT_OPEN] * 7
    assert [p.event_id for p in predictions] == [f"e{i}" for i in range(10)]


def test_after_the_cooldown_a_successful_probe_closes_the_breaker() -> None:
    switch = _Switch()
    with TestServer(switch) as server, HttpCandidate.from_spec(_breaker_spec(server.url)) as c:
        c.predict(_events(10), datetime.now(UTC))
        switch.healthy = True
        time.sleep(0.6)
        predictions = c.predict(_events(10), datetime.now(UTC))
        requests = len(server.requests)
    assert _kinds(predictions) == [None] * 10
    assert requests == 3 + 10


def test_after_the_cooldown_a_failed_probe_reopens_the_breaker() -> None:
    with TestServer(_Switch()) as server, HttpCandidate.from_spec(_breaker_spec(server.url)) as c:
        c.predict(_events(10), datetime.now(UTC))
        time.sleep(0.6)
        predictions = c.predict(_events(10), datetime.now(UTC))
        requests = len(server.requests)
    assert _kinds(predictions) == [ErrorKind.HTTP_STATUS] + [ErrorKind.CIRCUIT_OPEN] * 9
    assert requests == 3 + 1


# -- concurrency, secrets, configuration ----------------------------------------------


def test_no_more_than_concurrency_requests_are_in_flight() -> None:
    with TestServer(lambda request: Reply(delay_s=0.2, body={"ok": True})) as server:
        predictions = _predict(_spec(server.url, concurrency=8), _events(40))
        requests = len(server.requests)
    assert all(p.error is None for p in predictions)
    assert requests == 40
    assert server.max_in_flight == 8


def test_the_secret_appears_in_no_prediction_and_no_log(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-Zq81"
    monkeypatch.setenv("TRIAGE_TOKEN", secret)
    replies = {
        "e0": Reply(body={"label": "refund"}),
        "e1": Reply(status=401, body="bad token"),
        "e2": Reply(body="not json"),
        "e3": Reply(status=500, body="down"),
        "e4": Reply(drop=True),
    }
    headers = {"Authorization": "Bearer ${TRIAGE_TOKEN}"}
    with TestServer(lambda request: replies[_event_id(request)]) as server:
        with structlog.testing.capture_logs() as logs:
            predictions = _predict(_spec(server.url, headers=headers), _events(5))
            predictions += _predict(
                _spec(f"http://127.0.0.1:{_free_port()}", headers=headers), [_event(9)]
            )
        sent = {r.headers["authorization"] for r in server.requests}
    assert sent == {f"Bearer {secret}"}
    assert secret not in repr(predictions)
    assert secret not in repr(logs)


def test_a_missing_environment_variable_fails_at_open(
    ok_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRIAGE_TOKEN_MISSING", raising=False)
    spec = _spec(ok_server.url, headers={"Authorization": "Bearer ${TRIAGE_TOKEN_MISSING}"})
    candidate = HttpCandidate.from_spec(spec)  # no I/O, no check yet
    with pytest.raises(ConfigError, match="TRIAGE_TOKEN_MISSING"):
        candidate.open()
    candidate.close()
    assert ok_server.requests == []


def test_a_probe_that_cannot_be_sent_does_not_wedge_the_breaker() -> None:
    switch = _Switch()
    with TestServer(switch) as server:
        spec = _spec(
            server.url,
            body={"subject": "{{ payload.subject }}"},
            concurrency=1,
            retry=RetrySpec(max_attempts=1, backoff_s=0.01),
            breaker=BreakerSpec(failures=3, cooldown_s=0.2),
        )
        unsendable = _event(99, payload={})
        with HttpCandidate.from_spec(spec) as candidate:
            candidate.predict(_events(4), datetime.now(UTC))  # opens the circuit
            switch.healthy = True
            time.sleep(0.3)
            candidate.predict([unsendable, *_events(3)], datetime.now(UTC))
            time.sleep(0.3)
            predictions = candidate.predict(_events(3), datetime.now(UTC))
    assert _kinds(predictions) == [None] * 3


def test_a_secret_ending_in_a_newline_is_sent_without_it(
    ok_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A secret mounted from a file often ends with a newline.
    monkeypatch.setenv("TRIAGE_TOKEN", "tok-123\n")
    spec = _spec(ok_server.url, headers={"Authorization": "Bearer ${TRIAGE_TOKEN}"})

    with HttpCandidate.from_spec(spec) as candidate:
        [prediction] = candidate.predict([_event(0)], datetime.now(UTC))

    assert prediction.error is None
    assert ok_server.requests[0].headers["authorization"] == "Bearer tok-123"


def test_a_secret_with_a_control_character_inside_is_refused_at_open(
    ok_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIAGE_TOKEN", "tok\r\nX-Injected: yes")
    spec = _spec(ok_server.url, headers={"Authorization": "Bearer ${TRIAGE_TOKEN}"})
    candidate = HttpCandidate.from_spec(spec)

    with pytest.raises(ConfigError, match="TRIAGE_TOKEN"):
        candidate.open()
    candidate.close()
    assert ok_server.requests == []


def test_an_answer_nested_too_deep_to_store_is_an_error_of_its_own() -> None:
    # orjson reads 300 levels, writes at most 254: the answer parses and cannot be kept.
    deep: dict[str, Any] = {"label": "refund"}
    for _ in range(300):
        deep = {"deeper": deep}
    with TestServer(lambda request: Reply(body=deep if _event_id(request) == "e0"
                                          else {"label": "refund"})) as server:
        first, second = _predict(_spec(server.url), _events(2))
    assert first.error is not None and first.error.kind is ErrorKind.NOT_JSON
    assert first.output is None and "cannot be stored as JSON" in first.error.message
    assert second.error is None and second.output == {"label": "refund"}
