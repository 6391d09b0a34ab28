"""Apache Kafka with confluent-kafka (librdkafka): the consumer's transport. One thread, the
runner's, owns the consumer (closing it from another can hang its poll) and the producer of
retries and dead letters. Each partition is a lane: its records are handled in order, and offsets
are committed only once records are handled, put to wait or dead-lettered, in the background, at
most every 10 ms. Records held count until their commit is confirmed: what a crash delivers again
is never more than PREFETCH_COUNT. The same consumer reads the wait topics (see `waits`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from ..base import Delivery, text_headers
from .records import Partition, PartitionedTransport, assignment, dead_letter_headers, group_id, partition_of
from .threaded_config import client_config, producer_config
from .threaded_logging import CLIENT_LOGGERS
from .threaded_publisher import FLUSH_SECONDS, BrokerPublisher
from .threaded_topics import POLL_SECONDS, ensure_topics
from .waits import Holds, Waiting, now_ms, pass_on, retries_of, send_to_wait, tier_of, wait_topics

if TYPE_CHECKING:
    from ...settings import Settings

__all__ = ["CLIENT_LOGGERS", "BrokerPublisher", "BrokerTransport"]

logger = logging.getLogger(__name__)

COMMIT_INTERVAL_SECONDS = 0.01  # settled offsets are committed this often at most
PRODUCE_TIMEOUT_SECONDS = 10.0  # for a retry, a dead letter or a record back from its wait to be acknowledged
MAX_POLL_INTERVAL_MS = 600_000  # a record may take this long before a rebalance
RecordHeaders = list[tuple[str, bytes | None]]


def headers_of(message: Message) -> RecordHeaders:
    headers = message.headers() or []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(key, value.encode() if isinstance(value, str) else value) for key, value in items]


def topic_partitions(offsets: dict[Partition, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]


Copy = tuple[str, bytes | None, bytes | None, Sequence[tuple[str, bytes | None]]]  # topic, value, key, headers


def produce_and_wait(producer: Producer, copies: Sequence[Copy], what: str) -> None:
    """Produce `copies` and return once the broker acknowledged every one; raise otherwise."""
    failures: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _: Message) -> None:
        if error is not None:
            failures.append(error)

    for topic, value, key, headers in copies:
        produced: list[tuple[str, str | bytes | None]] = [*headers]
        try:
            producer.produce(topic=topic, value=value, key=key, headers=produced, on_delivery=on_delivery)
        except BufferError as error:
            raise KafkaException(KafkaError(KafkaError._QUEUE_FULL, str(error))) from error
    if producer.flush(PRODUCE_TIMEOUT_SECONDS + 5) or failures:
        cause = failures[0] if failures else "no acknowledgement in time"
        raise KafkaException(f"could not pass on {what}: {cause}")


class BrokerTransport(PartitionedTransport):
    """The consumer's side: a consumer in the group, and a producer for retries and dead letters."""

    errors: tuple[type[BaseException], ...] = (KafkaException, TimeoutError)
    # librdkafka heartbeats from threads of its own; a handler may hold this one for MAX_POLL_INTERVAL_MS.
    handlers_may_hold_thread = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._fatal: KafkaError | None = None
        self._assigned = False  # between a rebalance's assignment and the next revocation
        self._holds = Holds()
        self._last_commit = 0.0  # when the last commit was sent (time.monotonic())
        # Half the window: the reply to one commit comes while the next half is handled.
        self._commit_batch = max(1, self.capacity // 2)

    def open(self) -> str:
        ensure_topics(self._settings)
        self._fatal = None
        self._ledger.clear()
        self._holds.clear()
        self._assigned = False
        self._producer = Producer(producer_config(self._settings, "settler", PRODUCE_TIMEOUT_SECONDS, self._on_fatal))
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
                # A fetch with nothing to return waits this long at most (librdkafka: 500 ms): a broker
                # that does not answer as soon as records arrive (tansu, over the wait topics'
                # partitions) otherwise holds a new record that long. At most 10 idle fetches a second.
                "fetch.wait.max.ms": 100,
                "on_commit": self._on_commit,
            }
        )
        self._consumer.subscribe(
            [self._settings.queue_name, *wait_topics(self._settings)],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        return f"{self._settings.queue_name!r} in group {group_id(self._settings)!r}"

    def _on_fatal(self, error: KafkaError) -> None:
        """The consumer or its producer cannot go on: the next fetch fails, and the runner starts over."""
        self._fatal = error

    def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        consumer, producer = self._clients()
        self._release_holds(consumer)
        next_release = self._holds.seconds_to_next(now_ms())
        # The first record may take `wait_seconds`; the rest is only what is already fetched. consume(n,
        # timeout) would wait for n records or the whole timeout, holding a lone message back. It
        # also serves the replies to commits, so the room is counted after it (and is at least 1).
        records = consumer.consume(1, timeout=min(wait_seconds, next_release or wait_seconds))
        room = self._room(max_count, consumer)
        if records and room > 1:
            records += consumer.consume(room - 1, timeout=0)
        producer.poll(0)
        deliveries, waits = [], []
        for record in records:
            if not self._usable(record):
                continue
            tier = tier_of(self._settings, record.topic() or "")
            if tier is None:
                deliveries.append(self._delivery(record))
            else:
                waits.append((self._waiting(record, tier), record))
        if waits:
            self._pass_on(waits, consumer)
        self._commit_in_background()
        return deliveries

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

    @staticmethod
    def _usable(record: Message) -> bool:
        """A record, not an error the client reports in its place."""
        error = record.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            logger.warning("consumer: %s", error)
            return False
        return record.topic() is not None and record.partition() is not None and record.offset() is not None

    @staticmethod
    def _delivery(record: Message) -> Delivery:
        headers = headers_of(record)
        lane: Partition = (record.topic() or "", record.partition() or 0)
        extra = {"headers": headers}
        return Delivery(record.value() or b"", text_headers(headers), retries_of(headers), record, lane, extra)

    @staticmethod
    def _waiting(record: Message, tier_ms: int) -> Waiting:
        partition: Partition = (record.topic() or "", record.partition() or 0)
        return Waiting(partition, record.offset() or 0, record.timestamp()[1], tier_ms, headers_of(record))

    def _pass_on(self, fetched: list[tuple[Waiting, Message]], consumer: Consumer) -> None:
        """Records whose wait is over go on (to a shorter wait or the task topic), and are settled
        once the broker has them; a partition whose head still waits is paused until it is due."""
        onward, held = pass_on(self._settings, fetched, self._holds, now_ms())
        for waiting in held:
            topic, partition = waiting.partition
            consumer.pause([TopicPartition(topic, partition)])
            consumer.seek(TopicPartition(topic, partition, waiting.offset))
        if onward:
            self._produce([(destination, record, headers_of(record)) for record, destination in onward])
            for record, _ in onward:
                self._ledger.settled((record.topic() or "", record.partition() or 0), record.offset() or 0)

    def _release_holds(self, consumer: Consumer) -> None:
        released = self._holds.release(now_ms())
        if released:
            consumer.resume([TopicPartition(topic, partition) for topic, partition in released])

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
        """Produce to the wait topic for `delay_seconds` and wait for the broker's ack, then count the record done."""
        record: Message = delivery.handle
        topic, headers = send_to_wait(self._settings, delivery.extra["headers"], delay_seconds, delivery.retries + 1)
        self._produce([(topic, record, headers)])
        self._ledger.settled(partition_of(delivery), record.offset() or 0)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Produce to the dead-letter topic and wait for the broker's ack, then count the record done."""
        record: Message = delivery.handle
        partition, offset = record.partition() or 0, record.offset() or 0
        headers = dead_letter_headers(delivery.extra["headers"], reason, partition, offset, delivery.retries + 1)
        self._produce([(self._settings.dead_letter_queue, record, [*headers])])
        logger.info("dead-lettered offset %d of partition %d: %s", offset, partition, reason)
        self._ledger.settled(partition_of(delivery), offset)

    def _produce(self, records: Sequence[tuple[str, Message, Sequence[tuple[str, bytes | None]]]]) -> None:
        """Copies of `records` (their key and value) to the topics given, with the headers given;
        returns once the broker acknowledged every one, raises otherwise."""
        _, producer = self._clients()
        copies = [(topic, record.value(), record.key(), headers) for topic, record, headers in records]
        first = records[0][1]
        produce_and_wait(producer, copies, f"offset {first.offset()} of {first.topic()} [{first.partition()}]")

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
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._ledger.assigned(keys)
        logger.info("assigned partitions %s", assignment(self._settings, keys))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Runs inside consume(), between fetches: commit what was done before the partitions move on."""
        keys = {(tp.topic, tp.partition) for tp in partitions}
        try:
            self._commit(self._ledger.due(keys), consumer)
        finally:
            self._assigned = False
            self._ledger.revoked(keys)
            self._holds.revoked(keys)
        logger.info("partitions %s revoked", assignment(self._settings, keys))

    def _on_lost(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        """Taken away without a goodbye (the session timed out): a commit would fail; their new owner reads again."""
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned = False
        self._ledger.revoked(keys)
        self._holds.revoked(keys)
        logger.warning("partitions %s lost", assignment(self._settings, keys))
