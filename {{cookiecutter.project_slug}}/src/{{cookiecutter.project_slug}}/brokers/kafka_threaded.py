"""Apache Kafka with confluent-kafka (librdkafka), which is not asyncio but reconnects by itself.
The publisher's thread polls its producer so delivery reports resolve the futures the API awaits.
The consumer is owned by one thread (closing it from another can hang its poll); handlers run in
a pool, one partition's records in order, and offsets are committed only once records are handled
or dead-lettered. Kafka has no per-record nack, so a failing record is retried in place.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # where the stubs declare it; confluent_kafka.admin re-exports it untyped

from ..messages import TaskMessage, encode
from ..processing import Outcome, Processor
from ..settings import Settings
from .base import Backoff, BrokerUnavailable, text_headers
from .kafka_records import dead_letter_headers, retry_pause

__all__ = ["CLIENT_LOGGERS", "BrokerConsumer", "BrokerPublisher"]

logger = logging.getLogger(__name__)

# librdkafka's log lines, through Python logging (served by poll). It logs every failed connect; ours say it once.
CLIENT_LOGGERS = ("confluent_kafka",)
client_logger = logging.getLogger(CLIENT_LOGGERS[0])

ADMIN_TIMEOUT_SECONDS = 10.0  # for one attempt to create the topics
DEAD_LETTER_TIMEOUT_SECONDS = 10.0  # for one dead letter to be acknowledged
FLUSH_SECONDS = 5.0  # for messages still in flight at close
POLL_SECONDS = 0.1
REQUEST_TIMEOUT_MARGIN_MS = 5000  # over the session timeout: a JoinGroup may be held that long
OUTAGE_LOG_SECONDS = 60.0  # how often a client says again that it cannot reach Kafka
MAX_POLL_INTERVAL_MS = 600_000  # a batch may take this long (in-place retries included) before a rebalance

Partition = tuple[str, int]  # (topic, partition)
Batch = dict[Partition, list[tuple[int, Message]]]  # (offset, record) in offset order, per partition
RecordHeaders = list[tuple[str, bytes | None]]


class ClientLog:
    """One client's log lines and error events. librdkafka reports each failed connect, several a
    second while the broker is down: those go to DEBUG, and the outage is said once a minute."""

    def __init__(self, name: str, on_fatal: Callable[[KafkaError], None] | None) -> None:
        self._name = name
        self._on_fatal = on_fatal
        self._outage_logged = -OUTAGE_LOG_SECONDS

    def log(self, level: int, message: str, *args: Any) -> None:
        """The `logger` librdkafka calls: `log(level, "%s [%s] %s", facility, client, text)`."""
        client_logger.log(logging.DEBUG if args[:1] == ("FAIL",) else level, message, *args)

    def on_error(self, error: KafkaError) -> None:
        if error.fatal():
            logger.error("%s failed for good: %s", self._name, error)
            if self._on_fatal is not None:
                self._on_fatal(error)
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            if time.monotonic() - self._outage_logged >= OUTAGE_LOG_SECONDS:
                self._outage_logged = time.monotonic()
                logger.warning("%s cannot reach Kafka (it keeps trying): %s", self._name, error)
        else:
            logger.debug("%s: %s", self._name, error)


def client_config(
    settings: Settings, name: str, on_fatal: Callable[[KafkaError], None] | None = None
) -> dict[str, Any]:
    log = ClientLog(name, on_fatal)
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": f"{settings.queue_name}-{name}",
        "reconnect.backoff.max.ms": 2000,  # back within seconds of the broker's return, not librdkafka's 10
        # A request unanswered this long means a stuck connection: librdkafka drops it and reconnects.
        "socket.timeout.ms": int(settings.session_timeout_seconds * 1000) + REQUEST_TIMEOUT_MARGIN_MS,
        "logger": log,
        "error_cb": log.on_error,
        # Topics are the service's, with its partitions: a typo'd or deleted one must not come back with defaults.
        "allow.auto.create.topics": False,
    }


def producer_config(
    settings: Settings, name: str, timeout_seconds: float, on_fatal: Callable[[KafkaError], None]
) -> dict[str, Any]:
    return {
        **client_config(settings, name, on_fatal),
        "enable.idempotence": settings.producer_idempotence,
        "acks": "all",
        # The producer gives up about when its caller does, so a message answered with 503 is rarely written later.
        "message.timeout.ms": max(1, int(timeout_seconds * 1000)),
    }


def start_creating_topics(settings: Settings) -> tuple[AdminClient, dict[str, Future[Any]]]:
    """Ask for the task and dead-letter topics; the admin client must outlive the futures it resolves."""
    admin = AdminClient(client_config(settings, "admin"))
    topics = [
        NewTopic(name, num_partitions=settings.topic_partitions, replication_factor=settings.topic_replication)
        for name in (settings.queue_name, settings.dead_letter_queue)
    ]
    futures = admin.create_topics(
        topics, request_timeout=ADMIN_TIMEOUT_SECONDS, operation_timeout=ADMIN_TIMEOUT_SECONDS
    )
    return admin, futures


def raise_unless_created(futures: Mapping[str, Future[Any]]) -> None:
    """Idempotent: a topic that already exists is as good as one just created."""
    for future in futures.values():
        try:
            future.result(0)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


class TopicCreation:
    """Creates the topics if missing, retrying with backoff, in steps that never block: the
    publisher's thread keeps polling its producer meanwhile, the consumer's keeps an eye on stop()."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._attempt: tuple[AdminClient, dict[str, Future[Any]]] | None = None
        self._backoff = Backoff()
        self._next_attempt = 0.0
        self.done = False

    def step(self) -> None:
        """Start an attempt when one is due, or collect the one in flight."""
        if self.done:
            return
        if self._attempt is None:
            if time.monotonic() >= self._next_attempt:
                self._attempt = start_creating_topics(self._settings)
            return
        _, futures = self._attempt
        if not all(future.done() for future in futures.values()):
            return
        self._attempt = None  # only now may the admin client go: it resolves the futures
        try:
            raise_unless_created(futures)
        except KafkaException as error:
            logger.warning("cannot create topics at %s: %s", self._settings.broker_address, error)
            self._next_attempt = time.monotonic() + self._backoff.next_delay()
        else:
            self.done = True
            logger.info("topics %r and %r are there", self._settings.queue_name, self._settings.dead_letter_queue)

    def wait(self, stopping: threading.Event) -> bool:
        """Step until the topics are there (True) or `stopping` is set (False)."""
        self.step()
        while not self.done:
            if stopping.wait(POLL_SECONDS):
                return False
            self.step()
        return True


