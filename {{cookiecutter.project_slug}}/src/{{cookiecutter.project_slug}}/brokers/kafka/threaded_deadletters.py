"""The dead-letter tool's side of Kafka with confluent-kafka (see `deadletters`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from ...deadletters import DeadLetter, Progress
from ..base import BrokerUnavailable
from .deadletters import Record, oldest_first, steps, tool_group
from .threaded import headers_of, produce_and_wait
from .threaded_config import client_config, producer_config

if TYPE_CHECKING:
    from ...settings import Settings

TIMEOUT_SECONDS = 10.0  # for the broker to answer one request, or the end of a partition to be read


def open_queue(settings: Settings) -> DeadLetterQueue:
    try:
        return DeadLetterQueue(settings)
    except KafkaException as error:
        raise BrokerUnavailable(f"cannot use Kafka at {settings.broker_address}: {error}") from error


class DeadLetterQueue:
    errors: tuple[type[BaseException], ...] = (KafkaException,)

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.name = settings.dead_letter_queue
        self._consumer = Consumer(
            {
                **client_config(settings, "deadletters"),
                "group.id": tool_group(settings),
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        self._producer = Producer(producer_config(settings, "deadletters", TIMEOUT_SECONDS, lambda _: None))
        try:
            metadata = self._consumer.list_topics(self.name, timeout=TIMEOUT_SECONDS)
        except KafkaException:
            self.close()
            raise
        topic = metadata.topics.get(self.name)
        if topic is None or topic.error is not None:
            self.close()
            raise BrokerUnavailable(f"no topic {self.name!r}: has the service run yet?")
        self._partitions = sorted(topic.partitions)

    def count(self) -> int:
        return sum(len(records) for records in self._live().values())

    def peek(self, limit: int | None) -> list[DeadLetter]:
        return oldest_first(self._live(), limit)

    def replay(self, ids: set[str] | None, progress: Progress) -> int:
        return self._carry_out(ids, progress, replay=True)

    def purge(self, ids: set[str] | None, progress: Progress) -> int:
        return self._carry_out(ids, progress, replay=False)

    def close(self) -> None:
        self._producer.flush(TIMEOUT_SECONDS)
        self._consumer.close()

    def _carry_out(self, ids: set[str] | None, progress: Progress, replay: bool) -> int:
        done = 0
        for records in self._live().values():
            for step in steps(self._settings, records, ids, replay):
                record = step.record
                if step.topic is not None:
                    copy = (step.topic, record.value, record.key, step.headers)
                    produce_and_wait(self._producer, [copy], f"offset {record.offset} of partition {record.partition}")
                self._consumer.commit(
                    offsets=[TopicPartition(self.name, record.partition, record.offset + 1)], asynchronous=False
                )
                if step.topic != self.name:  # not a kept one
                    done += 1
                    progress(done)
        return done

    def _live(self) -> dict[int, list[Record]]:
        """Each partition's records after the tool's committed offset, read to the partition's end."""
        partitions = [TopicPartition(self.name, partition) for partition in self._partitions]
        committed = self._consumer.committed(partitions, timeout=TIMEOUT_SECONDS)
        starts = [
            TopicPartition(self.name, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
            for tp in committed
        ]
        live: dict[int, list[Record]] = {partition: [] for partition in self._partitions}
        self._consumer.assign(starts)
        try:
            at_end: set[int] = set()
            deadline = time.monotonic() + TIMEOUT_SECONDS
            while len(at_end) < len(starts):
                if time.monotonic() > deadline:
                    raise KafkaException(f"{self.name!r} not read to its end within {TIMEOUT_SECONDS} s")
                for message in self._consumer.consume(1000, timeout=0.1):
                    error = message.error()
                    if error is None:
                        live[message.partition() or 0].append(record_of(message))
                    elif error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition() or 0)
                    else:
                        raise KafkaException(error)
        finally:
            self._consumer.unassign()
        return live


def record_of(message: Message) -> Record:
    headers = [(key, value or b"") for key, value in headers_of(message)]
    return Record(
        message.partition() or 0,
        message.offset() or 0,
        message.timestamp()[1],
        message.key(),
        message.value() or b"",
        headers,
    )
