"""Kafka topics as a source of events and outcomes, and as a sink for live decisions.

The source consumes in a consumer group with auto-commit off: offsets are
committed only by :meth:`KafkaSource.commit`, which the pipeline calls after
the store's transaction holding those records has committed. Delivery is at
least once; the store's idempotency makes the result exactly once.

kafka-python's types stay in this module: the rest of the project sees
:class:`~connectors.base.RawRecord` values and our own errors.
"""

from __future__ import annotations

import enum
import socket
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import structlog
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from connectors.base import RawRecord, Source, SourceState
from connectors.kafka_batch import METADATA_KEY as METADATA_KEY
from connectors.kafka_batch import KafkaBatch, record_of
from connectors.sinks import Decision, Sink
from shadow.core.errors import SinkError, SourceError

log = structlog.get_logger(__name__)


class Start(enum.StrEnum):
    """Where a consumer group without committed offsets (or a replay) begins."""

    COMMITTED = "committed"
    """Committed offsets; the earliest record where the group has none."""
    EARLIEST = "earliest"
    LATEST = "latest"


_CONSUMER_DEFAULTS: dict[str, Any] = {
    # A consumer that died (SIGKILL, a lost machine) keeps its partitions until its session
    # times out; kafka-python's 45 s meant a restarted daemon sat idle that long. Ten
    # seconds, with a heartbeat every three, lets a restart resume within about ten.
    "session_timeout_ms": 10_000,
    "heartbeat_interval_ms": 3_000,
    # A broker that accepts connections but does not answer is given this long at start.
    "bootstrap_timeout_ms": 5_000,
}


_AWAY_AFTER_S = 5.0
"""How long no broker must be reachable before the source says it is away."""