def headers_of(message: Message) -> RecordHeaders:
    headers = message.headers() or []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(key, value.encode() if isinstance(value, str) else value) for key, value in items]


class BrokerPublisher:
    """One producer, `acks=all`; 202 only once its delivery report resolved the caller's future."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._fatal = threading.Event()
        self._producer = self._new_producer()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-publisher", daemon=True)

    def _new_producer(self) -> Producer:
        config = producer_config(self._settings, "publisher", self._settings.publish_timeout_seconds, self._on_fatal)
        return Producer(config)

    def _on_fatal(self, _: KafkaError) -> None:
        self._fatal.set()  # the thread replaces the producer

    async def start(self) -> None:
        self._thread.start()

    async def publish(self, message: TaskMessage, headers: Mapping[str, str]) -> None:
        delivered: Future[None] = Future()
        # Running from the start: a caller that gives up cannot cancel it under the delivery report's feet.
        delivered.set_running_or_notify_cancel()

        def on_delivery(error: KafkaError | None, _: Message) -> None:
            if error is None:
                delivered.set_result(None)
                return
            delivered.set_exception(BrokerUnavailable(f"Kafka did not accept the message: {error}"))
            if error.code() == KafkaError.PRODUCER_FENCED:
                self._on_fatal(error)  # a fenced producer never sends again

        record_headers: list[tuple[str, str | bytes | None]] = [(key, value.encode()) for key, value in headers.items()]
        try:
            self._producer.produce(
                topic=self._settings.queue_name,
                value=encode(message),
                key=message.id,
                headers=record_headers,
                on_delivery=on_delivery,
            )
        except BufferError as error:
            raise BrokerUnavailable("too many messages wait for Kafka already") from error
        except KafkaException as error:
            raise BrokerUnavailable(f"Kafka refused the message: {error}") from error
        await asyncio.wrap_future(delivered)

    async def ping(self) -> None:
        queue_name = self._settings.queue_name
        try:
            metadata = await asyncio.to_thread(
                self._producer.list_topics, queue_name, self._settings.ready_timeout_seconds
            )
        except KafkaException as error:
            raise BrokerUnavailable(f"Kafka at {self._settings.broker_address} did not answer: {error}") from error
        topic = metadata.topics.get(queue_name)
        if topic is None or topic.error is not None:
            raise BrokerUnavailable(f"no topic {queue_name!r} yet: {topic.error if topic else 'unknown'}")

    async def close(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, FLUSH_SECONDS + 5)

    def _run(self) -> None:
        topics = TopicCreation(self._settings)
        while not self._stopping.is_set():
            try:
                self._producer.poll(POLL_SECONDS)  # runs the delivery reports
                topics.step()
                if self._fatal.is_set():
                    self._replace_producer()
            except Exception:
                # Never let the publisher's thread die: log the bug and carry on.
                logger.exception("publisher's thread failed unexpectedly; carrying on")
                self._stopping.wait(1.0)
        unconfirmed = self._producer.flush(FLUSH_SECONDS)
        if unconfirmed:
            logger.warning("publisher closed with %d message(s) unconfirmed", unconfirmed)

    def _replace_producer(self) -> None:
        logger.warning("publisher's producer cannot go on; replacing it")
        broken, self._producer = self._producer, self._new_producer()
        self._fatal.clear()
        broken.purge()  # fails what it still holds: those callers get 503
        broken.poll(0)


class BrokerConsumer:
    """Consumes in one thread that owns the consumer; each batch's partitions run in parallel in
    a pool, each partition's records in order; offsets are committed after the batch."""

    def __init__(self, settings: Settings, processor: Processor) -> None:
        self._settings = settings
        self._processor = processor
        self._stopping = threading.Event()
        self._subscribed = threading.Event()
        self._fatal: KafkaError | None = None
        self._pool = ThreadPoolExecutor(settings.handler_threads, thread_name_prefix="handler")
        self._thread = threading.Thread(target=self._run, name="kafka-consumer", daemon=True)
        # Owned by the consumer's thread (rebalance callbacks run there too):
        self._done: dict[Partition, int] = {}  # the next offset to commit, per partition
        self._rewound: dict[Partition, int] = {}  # where a partition was sought back to, until it reads from there
        self._assigned = False  # between a rebalance's assignment and the next revocation

    async def start(self) -> None:
        self._thread.start()

    def is_running(self) -> bool:
        return self._subscribed.is_set() and self._thread.is_alive()

    async def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            bound = self._settings.shutdown_timeout_seconds + self._settings.session_timeout_seconds + FLUSH_SECONDS
            await asyncio.to_thread(self._thread.join, bound + 5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _on_fatal(self, error: KafkaError) -> None:
        """The consumer or its producer cannot go on: the thread starts over with new ones."""
        self._fatal = error
        self._subscribed.clear()

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            consumer = producer = None
            try:
                if not TopicCreation(self._settings).wait(self._stopping):
                    break
                producer = Producer(
                    producer_config(self._settings, "dead-letters", DEAD_LETTER_TIMEOUT_SECONDS, self._on_fatal)
                )
                consumer = self._new_consumer()
                consumer.subscribe(
                    [self._settings.queue_name],
                    on_assign=self._on_assign,
                    on_revoke=self._on_revoke,
                    on_lost=self._on_lost,
                )
                self._subscribed.set()
                backoff.reset()
                logger.info("consuming %r in group %r", self._settings.queue_name, self._settings.group_id)
                self._consume(consumer, producer)
            except (KafkaException, TimeoutError) as error:
                logger.warning("consumer lost Kafka at %s: %s", self._settings.broker_address, error)
            except Exception:
                # Never let the consumer's thread die: log the bug and start over.
                logger.exception("consumer failed unexpectedly; starting over")
            finally:
                self._subscribed.clear()
                self._close(consumer, producer)
            self._stopping.wait(backoff.next_delay())

    def _new_consumer(self) -> Consumer:
        self._fatal = None
        self._done.clear()
        self._rewound.clear()
        self._assigned = False
        session_ms = int(self._settings.session_timeout_seconds * 1000)
        return Consumer(
            {
                **client_config(self._settings, "consumer", self._on_fatal),
                "group.id": self._settings.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(1, session_ms // 3),
                "max.poll.interval.ms": max(MAX_POLL_INTERVAL_MS, session_ms),
            }
        )

    def _close(self, consumer: Consumer | None, producer: Producer | None) -> None:
        if consumer is not None:
            try:
                self._commit(consumer, set(self._done))
                consumer.close()  # leaves the group: its partitions move on at once
            except Exception as error:
                logger.warning("closing the consumer failed: %r", error)
        if producer is not None:
            producer.flush(FLUSH_SECONDS)

    def _consume(self, consumer: Consumer, producer: Producer) -> None:
        while not self._stopping.is_set():
            if self._fatal is not None:
                raise KafkaException(self._fatal)
            # The first record may take up to a second; the rest of the batch is only what is already
            # fetched. consume(n, timeout) would wait for n records or the whole timeout, holding a
            # lone message back for up to a second at a moderate rate.
            records = consumer.consume(1, timeout=1.0)
            if records and self._settings.prefetch_count > 1:
                records += consumer.consume(self._settings.prefetch_count - 1, timeout=0)
            producer.poll(0)
            batch = self._batch_of(consumer, records)
            if batch:
                self._process(consumer, producer, batch)
                self._commit(consumer, set(batch))
        self._finish_joining(consumer)

    def _finish_joining(self, consumer: Consumer) -> None:
        """Before leaving, let a rebalance in progress finish (briefly): some Kafka-compatible brokers
        wedge a group whose member leaves in the middle of one. What is read meanwhile is not handled,
        so not committed: it is delivered again."""
        deadline = time.monotonic() + self._settings.session_timeout_seconds
        while not self._assigned and self._fatal is None and time.monotonic() < deadline:
            consumer.poll(POLL_SECONDS)

    def _batch_of(self, consumer: Consumer, records: list[Message]) -> Batch:
        """The records to handle, by partition, in offset order."""
        batch: Batch = {}
        sought: set[Partition] = set()
        for record in records:
            error = record.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                logger.warning("consumer: %s", error)
                continue
            topic, partition, offset = record.topic(), record.partition(), record.offset()
            if topic is None or partition is None or offset is None:
                continue
            key = (topic, partition)
            rewound = self._rewound.get(key)
            if rewound is not None and offset > rewound:
                # Fetched before the seek back took effect: handling it would let a commit skip the failed record.
                if key not in sought:
                    sought.add(key)
                    self._seek(consumer, key, rewound)
                continue
            self._rewound.pop(key, None)
            batch.setdefault(key, []).append((offset, record))
        return batch

    def _process(self, consumer: Consumer, producer: Producer, batch: Batch) -> None:
        """Run the batch, serving the dead-letter producer's delivery reports meanwhile."""
        progress: dict[Partition, int] = {}  # the next offset after those done; each handler writes its own key
        pending = {
            self._pool.submit(self._handle_partition, key, records, producer, progress)
            for key, records in batch.items()
        }
        deadline: float | None = None
        while pending:
            _, pending = wait(pending, timeout=POLL_SECONDS)
            producer.poll(0)
            if self._stopping.is_set() and pending:
                deadline = deadline or time.monotonic() + self._settings.shutdown_timeout_seconds
                if time.monotonic() >= deadline:
                    logger.warning(
                        "%d partition(s) did not finish in time; their records will be delivered again", len(pending)
                    )
                    break
        for key, records in batch.items():
            done = progress.get(key)
            if done is not None:
                self._done[key] = done
            first, last = records[0][0], records[-1][0]
            if not self._stopping.is_set() and (done is None or done <= last):
                # Stopped short (dead-lettering failed): read the rest again, from the first record not done.
                self._seek(consumer, key, first if done is None else done)

    def _handle_partition(
        self, key: Partition, records: list[tuple[int, Message]], producer: Producer, progress: dict[Partition, int]
    ) -> None:
        """Runs in a handler thread: the partition's records in order, until one is not done."""
        try:
            for offset, record in records:
                if self._stopping.is_set() or not self._settle(key, offset, record, producer):
                    return
                progress[key] = offset + 1
        except Exception:
            logger.exception("handling a record of %s [%d] failed unexpectedly; it will be read again", *key)

    def _settle(self, key: Partition, offset: int, record: Message, producer: Producer) -> bool:
        """Handle one record, retrying in place; dead-letter it if it must. True once it is done."""
        body = record.value() or b""
        headers = headers_of(record)
        text = text_headers(headers or ())
        retries = 0
        while True:
            verdict = self._processor.process(body, retries, text)
            if verdict.outcome is Outcome.SUCCEEDED:
                return True
            if verdict.outcome is Outcome.DEAD_LETTERED:
                return self._dead_letter(key, offset, record, headers, producer, verdict.reason, retries + 1)
            retries += 1
            if self._stopping.wait(retry_pause(retries)):
                return False  # stopping: not done, so not committed; it is delivered again

    def _dead_letter(
        self,
        key: Partition,
        offset: int,
        record: Message,
        headers: RecordHeaders,
        producer: Producer,
        reason: str,
        attempts: int,
    ) -> bool:
        """Produce to the dead-letter topic and wait for the broker's ack (the consumer's thread polls)."""
        partition = key[1]
        delivered: Future[None] = Future()
        delivered.set_running_or_notify_cancel()

        def on_delivery(error: KafkaError | None, _: Message) -> None:
            if error is None:
                delivered.set_result(None)
            else:
                delivered.set_exception(KafkaException(error))

        dead_headers: list[tuple[str, str | bytes | None]] = [
            *dead_letter_headers(headers, reason, partition, offset, attempts)
        ]
        try:
            producer.produce(
                topic=self._settings.dead_letter_queue,
                value=record.value(),
                key=record.key(),
                headers=dead_headers,
                on_delivery=on_delivery,
            )
            delivered.result(DEAD_LETTER_TIMEOUT_SECONDS + 5)
        except (BufferError, KafkaException, TimeoutError) as error:
            logger.warning(
                "could not dead-letter offset %d of partition %d; it will be read again: %s", offset, partition, error
            )
            return False
        logger.info("dead-lettered offset %d of partition %d: %s", offset, partition, reason)
        return True

    def _seek(self, consumer: Consumer, key: Partition, offset: int) -> None:
        self._rewound[key] = offset
        try:
            consumer.seek(TopicPartition(key[0], key[1], offset))
        except KafkaException as error:
            logger.warning("could not seek %s [%d] back to %d; trying again: %s", *key, offset, error)

    def _commit(self, consumer: Consumer, partitions: set[Partition]) -> None:
        offsets = [
            TopicPartition(topic, partition, self._done[topic, partition])
            for topic, partition in partitions & set(self._done)
        ]
        if not offsets:
            return
        try:
            committed = consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            # Kept for the next commit; if the partitions move on, their new owner reads again: duplicates, no loss.
            logger.warning("could not commit offsets: %s", error)
            return
        for tp in committed:
            if tp.error is None:
                if self._done.get((tp.topic, tp.partition)) == tp.offset:
                    del self._done[tp.topic, tp.partition]
            else:
                logger.warning("could not commit offset %d of partition %d: %s", tp.offset, tp.partition, tp.error)

    def _on_assign(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = True
        for tp in partitions:
            self._rewound.pop((tp.topic, tp.partition), None)
        logger.info("assigned partitions %s", sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Runs inside consume(), between batches: commit what was done before the partitions move on."""
        keys = {(tp.topic, tp.partition) for tp in partitions}
        try:
            self._commit(consumer, keys)
        finally:
            self._forget(keys)
        logger.info("partitions %s revoked", sorted(partition for _, partition in keys))

    def _on_lost(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        """Taken away without a goodbye (the session timed out): a commit would fail; their new owner reads again."""
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._forget(keys)
        logger.warning("partitions %s lost", sorted(partition for _, partition in keys))

    def _forget(self, keys: set[Partition]) -> None:
        self._assigned = False
        for key in keys:
            self._done.pop(key, None)
            self._rewound.pop(key, None)
