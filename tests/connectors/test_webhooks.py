"""Webhook endpoints over real HTTP, with a real DuckDB store behind them.

A small :class:`PollingThread` plays the runner's part (poll, write one
transaction, then commit), so every test sees what a sender sees: the status,
and what was durably stored. Requests are signed with the vendors' formulas in
``tests.connectors.test_signatures``, never with the code under test.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest
import structlog
import yaml

from connectors.mapping import EventMapper, OutcomeMapper, map_records
from connectors.specs import EventMapping, OutcomeMapping
from connectors.webhook_server import WebhookServer
from connectors.webhooks import METADATA_KEY, WebhookSource
from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.core.errors import SourceError
from shadow.core.models import RecordKind
from shadow.pipeline.runner import Pipeline
from shadow.store.database import Store
from shadow.store.writes import StoredEvent, WriteBatch
from tests.connectors.test_signatures import (
    NOW,
    SCHEMES,
    SECRET,
    TIMESTAMPED,
    secret_for,
    sign,
    sign_github,
    sign_hubspot,
    sign_zendesk,
)
from tests.waiting import wait_until

PATH = "/hooks/test"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SAMPLES = CONFIGS / "samples"


def event(n: int) -> bytes:
    return json.dumps({"event_id": f"e{n}", "key": f"k{n}", "occurred_at": "2024-05-08T09:00:00Z",
                       "payload": {"subject": f"ticket {n}"}}).encode()


def endpoint(scheme: str, *, path: str = PATH, **options: Any) -> WebhookSource:
    options.setdefault("now", lambda: NOW)
    return WebhookSource(name=f"{scheme}-hooks", path=path, scheme=scheme,
                         secret=None if scheme == "none" else secret_for(scheme),
                         poll_timeout_s=0.02, **options)


class PollingThread:
    """Plays the runner's part: poll each source, write its batch in one transaction, commit.

    ``commit_delay_s`` holds each batch back before it is written, like a slow
    candidate would. ``committed`` lists (monotonic time, position) of every
    commit, taken after the store's transaction and before ``source.commit``.
    """

    def __init__(self, db: Path, sources: Sequence[WebhookSource], *,
                 events: EventMapping | None = None, outcomes: OutcomeMapping | None = None,
                 commit_delay_s: float = 0.0) -> None:
        self.store = Store(db)
        self.sources = list(sources)
        self.event_mapper = EventMapper(events)
        self.outcome_mapper = OutcomeMapper(outcomes)
        self.commit_delay_s = commit_delay_s
        self.committed: list[tuple[float, str]] = []
        self.handed = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-pipeline", daemon=True)

    def __enter__(self) -> PollingThread:
        self.store.open()
        for source in self.sources:
            source.open()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for source in self.sources:
            source.close()
        self.store.close()
        if self.errors and exc is None:
            raise self.errors[0]

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.store.db.execute(sql).fetchall()

    def events(self) -> list[tuple[Any, ...]]:
        return self.rows("SELECT event_id, source, position FROM events ORDER BY position")

    def dead_letters(self) -> list[tuple[Any, ...]]:
        return self.rows("SELECT source, position, reason, raw FROM dead_letters ORDER BY position")

    def stored(self) -> int:
        return sum(self.store_counts().values())

    def store_counts(self) -> dict[str, int]:
        with self._lock:
            return {t: self.store.count(t) for t in ("events", "outcomes", "dead_letters")}

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for source in self.sources:
                    self._step(source)
        except BaseException as exc:  # noqa: BLE001 - surfaced by __exit__
            self.errors.append(exc)

    def _step(self, source: WebhookSource) -> None:
        records = source.poll(100)
        if not records:
            return
        self.handed += len(records)
        self._stop.wait(self.commit_delay_s)
        with self._lock:
            now = datetime.now(UTC)
            if source.kind is RecordKind.EVENT:
                mapped, dead = map_records(records, self.event_mapper, RecordKind.EVENT, now)
                known = self.store.stored_positions([e.event_id for e, _ in mapped])
                fresh = {e.event_id: StoredEvent(e, r.source, r.position)
                         for e, r in reversed(mapped) if e.event_id not in known}
                batch = WriteBatch(events=list(fresh.values()), dead_letters=dead)
            else:
                mapped_o, dead = map_records(records, self.outcome_mapper, RecordKind.OUTCOME,
                                             now)
                batch = WriteBatch(outcomes=[(o, r.source, r.position) for o, r in mapped_o],
                                   dead_letters=dead)
            self.store.write(batch)
            self.committed.append((time.monotonic(), records[-1].position))
        source.commit(records[-1].position)


@contextmanager
def running(tmp_path: Path, *sources: WebhookSource, commit_delay_s: float = 0.0,
            public_url: str | None = None, events: EventMapping | None = None,
            outcomes: OutcomeMapping | None = None
            ) -> Iterator[tuple[WebhookServer, PollingThread]]:
    with PollingThread(tmp_path / "store.duckdb", sources, commit_delay_s=commit_delay_s,
                       events=events, outcomes=outcomes) as pipeline, \
            WebhookServer(sources=list(sources), public_url=public_url) as server:
        yield server, pipeline


def post(server: WebhookServer, body: bytes | Iterator[bytes], headers: dict[str, str], *,
         path: str = PATH) -> httpx.Response:
    return httpx.post(server.url + path, content=body, headers=headers, timeout=10)


def signed(scheme: str, server: WebhookServer, body: bytes, *, at: datetime = NOW,
           delivery: str = "d-1", secret: str | None = None, path: str = PATH) -> dict[str, str]:
    return sign(scheme, secret or secret_for(scheme), body, at, url=server.url + path,
                delivery=delivery)


def queued(source: WebhookSource, n: int) -> None:
    """Until ``n`` deliveries wait at ``source`` for the pipeline to take them."""
    wait_until(lambda: source.queued, accept=lambda q: q == n, timeout_s=5, interval_s=0.01,
               what=f"{n} deliveries queued at {source.name}")


# -- every scheme: the sender's view ---------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_signed_delivery_is_answered_200_once_stored(tmp_path: Path, scheme: str) -> None:
    with running(tmp_path, endpoint(scheme)) as (server, pipeline):
        response = post(server, event(1), signed(scheme, server, event(1)))

        assert response.status_code == 200
        assert response.json() == {"status": "stored", "records": 1}
        ((event_id, source, position),) = pipeline.events()
    assert (event_id, source) == ("e1", f"{scheme}-hooks")
    # HubSpot sends no delivery id: the body's digest stands in for one.
    by_body = "sha256:" + hashlib.sha256(event(1)).hexdigest()[:32]
    assert position == f"delivery {by_body if scheme == 'hubspot_v3' else 'd-1'}"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_signature_made_with_another_secret_gets_401_and_nothing_is_stored(
    tmp_path: Path, scheme: str
) -> None:
    wrong = "whsec_d3Jvbmcgd3Jvbmcgd3Jvbmc=" if scheme == "standard" else "wrong secret"
    with running(tmp_path, endpoint(scheme)) as (server, pipeline):
        response = post(server, event(1), signed(scheme, server, event(1), secret=wrong))

        assert response.status_code == 401
        assert response.json()["status"] == "unauthorized"
        assert (pipeline.handed, pipeline.stored()) == (0, 0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_body_changed_after_signing_gets_401_and_nothing_is_stored(
    tmp_path: Path, scheme: str
) -> None:
    with running(tmp_path, endpoint(scheme)) as (server, pipeline):
        response = post(server, event(2), signed(scheme, server, event(1)))

        assert response.status_code == 401
        assert (pipeline.handed, pipeline.stored()) == (0, 0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_missing_signature_gets_401_and_nothing_is_stored(tmp_path: Path, scheme: str) -> None:
    with running(tmp_path, endpoint(scheme)) as (server, pipeline):
        headers = {name: value for name, value in signed(scheme, server, event(1)).items()
                   if "signature" not in name.lower()}

        unsigned = post(server, event(1), headers)
        bare = post(server, event(1), {"content-type": "application/json"})

        assert (unsigned.status_code, bare.status_code) == (401, 401)
        assert unsigned.json()["reason"].startswith("missing header")
        assert (pipeline.handed, pipeline.stored()) == (0, 0)


@pytest.mark.parametrize("scheme", TIMESTAMPED)
def test_an_expired_signature_gets_401_and_nothing_is_stored(tmp_path: Path, scheme: str) -> None:
    with running(tmp_path, endpoint(scheme)) as (server, pipeline):
        old = signed(scheme, server, event(1), at=NOW - timedelta(minutes=6))

        response = post(server, event(1), old)

        assert response.status_code == 401
        assert "old" in response.json()["reason"]
        assert (pipeline.handed, pipeline.stored()) == (0, 0)


@pytest.mark.parametrize("scheme", TIMESTAMPED)
def test_a_signature_dated_beyond_the_tolerance_ahead_gets_401(tmp_path: Path, scheme: str) -> None:
    with running(tmp_path, endpoint(scheme, tolerance_s=60)) as (server, pipeline):
        ahead = signed(scheme, server, event(1), at=NOW + timedelta(seconds=90))

        response = post(server, event(1), ahead)

        assert response.status_code == 401
        assert "future" in response.json()["reason"]
        assert pipeline.stored() == 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_replayed_delivery_is_acknowledged_as_duplicate_and_stored_once(
    tmp_path: Path, scheme: str
) -> None:
    with running(tmp_path, endpoint(scheme)) as (server, pipeline):
        headers = signed(scheme, server, event(1))

        first = post(server, event(1), headers)
        again = post(server, event(1), headers)

        assert (first.status_code, again.status_code) == (200, 200)
        assert (first.json()["status"], again.json()["status"]) == ("stored", "duplicate")
        assert pipeline.handed == 1
        assert [row[0] for row in pipeline.events()] == ["e1"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_oversized_body_gets_413_and_nothing_is_stored(tmp_path: Path, scheme: str) -> None:
    big = json.dumps({"event_id": "e1", "key": "k1", "occurred_at": "2024-05-08T09:00:00Z",
                      "payload": {"text": "x" * 2000}}).encode()
    with running(tmp_path, endpoint(scheme, max_body_bytes=1024)) as (server, pipeline):
        response = post(server, big, signed(scheme, server, big))

        assert response.status_code == 413
        assert response.json()["status"] == "too_large"
        assert (pipeline.handed, pipeline.stored()) == (0, 0)


def test_a_chunked_body_is_read_no_further_than_the_limit(tmp_path: Path) -> None:
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            sent.append(1)
            yield b" " * 1024

    with running(tmp_path, endpoint("github", max_body_bytes=4096)) as (server, pipeline):
        body = b" " * 65536
        response = post(server, chunks(), sign_github(SECRET, body))

        assert response.status_code == 413
        assert pipeline.stored() == 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_malformed_json_gets_400_once_its_dead_letter_is_stored(
    tmp_path: Path, scheme: str
) -> None:
    broken = b'{"event_id": "e1", "key": '
    with running(tmp_path, endpoint(scheme)) as (server, pipeline):
        response = post(server, broken, signed(scheme, server, broken))

        assert response.status_code == 400
        assert response.json()["status"] == "rejected"
        assert response.json()["reason"].startswith("not JSON")
        ((source, position, reason, raw),) = pipeline.dead_letters()
    assert source == f"{scheme}-hooks" and position.startswith("delivery ")
    assert reason.startswith("not JSON") and raw == broken.decode()


def test_a_json_body_that_is_no_object_is_a_dead_letter_answered_400(tmp_path: Path) -> None:
    with running(tmp_path, endpoint("github")) as (server, pipeline):
        response = post(server, b"42", sign_github(SECRET, b"42"))

        assert response.status_code == 400
        ((_, _, reason, raw),) = pipeline.dead_letters()
    assert reason == "expected a JSON object or an array of objects, got int" and raw == "42"


def test_a_replayed_malformed_delivery_is_answered_400_again_and_kept_once(tmp_path: Path) -> None:
    with running(tmp_path, endpoint("github")) as (server, pipeline):
        headers = sign_github(SECRET, b"{oops", delivery="bad-1")
        statuses = [post(server, b"{oops", headers).status_code for _ in range(2)]

        assert statuses == [400, 400]
        assert pipeline.handed == 1 and len(pipeline.dead_letters()) == 1


def test_a_record_that_does_not_fit_the_mapping_is_stored_as_a_dead_letter_and_acked(
    tmp_path: Path,
) -> None:
    body = b'{"event_id": "e1"}'
    with running(tmp_path, endpoint("github")) as (server, pipeline):
        response = post(server, body, sign_github(SECRET, body))

        assert response.json() == {"status": "stored", "records": 1}
        ((_, _, reason, _),) = pipeline.dead_letters()
    assert "missing field 'key'" in reason


# -- acknowledgement only after the store commits -----------------------------------------


def test_a_delivery_is_not_answered_before_the_store_has_committed_it(tmp_path: Path) -> None:
    with running(tmp_path, endpoint("github"), commit_delay_s=0.5) as (server, pipeline):
        started = time.monotonic()
        response = post(server, event(1), sign_github(SECRET, event(1)))
        answered = time.monotonic()

        assert response.status_code == 200
        ((committed_at, position),) = pipeline.committed
    assert position == "delivery 72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert started + 0.5 <= committed_at <= answered


def test_a_delivery_not_stored_in_time_gets_503_and_its_retry_the_ack(tmp_path: Path) -> None:
    source = endpoint("github", ack_timeout_s=0.3)
    with WebhookServer(sources=[source]) as server:
        headers = sign_github(SECRET, event(1))
        late = post(server, event(1), headers)  # nothing polls yet: the pipeline is down

        assert late.status_code == 503
        assert late.headers["retry-after"] == "5"
        with PollingThread(tmp_path / "store.duckdb", [source]) as pipeline:
            retry = post(server, event(1), headers)

            assert (retry.status_code, retry.json()) == (200, {"status": "duplicate"})
            assert pipeline.handed == 1 and len(pipeline.events()) == 1


def test_the_same_delivery_twice_at_once_is_stored_once_and_both_acked(tmp_path: Path) -> None:
    with running(tmp_path, endpoint("zendesk"), commit_delay_s=0.3) as (server, pipeline):
        headers = sign_zendesk(SECRET, event(1), NOW, invocation="8350205582")
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: post(server, event(1), headers), range(2)))

        assert sorted(a.json()["status"] for a in answers) == ["duplicate", "stored"]
        assert pipeline.handed == 1 and len(pipeline.events()) == 1


def test_a_batch_commit_acknowledges_every_delivery_up_to_its_position(tmp_path: Path) -> None:
    source = endpoint("github")
    with WebhookServer(sources=[source]) as server, ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(post, server, event(i), sign_github(SECRET, event(i),
                                                                    delivery=f"d-{i}"))
                   for i in range(3)]
        queued(source, 3)
        with PollingThread(tmp_path / "store.duckdb", [source]) as pipeline:
            answers = [future.result() for future in futures]

            assert [a.status_code for a in answers] == [200, 200, 200]
            assert len(pipeline.committed) == 1 and len(pipeline.events()) == 3


# -- intake and lifecycle ---------------------------------------------------------------------


def test_stop_intake_answers_503_while_a_waiting_request_still_gets_its_ack(
    tmp_path: Path,
) -> None:
    with running(tmp_path, endpoint("github"), commit_delay_s=0.5) as (server, pipeline), \
            ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(post, server, event(1), sign_github(SECRET, event(1)))
        wait_until(lambda: pipeline.handed, accept=lambda n: n == 1, timeout_s=5,
                   interval_s=0.01, what="the delivery handed to the pipeline")

        server.stop_intake()
        refused = post(server, event(2), sign_github(SECRET, event(2), delivery="d-2"))

        assert refused.status_code == 503
        assert waiting.result().json() == {"status": "stored", "records": 1}
        assert [row[0] for row in pipeline.events()] == ["e1"]


def test_closing_the_source_answers_503_to_requests_still_waiting(tmp_path: Path) -> None:
    source = endpoint("github", ack_timeout_s=5.0)
    with WebhookServer(sources=[source]) as server, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(post, server, event(1), sign_github(SECRET, event(1)))
        queued(source, 1)

        source.close()

        assert waiting.result().status_code == 503
        assert post(server, event(2), sign_github(SECRET, event(2))).status_code == 503


def test_a_replay_over_webhooks_ends_by_itself_once_intake_stops(tmp_path: Path) -> None:
    source = endpoint("standard")
    candidate = CallableCandidate(lambda e: "billing", name="labeller")
    outcome: dict[str, Any] = {}
    with Store(tmp_path / "store.duckdb") as store, WebhookServer(sources=[source]) as server:
        replay = Pipeline(store, candidate, build_comparator(ExactSpec()), batch_size=100)

        def run() -> None:
            try:
                outcome["summary"] = replay.run([source])
            except BaseException as exc:  # noqa: BLE001 - raised by the test's thread
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        statuses = [post(server, event(i), signed("standard", server, event(i),
                                                  delivery=f"msg_{i}")).status_code
                    for i in range(3)]
        server.stop_intake()
        thread.join(timeout=10)

        assert not thread.is_alive() and "error" not in outcome
        assert statuses == [200, 200, 200]
        summary = outcome["summary"]
        assert (summary.events_stored, summary.predictions) == (3, 3)
        assert source.exhausted


def test_unknown_paths_get_404_and_other_methods_405(tmp_path: Path) -> None:
    with running(tmp_path, endpoint("none")) as (server, pipeline):
        missing = post(server, event(1), {}, path="/hooks/elsewhere")
        got = httpx.get(server.url + PATH)

        assert missing.status_code == 404
        assert (got.status_code, got.headers["allow"]) == (405, "POST")
        assert pipeline.stored() == 0


def test_scheme_none_stores_unsigned_deliveries(tmp_path: Path) -> None:
    with running(tmp_path, endpoint("none")) as (server, pipeline):
        response = post(server, event(1), {"content-type": "application/json"})

        assert response.json() == {"status": "stored", "records": 1}
        assert len(pipeline.events()) == 1


def test_one_server_routes_each_path_to_its_own_source(tmp_path: Path) -> None:
    tickets = endpoint("zendesk", path="/hooks/zendesk/tickets")
    pushes = endpoint("github", path="/hooks/github")
    with running(tmp_path, tickets, pushes) as (server, pipeline):
        zendesk = post(server, event(1), sign_zendesk(SECRET, event(1), NOW),
                       path="/hooks/zendesk/tickets")
        github_on_zendesk = post(server, event(2), sign_github(SECRET, event(2)),
                                 path="/hooks/zendesk/tickets")

        assert (zendesk.status_code, github_on_zendesk.status_code) == (200, 401)
        assert [row[:2] for row in pipeline.events()] == [("e1", "zendesk-hooks")]


def test_a_github_redelivery_after_the_replay_window_is_stored_once_by_the_store(
    tmp_path: Path,
) -> None:
    clock = [NOW]
    with running(tmp_path, endpoint("github", now=lambda: clock[0])) as (server, pipeline):
        headers = sign_github(SECRET, event(1))
        first = post(server, event(1), headers)
        clock[0] = NOW + timedelta(minutes=11)  # past two tolerances of 5 minutes
        later = post(server, event(1), headers)

        assert (first.json()["status"], later.json()["status"]) == ("stored", "stored")
        assert pipeline.handed == 2 and len(pipeline.events()) == 1


def test_refusals_are_logged_with_their_reason_and_never_the_secret(tmp_path: Path) -> None:
    with running(tmp_path, endpoint("zendesk")) as (server, _), \
            structlog.testing.capture_logs() as logs:
        post(server, event(1), sign_zendesk("not the secret", event(1), NOW))

    (refused,) = [entry for entry in logs if entry["event"].startswith("webhook delivery refused")]
    assert refused["log_level"] == "warning"
    assert refused["reason"] == "the signature does not match the body"
    assert SECRET not in repr(logs)


def test_sources_and_servers_refuse_bad_configurations() -> None:
    with pytest.raises(ValueError, match="takes no secret"):
        WebhookSource(name="x", path="/x", scheme="none", secret="s3cret")
    with pytest.raises(ValueError, match="needs a secret"):
        WebhookSource(name="x", path="/x", scheme="zendesk")
    with pytest.raises(ValueError, match="starts with '/'"):
        WebhookSource(name="x", path="hooks", scheme="none")
    with pytest.raises(ValueError, match="share the path"):
        WebhookServer(sources=[endpoint("none"), endpoint("github")])


def test_a_port_already_in_use_is_a_source_error() -> None:
    with WebhookServer(sources=[endpoint("none")]) as first:
        second = WebhookServer(sources=[endpoint("none")], port=first.port)

        with pytest.raises(SourceError, match=f"cannot listen .* on 127.0.0.1:{first.port}"):
            second.start()
        second.stop()


def test_a_server_cannot_be_started_twice_and_stops_idempotently() -> None:
    server = WebhookServer(sources=[endpoint("none")])
    server.start()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url) and server.port > 0
    with pytest.raises(RuntimeError, match="running"):
        server.start()
    server.stop()
    server.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        server.start()


# -- HubSpot: arrays and signed URLs -------------------------------------------------------


def test_a_json_array_becomes_one_record_per_element(tmp_path: Path) -> None:
    body = (SAMPLES / "hubspot-record-updated.json").read_bytes()
    mapping = EventMapping(event_id="eventId", key="objectId", occurred_at="occurredAt",
                           payload="$")
    with running(tmp_path, endpoint("hubspot_v3"), events=mapping) as (server, pipeline):
        response = post(server, body, signed("hubspot_v3", server, body))

        assert response.json() == {"status": "stored", "records": 3}
        rows = pipeline.events()
    assert [row[0] for row in rows] == ["1827364501", "1827364502", "1827364503"]
    assert [row[2].rsplit(" ", 1)[1] for row in rows] == ["#0", "#1", "#2"]


def test_an_empty_array_is_acknowledged_with_nothing_stored(tmp_path: Path) -> None:
    with running(tmp_path, endpoint("hubspot_v3")) as (server, pipeline):
        response = post(server, b"[]", signed("hubspot_v3", server, b"[]"))

        assert response.json() == {"status": "stored", "records": 0}
        assert (pipeline.handed, pipeline.stored()) == (0, 0)


def test_an_array_element_that_is_no_object_is_a_dead_letter_beside_the_others(
    tmp_path: Path,
) -> None:
    body = b"[" + event(1) + b', "oops", ' + event(2) + b"]"
    with running(tmp_path, endpoint("github")) as (server, pipeline):
        response = post(server, body, sign_github(SECRET, body))

        assert response.status_code == 400
        assert [row[0] for row in pipeline.events()] == ["e1", "e2"]
        ((_, position, reason, raw),) = pipeline.dead_letters()
    assert position.endswith(" #1") and raw == '"oops"'
    assert reason == "element 1 of the array is str, not an object"


def test_hubspot_behind_a_proxy_is_checked_against_the_public_url(tmp_path: Path) -> None:
    public = "https://hooks.example.com/shadow"
    with running(tmp_path, endpoint("hubspot_v3"), public_url=public) as (server, pipeline):
        as_called = sign_hubspot(SECRET, "POST", public + PATH, event(1), NOW)
        as_seen = sign_hubspot(SECRET, "POST", server.url + PATH, event(1), NOW)

        assert post(server, event(1), as_called).status_code == 200
        assert post(server, event(1), as_seen).status_code == 401


def test_hubspot_behind_a_proxy_can_rely_on_forwarded_headers(tmp_path: Path) -> None:
    with running(tmp_path, endpoint("hubspot_v3")) as (server, pipeline):
        # HubSpot signs the URL it called with %3A (among others) decoded.
        headers = sign_hubspot(SECRET, "POST", "https://crm-hooks.example.com" + PATH + "?a=1:2",
                               event(1), NOW)
        headers |= {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "crm-hooks.example.com"}
        response = httpx.post(server.url + PATH + "?a=1%3A2", content=event(1), headers=headers)

        assert response.status_code == 200


def test_records_carry_their_delivery_for_the_mapping(tmp_path: Path) -> None:
    source = endpoint("zendesk")
    source.open()
    with WebhookServer(sources=[source]) as server, ThreadPoolExecutor(1) as pool:
        pool.submit(post, server, event(1), sign_zendesk(SECRET, event(1), NOW,
                                                         invocation="8350205582"))
        queued(source, 1)
        (record,) = source.poll(10)
        source.close()
    assert record.value is not None
    assert record.value[METADATA_KEY] == {"delivery": "8350205582", "path": PATH,
                                          "signed_at": "2024-05-08T09:15:00+00:00"}


# -- the example configurations ---------------------------------------------------------------


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CONFIGS / name).read_text(encoding="utf-8"))
    return loaded


def seconds(text: str) -> float:
    value, unit = float(text[:-1]), text[-1]
    return value * {"s": 1, "m": 60, "h": 3600}[unit]


def example_sources(config: dict[str, Any], secrets: dict[str, str]) -> list[WebhookSource]:
    """The sources of an example, built as the daemon would from the `sources` section."""
    built = []
    for kind, specs in config["sources"].items():
        for spec in specs:
            assert spec["kind"] == "webhook"
            built.append(WebhookSource(
                name=spec["name"], path=spec["path"], scheme=spec["scheme"],
                secret=secrets[spec["secret_env"]], kind=kind.removesuffix("s"),
                tolerance_s=seconds(spec["tolerance"]), max_body_bytes=spec["max_body_bytes"],
                poll_timeout_s=0.02,
                now=lambda: NOW,
            ))
    return built


def test_the_zendesk_example_maps_a_created_ticket_to_an_event() -> None:
    mapping = EventMapping(**example("zendesk-webhooks.yaml")["mapping"]["events"])
    created = json.loads((SAMPLES / "zendesk-ticket-created.json").read_bytes())

    mapped = EventMapper(mapping)(created)

    assert (mapped.event_id, mapped.key, mapped.routing_key) == ("48231", "48231", "90412")
    assert mapped.occurred_at == datetime(2024, 5, 8, 9, 14, tzinfo=UTC)
    assert mapped.segment == {"channel": "Mail", "priority": "High", "language": "English"}
    assert mapped.payload["subject"] == "Charged twice for our May invoice"
    assert mapped.payload["tags"] == "billing invoice vip"


def test_the_zendesk_example_maps_a_solved_ticket_to_an_outcome() -> None:
    mapping = OutcomeMapping(**example("zendesk-webhooks.yaml")["mapping"]["outcomes"])
    solved = json.loads((SAMPLES / "zendesk-ticket-solved.json").read_bytes())

    mapped = OutcomeMapper(mapping)(solved)

    assert mapped.key == "48231"
    assert mapped.outcome == {"category": "billing", "category_title": "Billing"}
    assert mapped.decided_at == datetime(2024, 5, 8, 11, 2, tzinfo=UTC)
    assert mapped.actor == "maya.r@support.example.com"


def test_the_hubspot_example_maps_each_change_to_an_event() -> None:
    mapping = EventMapping(**example("hubspot-webhooks.yaml")["mapping"]["events"])
    changes = json.loads((SAMPLES / "hubspot-record-updated.json").read_bytes())

    mapped = [EventMapper(mapping)(change) for change in changes]

    assert [(e.event_id, e.key) for e in mapped] == [
        ("1827364501", "5120"), ("1827364502", "7331"), ("1827364503", "8802")]
    assert mapped[0].occurred_at == datetime(2024, 5, 8, 9, 14, 3, 120000, tzinfo=UTC)
    assert mapped[1].segment == {"source": "CRM_UI", "stage": "salesqualifiedlead"}
    assert mapped[1].payload["subscriptionType"] == "contact.propertyChange"


def test_the_hubspot_example_maps_a_lead_status_change_to_an_outcome() -> None:
    mapping = OutcomeMapping(**example("hubspot-webhooks.yaml")["mapping"]["outcomes"])
    change = json.loads((SAMPLES / "hubspot-record-updated.json").read_bytes())[1]
    change |= {"propertyName": "hs_lead_status", "propertyValue": "IN_PROGRESS"}

    mapped = OutcomeMapper(mapping)(change)

    assert (mapped.key, mapped.outcome, mapped.actor) == ("7331", "IN_PROGRESS", "userId:4417203")
    assert mapped.decided_at == datetime(2024, 5, 8, 9, 15, 1, 480000, tzinfo=UTC)


def test_the_zendesk_example_stores_its_samples_sent_as_zendesk_sends_them(
    tmp_path: Path,
) -> None:
    config = example("zendesk-webhooks.yaml")
    secrets = {"ZENDESK_TICKETS_WEBHOOK_SECRET": "tickets-secret",
               "ZENDESK_SOLUTIONS_WEBHOOK_SECRET": "solutions-secret"}
    sources = example_sources(config, secrets)
    mapping = config["mapping"]
    with running(tmp_path, *sources, events=EventMapping(**mapping["events"]),
                 outcomes=OutcomeMapping(**mapping["outcomes"])) as (server, pipeline):
        created = (SAMPLES / "zendesk-ticket-created.json").read_bytes()
        solved = (SAMPLES / "zendesk-ticket-solved.json").read_bytes()
        answers = [
            post(server, created, sign_zendesk("tickets-secret", created, NOW),
                 path="/hooks/zendesk/tickets"),
            post(server, solved, sign_zendesk("solutions-secret", solved, NOW, invocation="2"),
                 path="/hooks/zendesk/solutions"),
        ]

        assert [a.status_code for a in answers] == [200, 200]
        assert pipeline.rows("SELECT event_id, key, routing_key FROM events") == [
            ("48231", "48231", "90412")]
        assert pipeline.rows("SELECT key, actor FROM outcomes") == [
            ("48231", "maya.r@support.example.com")]


def test_the_hubspot_example_stores_its_sample_sent_as_hubspot_sends_it(tmp_path: Path) -> None:
    config = example("hubspot-webhooks.yaml")
    secrets = {"HUBSPOT_EVENTS_APP_SECRET": "events-app-secret",
               "HUBSPOT_OUTCOMES_APP_SECRET": "outcomes-app-secret"}
    sources = example_sources(config, secrets)
    with running(tmp_path, *sources,
                 events=EventMapping(**config["mapping"]["events"])) as (server, pipeline):
        body = (SAMPLES / "hubspot-record-updated.json").read_bytes()
        # As the example says: behind a TLS proxy that forwards the original scheme and host.
        url = "https://shadow.example.com/hooks/hubspot/contacts"
        headers = sign_hubspot("events-app-secret", "POST", url, body, NOW)
        headers |= {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "shadow.example.com"}
        response = post(server, body, headers, path="/hooks/hubspot/contacts")

        assert response.json() == {"status": "stored", "records": 3}
        assert pipeline.rows("SELECT count(*) FROM events WHERE key IN ('5120', '7331', '8802')"
                             ) == [(3,)]
