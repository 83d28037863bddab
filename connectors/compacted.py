"""A compacted Kafka topic as a table: the latest value of each key, written and followed.

Kafka keeps at least the last record of every key of a compacted topic
(``cleanup.policy=compact``), so a reader that starts from the beginning
learns the latest value of every key, and then sees each new one as it is
written. :func:`ensure_compacted` creates such a topic when it is missing,
:class:`KeyedWriter` writes to it (acks=all, idempotent), and
:class:`CompactedReader` reads every partition from the beginning without a
consumer group, telling the records that were there when it started
(``history``) from those written since.

kafka-python's types and errors stay in this module: the rest of the project
sees :class:`KeyedRecord` values, :class:`~shadow.core.errors.SinkError` and
:class:`~shadow.core.errors.SourceError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import structlog
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from connectors.kafka import _any_reachable, acks_all_producer
from shadow.core.errors import SinkError, SourceError, first_line

log = structlog.get_logger(__name__)

COMPACT = "compact"

_RECONNECT_MAX_MS = 1_000
"""A broker that was away is tried again at least this often (kafka-python's default
backs off to 30 s, which would keep a follower behind long after the broker is back)."""


@dataclass(frozen=True, slots=True)
class KeyedRecord:
    """One record of a compacted topic."""

    key: str
    value: bytes | None
    """``None`` for a tombstone (the key was deleted)."""
    position: str
    """``topic/partition@offset``."""
    history: bool
    """It was on the topic when the reader started (or started again after an outage):
    it tells what the latest value was, not that its writer is still there."""


def ensure_compacted(bootstrap: str, topic: str, *, partitions: int = 1,
                     timeout_s: float = 10.0) -> bool:
    """Create ``topic`` compacted when it is missing; ``True`` when it was created.

    The replication factor is the broker's default. An existing topic is left as
    it is, with a warning when it is not compacted (it then keeps every record,
    which readers tolerate but which grows without end).

    Raises:
        SinkError: no broker is reachable, or it refused.
    """
    return ensure_topic(bootstrap, topic, partitions=partitions, timeout_s=timeout_s,
                        compacted=True)


def ensure_topic(bootstrap: str, topic: str, *, partitions: int, timeout_s: float = 10.0,
                 compacted: bool = False) -> bool:
    """Create ``topic`` with ``partitions`` when it is missing (compacted, if asked);
    ``True`` when it was created. An existing topic is left as it is.

    Raises:
        SinkError: no broker is reachable, or it refused.
    """
    if not _any_reachable(bootstrap):
        raise SinkError(f"cannot create topic {topic}: no broker reachable at {bootstrap}")
    millis = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=millis,
                                 **_known(KafkaAdminClient, bootstrap_timeout_ms=millis,
                                          reconnect_backoff_max_ms=_RECONNECT_MAX_MS))
    except KafkaError as exc:
        raise SinkError(f"cannot create topic {topic} at {bootstrap}: {first_line(exc)}") from exc
    configs = {"cleanup.policy": COMPACT} if compacted else {}
    try:
        try:
            admin.create_topics([NewTopic(topic, partitions, -1, topic_configs=configs)],
                                timeout_ms=millis)
        except TopicAlreadyExistsError:
            if compacted:
                _warn_unless_compacted(admin, topic)
            return False
        log.info("topic created", topic=topic, partitions=partitions, compacted=compacted)
        return True
    except KafkaError as exc:
        raise SinkError(f"cannot create topic {topic} at {bootstrap}: {first_line(exc)}") from exc
    finally:
        admin.close()


def _warn_unless_compacted(admin: KafkaAdminClient, topic: str) -> None:
    described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)],
                                       config_filter="all")
    policy = described.get("topic", {}).get(topic, {}).get("cleanup.policy", {}).get("value")
    if policy is not None and COMPACT not in str(policy).split(","):
        log.warning("topic is not compacted: it keeps every record", topic=topic,
                    cleanup_policy=policy)


def _known(client: type, **settings: Any) -> dict[str, Any]:
    """The settings this kafka-python knows (some came with later versions)."""
    return {k: v for k, v in settings.items() if k in getattr(client, "DEFAULT_CONFIG", {})}


class KeyedWriter:
    """Writes values by key to a compacted topic, created compacted when missing.

    acks=all with the idempotent producer: :meth:`write` returns once every
    in-sync replica holds the record, and a retried send is never stored twice.
    It connects on the first write, and again after a failed one; each write
    waits at most ``timeout_s`` (a broker that refuses connections fails at
    once). Not thread-safe: one thread writes.
    """

    def __init__(self, *, bootstrap: str, topic: str, timeout_s: float = 5.0,
                 partitions: int = 1, options: dict[str, Any] | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if partitions < 1:
            raise ValueError("a topic needs at least one partition")
        self.bootstrap, self.topic, self.timeout_s = bootstrap, topic, timeout_s
        self.partitions = partitions
        self._options = dict(options or {})
        self._producer: KafkaProducer | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write(self, key: str, value: bytes, headers: dict[str, str] | None = None) -> str:
        """Write ``value`` under ``key``; returns its ``topic/partition@offset``.

        Raises:
            SinkError: the record was not acknowledged within ``timeout_s``.
        """
        producer = self._producer or self._connect()
        encoded = [(k, v.encode()) for k, v in (headers or {}).items()]
        try:
            sent = producer.send(self.topic, key=key.encode(), value=value, headers=encoded)
            metadata = sent.get(timeout=self.timeout_s)
        except KafkaError as exc:
            self.close()  # start afresh next time rather than keep a producer in trouble
            raise SinkError(f"cannot write {key!r} to {self.topic}: {first_line(exc)}") from exc
        return f"{self.topic}/{metadata.partition}@{metadata.offset}"

    def _connect(self) -> KafkaProducer:
        ensure_compacted(self.bootstrap, self.topic, partitions=self.partitions,
                         timeout_s=self.timeout_s)
        # A record not acknowledged within timeout_s expires from the producer's buffer
        # rather than waiting there for the broker: the producer then closes cleanly.
        options = _known(KafkaProducer, reconnect_backoff_max_ms=_RECONNECT_MAX_MS,
                         delivery_timeout_ms=int(self.timeout_s * 1000))
        try:
            self._producer = acks_all_producer(self.bootstrap, timeout_s=self.timeout_s,
                                               options=options | self._options,
                                               limit_requests=True)
        except KafkaError as exc:
            raise SinkError(f"cannot write to {self.topic} at {self.bootstrap}: "
                            f"{first_line(exc)}") from exc
        return self._producer

    def close(self) -> None:
        """Release the connection; idempotent, and a later write connects again."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=self.timeout_s)
        except KafkaError as exc:
            log.warning("keyed writer did not close cleanly", topic=self.topic,
                        error=first_line(exc))