class KafkaSource(Source):
    """Records from one or more topics, in a consumer group.

    ``start`` is a :class:`Start` or a datetime, which replays the window from
    that time. With ``idle_s`` the source is bounded: it is exhausted once no
    record has arrived for that long (replays of a topic, tests, benchmarks).
    ``poll`` never blocks longer than ``poll_timeout_s``.

    A broker that is away is waited for: polls return nothing (and :meth:`away`
    says why) until it is back. Only a bounded source gives up, after
    ``away_timeout_s``; an unbounded one waits for as long as it takes.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        topics: Sequence[str],
        group_id: str,
        start: Start | datetime = Start.COMMITTED,
        poll_timeout_s: float = 1.0,
        idle_s: float | None = None,
        commit_timeout_s: float = 1.0,
        away_timeout_s: float = 300.0,
        options: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not topics:
            raise ValueError("a Kafka source needs at least one topic")
        self.name = "kafka:" + ",".join(topics)
        self.bootstrap, self.topics, self.group_id = bootstrap, list(topics), group_id
        self.start, self.poll_timeout_s, self.idle_s = start, poll_timeout_s, idle_s
        self._options = dict(options or {})
        self.commit_timeout_s, self.away_timeout_s = commit_timeout_s, away_timeout_s
        self._away_since: float | None = None
        self._clock = clock
        self._consumer: KafkaConsumer | None = None
        self._last_record_at = clock()
        self._uncommitted: dict[TopicPartition, int] = {}
        """Offsets after the records handed out, per partition, that the broker has not taken."""
        self._commit_error: str | None = None
        self._next: dict[TopicPartition, int] = {}
        """The offset after the last record handed out, per partition (for the lag)."""
        self._seeked = False
        self._awaiting_time: list[TopicPartition] = []

    @property
    def exhausted(self) -> bool:
        return self.idle_s is not None and self._clock() - self._last_record_at >= self.idle_s

    def _open(self) -> None:
        reset = "latest" if self.start is Start.LATEST else "earliest"
        if not _any_reachable(self.bootstrap):
            # kafka-python would wait bootstrap_timeout_ms for it, and a consumer whose
            # construction fails leaves its network thread and sockets running.
            raise SourceError(f"cannot consume {self.topics}: no broker reachable at "
                              f"{self.bootstrap}")
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=self.group_id,
                enable_auto_commit=False, auto_offset_reset=reset,
                **{**_consumer_defaults(), **self._options},
            )
            self._consumer.subscribe(self.topics, listener=_StartListener(self._on_assigned))
        except KafkaError as exc:
            raise SourceError(f"cannot consume {self.topics} from {self.bootstrap}: {exc}") from exc
        self._last_record_at = self._clock()

    def _close(self) -> None:
        if self._consumer is not None:
            if self._commit_error is not None:
                self._commit_held(self._consumer)
            self._consumer.close(autocommit=False)

    def _poll(self, max_records: int) -> list[RawRecord]:
        name = self.name
        return [record_of(name, message) for message in self._fetch(max_records)]

    def poll_batch(self, max_records: int) -> KafkaBatch:
        """Up to ``max_records`` records as one :class:`KafkaBatch`, which decodes nothing
        until asked: the same records, offsets bookkeeping and timeouts as :meth:`poll`.

        For a pipeline that maps a batch as columns; :meth:`KafkaBatch.records` gives
        the records :meth:`poll` would have.
        """
        if self._state is not SourceState.OPEN:
            raise RuntimeError(f"cannot poll source {self.name!r}: it is {self._state.value}")
        return KafkaBatch(self.name, self._fetch(max_records))

    def _fetch(self, max_records: int) -> list[Any]:
        """The messages of one poll, in partition order, with the offsets noted."""
        consumer = self._consumer
        assert consumer is not None
        if self._commit_error is not None and not _coordinator_unknown(consumer):
            self._commit_held(consumer)
        timeout_ms = int(self.poll_timeout_s * 1000)
        if _join_lost(consumer):
            log.warning("consumer group join lost by kafka-python; joining again",
                        group=self.group_id, topics=self.topics)
            consumer._coordinator.request_rejoin()
            timeout_ms = max(timeout_ms, _REJOIN_WAIT_MS)
        try:
            batches = consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
            if self._awaiting_time:
                self._seek_to_time(consumer)
        except KafkaError as exc:
            raise SourceError(f"cannot consume {self.topics}: {exc}") from exc
        messages = [message for part in batches.values() for message in part]
        unreachable = self._unreachable(consumer)
        if messages or not consumer.assignment() or unreachable:
            # Waiting for the group to hand out partitions (after a member died,
            # until its session times out), or for the broker to come back, is
            # not idleness.
            self._last_record_at = self._clock()
        for partition, part in batches.items():
            self._uncommitted[partition] = self._next[partition] = part[-1].offset + 1
        return messages

    def _unreachable(self, consumer: KafkaConsumer) -> bool:
        """Whether no broker is reachable; raises once a bounded source has waited too long."""
        if not _coordinator_unknown(consumer):
            self._away_since = None
            return False
        now = self._clock()
        if self._away_since is None:
            self._away_since = now
        elif self.idle_s is not None and now - self._away_since > self.away_timeout_s:
            raise SourceError(f"cannot consume {self.topics}: no broker reachable at "
                              f"{self.bootstrap} for {self.away_timeout_s:g} s")
        return True

    def lag(self) -> dict[str, int]:
        """Records each assigned partition holds beyond what this source has handed out.

        Keyed ``topic/partition``. The high watermark comes with every fetch
        response, so this makes no broker request; a partition not fetched from
        yet is left out.
        """
        consumer = self._consumer
        if consumer is None:
            return {}
        assigned = consumer.assignment()
        self._next = {tp: o for tp, o in self._next.items() if tp in assigned}
        lags: dict[str, int] = {}
        try:
            for tp in assigned:
                end = consumer.highwater(tp)
                handed_out = self._next.get(tp)
                if handed_out is None:
                    handed_out = consumer.position(tp, timeout_ms=0)
                if end is not None and handed_out is not None:
                    lags[f"{tp.topic}/{tp.partition}"] = max(0, end - handed_out)
        except KafkaError as exc:
            raise SourceError(f"cannot read the lag of {self.topics}: {exc}") from exc
        return lags

    def _on_assigned(self, partitions: set[TopicPartition]) -> None:
        """Move the first partitions assigned to the configured start.

        Done in the rebalance listener, before anything is fetched from them,
        and only once: partitions a later rebalance hands over continue from
        the group's committed offsets.
        """
        wanted = self.start is Start.EARLIEST or isinstance(self.start, datetime)
        if not wanted or self._seeked or not partitions:
            return
        self._seeked = True
        consumer = self._consumer
        assert consumer is not None
        if self.start is Start.EARLIEST:
            consumer.seek_to_beginning(*partitions)
            return
        # Looking offsets up is a broker request, which does not belong inside
        # the group protocol's callback: the partitions wait, paused, for the
        # end of this poll.
        consumer.pause(*partitions)
        self._awaiting_time = list(partitions)

    def _seek_to_time(self, consumer: KafkaConsumer) -> None:
        assert isinstance(self.start, datetime)
        partitions, self._awaiting_time = self._awaiting_time, []
        assigned = consumer.assignment()
        partitions = [tp for tp in partitions if tp in assigned]
        millis = int(self.start.timestamp() * 1000)
        found = consumer.offsets_for_times({tp: millis for tp in partitions})
        ends = consumer.end_offsets(partitions)
        for tp in partitions:
            at = found.get(tp)
            consumer.seek(tp, at.offset if at is not None else ends[tp])
        consumer.resume(*partitions)

    def commit(self, position: str) -> None:
        """Commit the offsets of every record handed out so far, or keep them for later.

        One attempt, waiting at most ``commit_timeout_s``: the records are
        safely stored already, and committing late only means reading more
        again after a crash. Offsets a broker that is away did not take are
        committed by the next :meth:`poll` that reaches it (and by
        :meth:`close`), for the partitions this member still holds; those it
        lost to a rebalance are let go: whoever holds them reads the records
        again, and the store recognises them.
        """
        if self._consumer is None or not self._uncommitted:
            return
        self._commit_held(self._consumer)

    def away(self) -> str | None:
        """Why the broker cannot be used now: no broker reachable for a few seconds (the
        group's coordinator is unknown), or offsets waiting to be committed; ``None`` when
        all is well. The coordinator is briefly unknown while a consumer joins its group,
        which is not a broker away."""
        since = self._away_since
        if since is not None and self._clock() - since >= _AWAY_AFTER_S:
            return f"no broker reachable at {self.bootstrap} (group {self.group_id})"
        if self._commit_error is not None:
            return f"offsets not committed: {self._commit_error}"
        return None

    def _commit_held(self, consumer: KafkaConsumer) -> None:
        """Commit the offsets of the records stored so far, for the partitions this member
        still holds (once it holds any: it may be joining the group again)."""
        assigned = consumer.assignment()
        if assigned:
            self._uncommitted = {tp: o for tp, o in self._uncommitted.items() if tp in assigned}
        if self._uncommitted:
            self._try_commit(consumer)
        else:
            self._commit_error = None

    def _try_commit(self, consumer: KafkaConsumer) -> None:
        offsets = {
            tp: OffsetAndMetadata(offset, "", -1) for tp, offset in self._uncommitted.items()
        }
        try:
            consumer.commit(offsets=offsets, timeout_ms=int(self.commit_timeout_s * 1000))
        except CommitFailedError as exc:
            # The group forgot this member (its session ran out while the broker was
            # away, say): the offsets are kept for the partitions it gets back.
            if self._commit_error is None:
                log.warning("offsets not committed: the group was rebalanced", error=str(exc))
            self._commit_error = repr(exc)
            return
        except KafkaError as exc:
            if self._commit_error is None:
                log.warning("offsets not committed; kept for when the broker is back",
                            source=self.name, error=repr(exc))
            self._commit_error = repr(exc)
            return
        if self._commit_error is not None:
            log.info("offsets committed again", source=self.name)
        self._commit_error = None
        self._uncommitted.clear()


def _consumer_defaults() -> dict[str, Any]:
    """Our defaults that this kafka-python knows (bootstrap_timeout_ms came with 2.1)."""
    return {k: v for k, v in _CONSUMER_DEFAULTS.items() if k in KafkaConsumer.DEFAULT_CONFIG}


def _any_reachable(bootstrap: str, timeout_s: float = 1.0) -> bool:
    """Whether some server of ``host:port,host:port`` accepts a TCP connection."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
        except (OSError, ValueError):
            continue
        return True
    return False


_REJOIN_WAIT_MS = 5_000
"""How long the poll that repairs a lost join may wait for the join to complete."""


def _join_lost(consumer: KafkaConsumer) -> bool:
    """Whether kafka-python lost the group join this member started: it began a join
    (``rejoining``) that no longer needs to happen, yet never completed it.

    This happens (kafka-python 2.3 and 3.0 alike) when the member leads the group's
    assignment, rejoins because its topics' metadata changed (a topic created after it
    subscribed), and the join completes after the poll that started it returned: the
    leader's assignment makes the metadata look settled, so no later poll finishes the
    join. The member then holds no partition and (3.0) sends no heartbeat, for good.
    Asking to rejoin makes the next poll finish the join in flight, or join again.
    Reads kafka-python's private coordinator; where it is missing, nothing is lost.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    need_rejoin = getattr(coordinator, "need_rejoin", None)
    if not getattr(coordinator, "rejoining", False) or not callable(need_rejoin):
        return False
    return not need_rejoin()


def _coordinator_unknown(consumer: KafkaConsumer) -> bool:
    """Whether the consumer has no group coordinator: no broker of the group is reachable.

    kafka-python keeps this on its private ``_coordinator``; where that is
    missing, the broker is taken to be there.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    unknown = getattr(coordinator, "coordinator_unknown", None)
    return bool(unknown()) if callable(unknown) else False


class _StartListener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, assigned: Callable[[set[TopicPartition]], None]) -> None:
        self._assigned = assigned

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._assigned(set(assigned))


