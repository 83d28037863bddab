"""The development broker itself: what the Kafka connector's tests stand on."""

from __future__ import annotations

import json
import uuid

from kafka import KafkaConsumer, KafkaProducer

from tests.waiting import wait_until


def test_the_local_broker_takes_messages_and_gives_them_back(kafka_bootstrap: str) -> None:
    topic = f"smoke-{uuid.uuid4().hex[:12]}"
    sent: list[dict[str, object]] = [{"event_id": f"e{i}", "n": i} for i in range(100)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for value in sent:
        producer.send(topic, json.dumps(value).encode(), key=str(value["event_id"]).encode())
    producer.flush(timeout=30)
    producer.close()

    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=topic,
                             auto_offset_reset="earliest")
    received: list[dict[str, object]] = []

    def polled() -> int:
        for records in consumer.poll(timeout_ms=500).values():
            received.extend(json.loads(record.value) for record in records)
        return len(received)

    try:
        wait_until(polled, accept=lambda n: n >= len(sent), timeout_s=60, interval_s=0,
                   what=f"{len(sent)} messages back from {topic}")
    finally:
        consumer.close()

    assert received == sent