class CompactedReader:
    """Every record of every partition of a topic, from the beginning, then as they come.

    No consumer group and no committed offsets: each reader reads the whole
    topic. Records at offsets below each partition's end when :meth:`open` ran
    are ``history``. ``poll`` never blocks longer than ``poll_timeout_s``.
    Partitions added to the topic after :meth:`open` are not read until the
    reader is opened again. Not thread-safe: one thread reads.
    """

    def __init__(self, *, bootstrap: str, topic: str, poll_timeout_s: float = 0.2,
                 options: dict[str, Any] | None = None) -> None:
        if poll_timeout_s <= 0:
            raise ValueError("poll_timeout_s must be positive")
        self.bootstrap, self.topic, self.poll_timeout_s = bootstrap, topic, poll_timeout_s
        self._options = dict(options or {})
        self._consumer: KafkaConsumer | None = None
        self._ends: dict[TopicPartition, int] = {}
        self._next: dict[TopicPartition, int] = {}

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Connect, take every partition and go to its beginning.

        Raises:
            SourceError: no broker is reachable, or the topic does not exist.
        """
        if self._consumer is not None:
            raise SourceError(f"the reader of {self.topic} is open already")
        if not _any_reachable(self.bootstrap):
            raise SourceError(f"cannot read {self.topic}: no broker reachable at "
                              f"{self.bootstrap}")
        # A short fetch wait: a record written is handed out within it, not 0.5 s later.
        settings = _known(KafkaConsumer, fetch_max_wait_ms=100, bootstrap_timeout_ms=5_000,
                          reconnect_backoff_max_ms=_RECONNECT_MAX_MS,
                          allow_auto_create_topics=False)
        try:
            consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                     enable_auto_commit=False, auto_offset_reset="earliest",
                                     **(settings | self._options))
        except KafkaError as exc:
            raise SourceError(f"cannot read {self.topic} at {self.bootstrap}: "
                              f"{first_line(exc)}") from exc
        try:
            self._take_partitions(consumer)
        except (KafkaError, SourceError) as exc:
            consumer.close()
            if isinstance(exc, SourceError):
                raise
            raise SourceError(f"cannot read {self.topic}: {first_line(exc)}") from exc
        self._consumer = consumer

    def _take_partitions(self, consumer: KafkaConsumer) -> None:
        ids = consumer.partitions_for_topic(self.topic)
        if not ids:
            raise SourceError(f"topic {self.topic} does not exist at {self.bootstrap} (yet)")
        partitions = [TopicPartition(self.topic, p) for p in sorted(ids)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        self._ends = dict(consumer.end_offsets(partitions))
        self._next = {}

    @property
    def caught_up(self) -> bool:
        """Whether every record that was there at :meth:`open` has been handed out."""
        if self._consumer is None:
            return False
        if all(self._next.get(tp, 0) >= end for tp, end in self._ends.items()):
            return True
        return self._past_ends(self._consumer)

    def _past_ends(self, consumer: KafkaConsumer) -> bool:
        # Compaction leaves gaps: the last offsets before an end may be gone. The
        # consumer's position says how far it has read, records or not.
        try:
            return all((consumer.position(tp, timeout_ms=0) or 0) >= end
                       for tp, end in self._ends.items())
        except KafkaError:
            return False

    def poll(self, max_records: int = 500) -> list[KeyedRecord]:
        """The next records, waiting at most ``poll_timeout_s`` for them.

        Raises:
            SourceError: the reader is not open, or the consumer failed.
        """
        consumer = self._consumer
        if consumer is None:
            raise SourceError(f"the reader of {self.topic} is not open")
        try:
            batches = consumer.poll(timeout_ms=int(self.poll_timeout_s * 1000),
                                    max_records=max_records)
        except KafkaError as exc:
            raise SourceError(f"cannot read {self.topic}: {first_line(exc)}") from exc
        records = []
        for tp, messages in batches.items():
            end = self._ends.get(tp, 0)
            for m in messages:
                if m.key is None:
                    continue  # not written by key: nothing to hold it under
                records.append(KeyedRecord(m.key.decode("utf-8", "replace"), m.value,
                                           f"{tp.topic}/{tp.partition}@{m.offset}",
                                           history=m.offset < end))
            if messages:
                self._next[tp] = messages[-1].offset + 1
        return records

    def close(self) -> None:
        """Release the connection; idempotent. The reader may be opened again."""
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            consumer.close(autocommit=False)
        except KafkaError as exc:
            log.warning("compacted reader did not close cleanly", topic=self.topic,
                        error=first_line(exc))