def consumer_options(options: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``options`` a consumer takes (one set may serve both kinds of client)."""
    return {k: v for k, v in options.items() if k in KafkaConsumer.DEFAULT_CONFIG}


def producer_options(options: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``options`` a producer takes."""
    return {k: v for k, v in options.items() if k in KafkaProducer.DEFAULT_CONFIG}


def acks_all_producer(bootstrap: str, *, timeout_s: float, options: dict[str, Any],
                      limit_requests: bool = False) -> KafkaProducer:
    """An idempotent acks=all producer whose waits are bounded by ``timeout_s``.

    Reaching the broker and fetching a topic's metadata wait no longer than an
    ack; with ``limit_requests`` each request does too. ``options`` win.
    """
    millis = int(timeout_s * 1000)
    names = ["max_block_ms", "bootstrap_timeout_ms"]
    if limit_requests:
        names.append("request_timeout_ms")
    limits = {name: millis for name in names if name in KafkaProducer.DEFAULT_CONFIG}
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                         **(limits | options))


class KafkaSink(Sink):
    """Publishes live decisions to a topic for production to act on.

    Each decision is a message keyed by the event's key (so a case's decisions
    stay in order on one partition), with :meth:`Decision.headers` and
    :meth:`Decision.body` as value (an action request also has the header
    ``idempotency_key``). acks=all and the idempotent producer: a
    publish returns once every in-sync replica holds every message. Opening,
    and each publish (sending and waiting for every ack), wait at most
    ``timeout_s``. See :class:`~connectors.sinks.Sink` for the contract.
    """

    def __init__(
        self, *, bootstrap: str, topic: str, timeout_s: float = 30.0,
        options: dict[str, Any] | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.name = f"kafka:{topic}"
        self.bootstrap, self.topic, self.timeout_s = bootstrap, topic, timeout_s
        self._options = dict(options or {})
        self._producer: KafkaProducer | None = None

    def _open(self) -> None:
        try:
            self._producer = acks_all_producer(self.bootstrap, timeout_s=self.timeout_s,
                                               options=self._options)
        except KafkaError as exc:
            raise SinkError(f"cannot publish to {self.topic} at {self.bootstrap}: {exc}") from exc

    def _publish(self, decisions: Sequence[Decision]) -> None:
        """Send every decision, then wait for every ack, within ``timeout_s`` in all."""
        producer = self._producer
        assert producer is not None
        deadline = time.monotonic() + self.timeout_s
        try:
            pending = [producer.send(self.topic, key=d.key.encode(), value=d.body(),
                                     headers=d.headers()) for d in decisions]
            for future in pending:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
        except KafkaError as exc:
            raise SinkError(f"cannot publish {len(decisions)} decisions to {self.topic}: "
                            f"{exc!r}") from exc

    def _close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.flush(timeout=self.timeout_s)
        except KafkaError as exc:
            raise SinkError(f"cannot flush decisions to {self.topic}: {exc!r}") from exc
        finally:
            producer.close(timeout=self.timeout_s)


class TopicWriter:
    """Writes keyed messages to a topic and waits until the broker holds every one.

    acks=all with the idempotent producer, like :class:`KafkaSink`; :meth:`write_all`
    sends a batch and returns once every message of it is acknowledged, within
    ``timeout_s``. It connects on the first write, and again after a failed one. Not
    thread-safe: one thread writes.
    """

    def __init__(self, *, bootstrap: str, topic: str, timeout_s: float = 30.0,
                 options: dict[str, Any] | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.bootstrap, self.topic, self.timeout_s = bootstrap, topic, timeout_s
        self._options = producer_options(options or {})
        self._producer: KafkaProducer | None = None

    def __enter__(self) -> TopicWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write_all(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        """Send every ``(key, value)`` and wait for every ack.

        Raises:
            SinkError: some message was not acknowledged within ``timeout_s`` (the batch
                may be partly written: a retry writes those messages again).
        """
        if not messages:
            return
        deadline = time.monotonic() + self.timeout_s
        try:
            producer = self._producer or self._connect()
            pending = [producer.send(self.topic, key=key, value=value) for key, value in messages]
            for future in pending:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
        except KafkaError as exc:
            self.close()
            raise SinkError(f"cannot write {len(messages)} messages to {self.topic}: "
                            f"{exc!r}") from exc

    def _connect(self) -> KafkaProducer:
        if not _any_reachable(self.bootstrap):
            raise SinkError(f"cannot write to {self.topic}: no broker reachable at "
                            f"{self.bootstrap}")
        self._producer = acks_all_producer(self.bootstrap, timeout_s=self.timeout_s,
                                           options=self._options)
        return self._producer

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=min(self.timeout_s, 5.0))
