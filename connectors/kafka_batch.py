"""One poll of a Kafka topic as a batch, decoded only as far as a reader asks.

Apart from :mod:`connectors.kafka` so that reading a batch does not import the Kafka
client: the messages are the client's, but only their attributes are read here.
"""

from __future__ import annotations

from typing import Any

import orjson

from connectors.base import RawRecord

METADATA_KEY = "_kafka"
"""Where a record's key, headers, topic, partition, offset and timestamp sit for the mapping."""


class KafkaBatch:
    """One poll of a :class:`KafkaSource`, decoded only as far as a reader asks.

    The per-record path turns every message into a :class:`RawRecord` with its value
    decoded, its ``_kafka`` metadata and its position. A pipeline that maps a batch as
    columns needs less: the values, and positions and metadata only for some records.
    This keeps the client's messages (they stay in this module) and hands out each part
    on its own; :meth:`record` is the very record :meth:`KafkaSource.poll` hands out.
    """

    __slots__ = ("_messages", "source")

    def __init__(self, source: str, messages: list[Any]) -> None:
        self.source = source
        self._messages = messages

    def __len__(self) -> int:
        return len(self._messages)

    def values(self) -> list[bytes | None]:
        """The raw values, in order; ``None`` for a tombstone."""
        return [message.value for message in self._messages]

    def position(self, index: int) -> str:
        """Where the record at ``index`` sits, ``topic/partition@offset``."""
        return _position(self._messages[index])

    def metadata(self, index: int) -> dict[str, Any]:
        """What the mapping finds under ``_kafka`` in the record at ``index``."""
        return _metadata(self._messages[index])

    def record(self, index: int) -> RawRecord:
        """The record at ``index`` as :meth:`KafkaSource.poll` hands it out."""
        return record_of(self.source, self._messages[index])

    def records(self) -> list[RawRecord]:
        """Every record as :meth:`KafkaSource.poll` hands them out."""
        source = self.source
        return [record_of(source, message) for message in self._messages]

    @property
    def last_position(self) -> str:
        """The position of the last record, the one to commit once the batch is stored."""
        return _position(self._messages[-1])


def _position(message: Any) -> str:
    return f"{message.topic}/{message.partition}@{message.offset}"


def _metadata(message: Any) -> dict[str, Any]:
    return {
        "key": message.key.decode("utf-8", "replace") if message.key is not None else None,
        "headers": {k: v.decode("utf-8", "replace") for k, v in (message.headers or [])},
        "topic": message.topic, "partition": message.partition, "offset": message.offset,
        "timestamp": message.timestamp,
    }


def record_of(source: str, message: Any) -> RawRecord:
    """A message as a record: its value decoded, with its metadata under ``_kafka``."""
    position = _position(message)
    if message.value is None:
        # A tombstone (a compacted topic's delete marker, Debezium's after each
        # delete) holds no record: it is skipped and counted, never a dead letter.
        return RawRecord(source, position, None, None)
    try:
        value = orjson.loads(message.value)
    except orjson.JSONDecodeError as exc:
        return RawRecord(source, position, None, message.value, f"not valid JSON: {exc}")
    if type(value) is not dict:
        return RawRecord(source, position, None, message.value,
                         "expected a JSON object as the record value")
    value[METADATA_KEY] = _metadata(message)
    return RawRecord(source, position, value, message.value)
