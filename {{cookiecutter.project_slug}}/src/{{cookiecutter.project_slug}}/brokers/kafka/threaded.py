"""Apache Kafka with confluent-kafka (librdkafka): the consumer's transport. One thread, the
runner's, owns the consumer (closing it from another can hang its poll) and the dead-letter
producer. Each partition is a lane: its records are handled in order, and offsets are committed
only once records are handled or dead-lettered, in the background, at most every 10 ms. Records
held count until their commit is confirmed: what a crash delivers again is never more than
PREFETCH_COUNT. Kafka has no per-record nack, so a failing record is retried in place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from ..base import Delivery, text_headers
from .records import Partition, PartitionedTransport, dead_letter_headers, group_id, partition_of
from .threaded_config import client_config, producer_config
from .threaded_logging import CLIENT_LOGGERS
from .threaded_publisher import FLUSH_SECONDS, BrokerPublisher
from .threaded_topics import POLL_SECONDS, ensure_topics

if TYPE_CHECKING:
    from ...settings import Settings

__all__ = ["CLIENT_LOGGERS", "BrokerPublisher", "BrokerTransport"]

logger = logging.getLogger(__name__)

COMMIT_INTERVAL_SECONDS = 0.01  # settled offsets are committed this often at most
DEAD_LETTER_TIMEOUT_SECONDS = 10.0  # for one dead letter to be acknowledged
MAX_POLL_INTERVAL_MS = 600_000  # a record may take this long (in-place retries included) before a rebalance
RecordHeaders = list[tuple[str, bytes | None]]


def headers_of(message: Message) -> RecordHeaders:
    headers = message.headers() or []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(key, value.encode() if isinstance(value, str) else value) for key, value in items]


def topic_partitions(offsets: dict[Partition, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]


class BrokerTransport(PartitionedTransport):
    """The consumer's side: a consumer in the group and a producer for dead letters."""

    errors: tuple[type[BaseException], ...] = (KafkaException, TimeoutError)
    # librdkafka heartbeats from threads of its own; a handler may hold this one for MAX_POLL_INTERVAL_MS.
    handlers_may_hold_thread = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._fatal: KafkaError | None = None
        self._assigned = False  # between a rebalance's assignment and the next revocation
        self._last_commit = 0.0  # when the last commit was sent (time.monotonic())
        # Half the window: the reply to one commit comes while the next half is handled.
        self._commit_batch = max(1, self.capacity // 2)

    def open(self) -> str:
        ensure_topics(self._settings)
        self._fatal = None
        self._ledger.clear()
        self._assigned = False
        self._producer = Producer(
            producer_config(self._settings, "dead-letters", DEAD_LETTER_TIMEOUT_SECONDS, self._on_fatal)
        )
        session_ms = int(self._settings.session_timeout_seconds * 1000)
        self._consumer = Consumer(
            {
                **client_config(self._settings, "consumer", self._on_fatal),
                "group.id": group_id(self._settings),
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(1, session_ms // 3),
                "max.poll.interval.ms": max(MAX_POLL_INTERVAL_MS, session_ms),
                "on_commit": self._on_commit,
            }
        )
        self._consumer.subscribe(
            [self._settings.queue_name], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        return f"{self._settings.queue_name!r} in group {group_id(self._settings)!r}"

    def _on_fatal(self, error: KafkaError) -> None:
        """The consumer or its producer cannot go on: the next fetch fails, and the runner starts over."""
        self._fatal = error

    def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        consumer, producer = self._clients()
        # The first record may take `wait_seconds`; the rest is only what is already fetched. consume(n,
        # timeout) would wait for n records or the whole timeout, holding a lone message back. It
        # also serves the replies to commits, so the room is counted after it (and is at least 1).
        records = consumer.consume(1, timeout=wait_seconds)
        room = self._room(max_count, consumer)
        if records and room > 1:
            records += consumer.consume(room - 1, timeout=0)
        producer.poll(0)
        self._commit_in_background()
        return [delivery for record in records if (delivery := self._delivery(record)) is not None]

    def _room(self, max_count: int, consumer: Consumer) -> int:
        """How many of `max_count` records may be fetched: the runner counts what it holds, this
        what is settled but not confirmed committed. No room: wait for a commit of it all."""
        room = max_count - self._ledger.uncommitted()
        if room > 0:
            return room
        self._commit(self._ledger.unconfirmed(), consumer)
        room = max_count - self._ledger.uncommitted()
        if room > 0:
            return room
        raise KafkaException("offsets settled long ago are still not committed")

    def _delivery(self, record: Message) -> Delivery | None:
        error = record.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            logger.warning("consumer: %s", error)
            return None
        topic, partition, offset = record.topic(), record.partition(), record.offset()
        if topic is None or partition is None or offset is None:
            return None
        headers = headers_of(record)
        lane: Partition = (topic, partition)
        return Delivery(record.value() or b"", text_headers(headers), 0, record, lane, {"headers": headers})

    def pump(self) -> None:
        self._clients()[1].poll(0)  # the dead-letter producer's delivery reports
        self._commit_in_background()

    def unsubscribe(self) -> int:
        return 0  # records are fetched only when asked for

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Count them done, and commit in the background what is settled."""
        for delivery in deliveries:
            self._ledger.settled(partition_of(delivery), delivery.handle.offset())
        self._commit_in_background(at_once=self._ledger.unsent() >= self._commit_batch)

    def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        raise NotImplementedError("Kafka retries in place: the runner never asks the broker to")

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Produce to the dead-letter topic and wait for the broker's ack, then count the record done."""
        _, producer = self._clients()
        record: Message = delivery.handle
        partition, offset = record.partition() or 0, record.offset() or 0
        failures: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _: Message) -> None:
            if error is not None:
                failures.append(error)

        headers = dead_letter_headers(delivery.extra["headers"], reason, partition, offset, delivery.retries + 1)
        dead_headers: list[tuple[str, str | bytes | None]] = [*headers]
        try:
            producer.produce(
                topic=self._settings.dead_letter_queue,
                value=record.value(),
                key=record.key(),
                headers=dead_headers,
                on_delivery=on_delivery,
            )
        except BufferError as error:
            raise KafkaException(KafkaError(KafkaError._QUEUE_FULL, str(error))) from error
        if producer.flush(DEAD_LETTER_TIMEOUT_SECONDS + 5) or failures:
            cause = failures[0] if failures else "no acknowledgement in time"
            raise KafkaException(f"could not dead-letter offset {offset} of partition {partition}: {cause}")
        logger.info("dead-lettered offset %d of partition %d: %s", offset, partition, reason)
        self._ledger.settled(partition_of(delivery), offset)

    def close(self) -> None:
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        if consumer is not None:
            try:
                self._finish_joining(consumer)
                self._commit(self._ledger.due(), consumer)
                consumer.close()  # leaves the group: its partitions move on at once
            except Exception as error:
                logger.warning("closing the consumer failed: %r", error)
        if producer is not None:
            producer.flush(FLUSH_SECONDS)

    def _clients(self) -> tuple[Consumer, Producer]:
        if self._fatal is not None:
            raise KafkaException(self._fatal)
        if self._consumer is None or self._producer is None:
            raise KafkaException("the consumer is closed")
        return self._consumer, self._producer

    def _finish_joining(self, consumer: Consumer) -> None:
        """Before leaving, let a rebalance in progress finish (briefly): some Kafka-compatible brokers
        wedge a group whose member leaves in the middle of one. What is read meanwhile is not handled,
        so not committed: it is delivered again."""
        deadline = time.monotonic() + self._settings.session_timeout_seconds
        while not self._assigned and self._fatal is None and time.monotonic() < deadline:
            consumer.poll(POLL_SECONDS)

    def _commit(self, offsets: dict[Partition, int], consumer: Consumer | None = None) -> None:
        consumer = consumer or self._consumer
        if not offsets or consumer is None:
            return
        try:
            committed = consumer.commit(offsets=topic_partitions(offsets), asynchronous=False)
        except KafkaException as error:
            # Kept for the next commit; if the partitions move on, their new owner reads again: duplicates, no loss.
            logger.warning("could not commit offsets: %s", error)
            return
        self._ledger.committed({(tp.topic, tp.partition): tp.offset for tp in committed or () if tp.error is None})
        for tp in committed or ():
            if tp.error is not None:
                logger.warning("could not commit offset %d of partition %d: %s", tp.offset, tp.partition, tp.error)

    def _commit_in_background(self, at_once: bool = False) -> None:
        """Send a commit of what is settled, without waiting for the reply, at most every
        COMMIT_INTERVAL_SECONDS, or `at_once` (half a window is settled). The reply comes to
        `_on_commit` during a later fetch."""
        now = time.monotonic()
        if not at_once and now - self._last_commit < COMMIT_INTERVAL_SECONDS:
            return
        offsets = self._ledger.due()
        if not offsets or self._consumer is None:
            return
        try:
            self._consumer.commit(offsets=topic_partitions(offsets), asynchronous=True)
        except KafkaException as error:
            logger.warning("could not commit offsets: %s", error)  # kept for the next commit
            return
        self._ledger.sent(offsets)
        self._last_commit = now

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The broker's reply: what a failed commit covered is due again, unless a later commit covers it."""
        for tp in partitions:
            if error is None and tp.error is None:
                self._ledger.committed({(tp.topic, tp.partition): tp.offset})
            else:
                cause = error or tp.error
                logger.warning("could not commit offset %d of partition %d: %s", tp.offset, tp.partition, cause)
                self._ledger.failed((tp.topic, tp.partition), tp.offset)

    def _on_assign(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = True
        self._ledger.assigned((tp.topic, tp.partition) for tp in partitions)
        logger.info("assigned partitions %s", sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Runs inside consume(), between fetches: commit what was done before the partitions move on."""
        keys = {(tp.topic, tp.partition) for tp in partitions}
        try:
            self._commit(self._ledger.due(keys), consumer)
        finally:
            self._assigned = False
            self._ledger.revoked(keys)
        logger.info("partitions %s revoked", sorted(partition for _, partition in keys))

    def _on_lost(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        """Taken away without a goodbye (the session timed out): a commit would fail; their new owner reads again."""
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned = False
        self._ledger.revoked(keys)
        logger.warning("partitions %s lost", sorted(partition for _, partition in keys))
