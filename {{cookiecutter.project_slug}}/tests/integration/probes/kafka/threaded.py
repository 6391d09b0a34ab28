"""Talks to Kafka directly, as another program would, to set up and inspect integration tests.

Counts are made by reading records, never from watermarks: some Kafka-compatible brokers report
a high watermark that undercounts batched writes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Received:
    body: bytes
    headers: dict[str, str]
    key: bytes | None = None


def received(message: Message) -> Received:
    headers = message.headers() or []
    items = headers.items() if isinstance(headers, dict) else headers
    decoded = {key: value.decode(errors="replace") if isinstance(value, bytes) else value or "" for key, value in items}
    return Received(body=message.value() or b"", headers=decoded, key=message.key())


class Probe:
    def __init__(self, url: str) -> None:
        servers = urlsplit(url).netloc.rpartition("@")[2].split(",")
        self._config: dict[str, Any] = {
            "bootstrap.servers": ",".join(server if ":" in server else f"{server}:9092" for server in servers),
            "socket.timeout.ms": int(TIMEOUT_SECONDS * 1000),
            "allow.auto.create.topics": False,  # asking about a topic must not create it: that is the service's job
        }
        self._admin = AdminClient(self._config)

    def check(self) -> None:
        """Raise if the broker cannot be reached."""
        self._admin.list_topics(timeout=TIMEOUT_SECONDS)

    def publish(self, topic: str, *bodies: bytes) -> None:
        failures: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _: Message) -> None:
            if error is not None:
                failures.append(error)

        producer = Producer({**self._config, "acks": "all", "message.timeout.ms": int(TIMEOUT_SECONDS * 1000)})
        for body in bodies:
            producer.produce(topic, value=body, on_delivery=on_delivery)
            producer.poll(0)
        unsent = producer.flush(TIMEOUT_SECONDS + 5)
        if unsent or failures:
            raise RuntimeError(f"{unsent} record(s) unsent, {len(failures)} failed: {failures[:3]}")

    def _partitions(self, topic: str) -> list[int]:
        metadata = self._admin.list_topics(topic, timeout=TIMEOUT_SECONDS)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            raise LookupError(f"no topic {topic!r}")
        return sorted(found.partitions)

    def _reader(self) -> Consumer:
        """Outside any group in effect: assigned partitions, it never joins its own (the client wants
        a group id), and commits nothing."""
        group = f"probe-{uuid.uuid4().hex}"
        return Consumer({**self._config, "group.id": group, "enable.auto.commit": False, "enable.partition.eof": True})

    def count(self, topic: str, group: str = "") -> int:
        """Records `group` (by default `<topic>.workers`) has not committed, counted by reading them."""
        partitions = [TopicPartition(topic, partition) for partition in self._partitions(topic)]
        # In the group, but never joining it: it only asks for the committed offsets.
        member = Consumer({**self._config, "group.id": group or f"{topic}.workers", "enable.auto.commit": False})
        try:
            committed = member.committed(partitions, timeout=TIMEOUT_SECONDS)
        finally:
            member.close()
        starts = [
            TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING) for tp in committed
        ]
        reader = self._reader()
        try:
            reader.assign(starts)
            at_end: set[int] = set()
            records = 0
            deadline = time.monotonic() + TIMEOUT_SECONDS
            while len(at_end) < len(starts):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic!r} not read to its end within {TIMEOUT_SECONDS} s")
                for message in reader.consume(1000, timeout=0.1):
                    error = message.error()
                    if error is None:
                        records += 1
                    elif error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition() or 0)
                    else:
                        raise KafkaException(error)
            return records
        finally:
            reader.close()

    def take(self, topic: str, expected: int, timeout: float = 15.0) -> list[Received]:
        """Read the topic from the beginning until `expected` records arrived or the deadline passed."""
        deadline = time.monotonic() + timeout
        partitions = self._partitions(topic)
        reader = self._reader()
        try:
            reader.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in partitions])
            taken: list[Received] = []
            while len(taken) < expected and time.monotonic() < deadline:
                for message in reader.consume(expected - len(taken), timeout=0.1):
                    if message.error() is None:
                        taken.append(received(message))
            return taken
        finally:
            reader.close()

    def delete(self, *topics: str) -> None:
        for future in self._admin.delete_topics(list(topics), operation_timeout=TIMEOUT_SECONDS).values():
            try:
                future.result(TIMEOUT_SECONDS + 5)
            except KafkaException as error:
                if error.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise
