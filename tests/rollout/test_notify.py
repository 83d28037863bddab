"""Rollout announcements: delivered to a real local webhook and a real broker, or logged."""

from __future__ import annotations

import base64
import gc
import hashlib
import hmac
import json
import logging
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from kafka import KafkaConsumer

from rollout.notify import (
    Announcement,
    KafkaNotifier,
    Notifier,
    Notifiers,
    RecordingNotifier,
    WebhookNotifier,
)
from tests.http_server import Reply, Request, TestServer

AT = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
KEY = b"the receiver's key"
SECRET = "whsec_" + base64.b64encode(KEY).decode()


def rollback(**changes: Any) -> Announcement:
    fields: dict[str, Any] = {
        "rollout": "triage", "action": "rollback", "actor": "controller",
        "reason": "agreement fell below 0.80", "from_step": 3, "to_step": 0, "percent": 0.0,
        "status": "rolled_back", "at": AT,
        "evidence": {"agreement": 0.71, "compared": 412, "since": AT},
    }
    return Announcement(**(fields | changes))


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def notifier(url: str, **options: Any) -> WebhookNotifier:
    return WebhookNotifier(url, now=lambda: AT, sleep=lambda s: None, **options)


def test_an_announcement_is_a_json_object_with_its_evidence() -> None:
    assert json.loads(rollback().as_json()) == {
        "rollout": "triage", "action": "rollback", "actor": "controller",
        "reason": "agreement fell below 0.80", "from_step": 3, "to_step": 0, "percent": 0.0,
        "status": "rolled_back", "at": "2024-05-01T10:00:00+00:00",
        "evidence": {"agreement": 0.71, "compared": 412, "since": "2024-05-01T10:00:00+00:00"}}


def test_the_same_transition_is_announced_under_the_same_message_id() -> None:
    assert rollback().message_id == rollback(reason="said differently").message_id
    assert rollback().message_id != rollback(action="pause").message_id


def test_a_webhook_gets_the_announcement_signed(caplog: pytest.LogCaptureFixture) -> None:
    with TestServer(lambda request: Reply(status=204)) as server, \
            notifier(server.url + "/rollouts", secret=SECRET) as channel:
        assert channel.announce(rollback()) is True

    (request,) = server.requests
    signed = (f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}."
              .encode() + request.body)
    expected = base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
    assert request.headers["webhook-signature"] == f"v1,{expected}"
    assert request.headers["webhook-id"] == rollback().message_id
    assert request.headers["webhook-timestamp"] == str(int(AT.timestamp()))
    assert request.path == "/rollouts" and request.body == rollback().as_json()


def test_a_webhook_that_is_down_makes_announce_return_false_and_log() -> None:
    channel = notifier(f"http://127.0.0.1:{unused_port()}/rollouts")

    with structlog.testing.capture_logs() as logs:
        delivered = channel.announce(rollback())

    assert delivered is False
    warning = logs[-1]
    assert (warning["log_level"], warning["event"]) == ("warning",
                                                        "rollout announcement not delivered")
    assert warning["channel"] == channel.name and "connection failed" in warning["error"]


def test_a_webhook_answering_errors_is_retried_then_given_up() -> None:
    def failing(request: Request) -> Reply:
        return Reply(status=500)

    with TestServer(failing) as server, notifier(server.url, max_attempts=2) as channel, \
            structlog.testing.capture_logs() as logs:
        assert channel.announce(rollback()) is False

    assert len(server.requests) == 2
    assert "HTTP 500" in logs[-1]["error"]


def test_a_webhook_refusing_the_announcement_is_not_asked_again() -> None:
    with TestServer(lambda request: Reply(status=401)) as server, \
            notifier(server.url, max_attempts=3) as channel, \
            structlog.testing.capture_logs():
        assert channel.announce(rollback()) is False

    assert len(server.requests) == 1


def test_whatever_a_channel_raises_announce_returns_false() -> None:
    class Broken(Notifier):
        name = "broken"

        def _announce(self, announcement: Announcement) -> None:
            raise KeyError("a bug in the channel")

    with structlog.testing.capture_logs() as logs:
        assert Broken().announce(rollback()) is False
    assert logs[-1]["error"] == "'a bug in the channel'"


def test_announcements_fan_out_and_report_each_channel() -> None:
    good, bad = RecordingNotifier(name="chat"), RecordingNotifier(name="pager")
    bad.fail_next()

    with structlog.testing.capture_logs(), Notifiers([bad, good]) as channels:
        results = channels.announce(rollback())

    assert results == {"pager": False, "chat": True}
    assert good.announced == [rollback()] and bad.announced == []


def test_two_channels_of_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match="more than once"):
        Notifiers([RecordingNotifier(name="chat"), RecordingNotifier(name="chat")])


def test_a_kafka_notifier_publishes_keyed_by_rollout(kafka_bootstrap: str) -> None:
    topic = f"rollouts-{uuid.uuid4().hex[:10]}"

    with KafkaNotifier(kafka_bootstrap, topic) as channel:
        assert channel.announce(rollback()) is True
        assert channel.announce(rollback(action="restart", status="progressing")) is True

    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=topic,
                             auto_offset_reset="earliest")
    messages: list[Any] = []
    deadline = time.monotonic() + 30
    while len(messages) < 2 and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            messages.extend(batch)
    consumer.close()
    assert [m.key for m in messages] == [b"triage", b"triage"]
    assert [json.loads(m.value)["action"] for m in messages] == ["rollback", "restart"]
    assert messages[0].value == rollback().as_json()
    assert dict(messages[0].headers)["message_id"] == rollback().message_id.encode()


# kafka-python leaves the socket of each refused connection to the garbage
# collector, and its log records (which pytest keeps) would hold them: with its
# logging off they are collected here, inside the test, where the warnings are ignored.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning",
                            "ignore::ResourceWarning")
def test_a_kafka_notifier_without_a_broker_returns_false_in_its_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL, logger="kafka")
    channel = KafkaNotifier(f"127.0.0.1:{unused_port()}", "rollouts", timeout_s=1.0)
    started = time.monotonic()

    with structlog.testing.capture_logs() as logs:
        delivered = channel.announce(rollback())

    assert delivered is False and time.monotonic() - started < 10
    assert logs[-1]["channel"] == "kafka:rollouts"
    channel.close()
    gc.collect()
