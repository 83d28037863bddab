"""A source whose topic appears after it subscribed gets its partitions, whatever the timing.

Subscribed to a topic that does not exist yet, the group's leader joins with no
partitions; when the topic appears (a producer creates it) it joins again. kafka-python
(2.3 and 3.0 alike) loses that second join when it completes after the poll that started
it has returned, as it does with the short polls a daemon makes: the member never takes
its partitions and, with 3.0, sends no heartbeat either, so the broker drops it for good.
Measured before :class:`~connectors.kafka.KafkaSource` repaired it: 5 of 18 such starts
stuck with a 10 ms poll. Each round here is such a start on a topic of its own.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from kafka import KafkaProducer

from connectors.kafka import KafkaSource, Start

ROUNDS = 8
RECORDS = 50


def _produce(bootstrap: str, topic: str) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(RECORDS):
        producer.send(topic, json.dumps({"n": i}).encode(), key=f"k{i}".encode())
    producer.flush(timeout=30)
    producer.close()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_a_source_subscribed_before_its_topic_exists_reads_every_record(
        kafka_bootstrap: str, round_: int) -> None:
    topic = f"late-{uuid.uuid4().hex[:12]}"
    source = KafkaSource(bootstrap=kafka_bootstrap, topics=[topic], group_id=topic,
                         start=Start.COMMITTED, poll_timeout_s=0.01,
                         options={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000})
    got = 0
    with source:
        ends = time.monotonic() + 1.5
        while time.monotonic() < ends:  # joined with nothing to read: the topic is not there
            got += len(source.poll(100))
        _produce(kafka_bootstrap, topic)
        ends = time.monotonic() + 30
        while got < RECORDS and time.monotonic() < ends:
            records = source.poll(100)
            got += len(records)
            if records:
                source.commit(records[-1].position)
    assert got == RECORDS
