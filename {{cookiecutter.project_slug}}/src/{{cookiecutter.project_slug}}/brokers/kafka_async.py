"""Apache Kafka with aiokafka in the event loop. The producer waits for `acks=all` on every
send; the consumer commits offsets only after records were handled or dead-lettered, retries a
failing record in place (Kafka has no per-record nack), and commits what is done when its
partitions are taken away in a rebalance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from ..messages import TaskMessage, encode
from ..processing import Outcome, Processor
from ..settings import Settings
from .base import Backoff, BrokerUnavailable, sleep_unless_stopping, text_headers
from .kafka_records import dead_letter_headers, record_headers, retry_pause

__all__ = ["CLIENT_LOGGERS", "BrokerConsumer", "BrokerPublisher"]

logger = logging.getLogger(__name__)

# The client logs every reconnect attempt at length; ours say it once.
CLIENT_LOGGERS = ("aiokafka",)
TOPIC_ALREADY_EXISTS = 36
REQUEST_TIMEOUT_MARGIN_MS = 5000
CONNECTION_ERRORS = (KafkaError, OSError)


async def ensure_topics(settings: Settings) -> None:
    """Idempotent: the task topic and the dead-letter topic, with the configured partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="admin")
    await admin.start()
    try:
        topics = [
            NewTopic(name, num_partitions=settings.topic_partitions, replication_factor=settings.topic_replication)
            for name in (settings.queue_name, settings.dead_letter_queue)
        ]
        response = await admin.create_topics(topics)
        for name, code, *detail in response.topic_errors:
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise KafkaError(f"cannot create topic {name!r}: error {code} {detail}")
    finally:
        await admin.close()


def make_producer(settings: Settings, name: str) -> Any:
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=name,
        acks="all",
        enable_idempotence=settings.producer_idempotence,
        request_timeout_ms=int(max(settings.publish_timeout_seconds, 5) * 1000),
    )


class BrokerPublisher:
    """Sends with `acks=all`; 202 only once the send's delivery future resolved."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: Any = None
        self._stopping = asyncio.Event()
        self._connecting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._connecting = asyncio.create_task(self._connect(), name="kafka-publisher-connect")

    async def _connect(self) -> None:
        """Retry with backoff until connected: the API starts, and reports not-ready, without Kafka."""
        backoff = Backoff()
        while not self._stopping.is_set():
            producer = make_producer(self._settings, "publisher")
            try:
                await ensure_topics(self._settings)
                await producer.start()
            except CONNECTION_ERRORS as error:
                logger.warning("publisher cannot reach Kafka at %s: %r", self._settings.broker_address, error)
                await producer.stop()
                await sleep_unless_stopping(self._stopping, backoff.next_delay())
                continue
            self._producer = producer
            logger.info("publisher connected to %s", self._settings.broker_address)
            return

    def _connected(self) -> Any:
        if self._producer is None:
            raise BrokerUnavailable(f"not connected to Kafka at {self._settings.broker_address}")
        return self._producer

    async def publish(self, message: TaskMessage, headers: Mapping[str, str]) -> None:
        producer = self._connected()
        try:
            await producer.send_and_wait(
                self._settings.queue_name,
                value=encode(message),
                key=message.id.encode(),
                headers=record_headers(headers) or None,
            )
        except CONNECTION_ERRORS as error:
            raise BrokerUnavailable(f"Kafka did not acknowledge the message: {error!r}") from error

    async def ping(self) -> None:
        producer = self._connected()
        try:
            await producer.client.fetch_all_metadata()
        except CONNECTION_ERRORS as error:
            raise BrokerUnavailable(f"Kafka did not answer: {error!r}") from error

    async def close(self) -> None:
        self._stopping.set()
        if self._connecting is not None:
            await self._connecting
        if self._producer is not None:
            await self._producer.stop()


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move to another consumer, commit what was done on them."""

    def __init__(self, consumer: BrokerConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._consumer.commit_done(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        logger.info("assigned partitions %s", sorted(tp.partition for tp in assigned))
        self._consumer.joined.set()


class BrokerConsumer:
    """Consumes as an asyncio task: each batch's partitions run concurrently, each partition's
    records in order; offsets are committed after the batch."""

    def __init__(self, settings: Settings, processor: Processor) -> None:
        self._settings = settings
        self._processor = processor
        self._stopping = asyncio.Event()
        self._consumer: Any = None
        self._producer: Any = None
        self._running = False
        self._done: dict[TopicPartition, int] = {}  # the next offset to commit, per partition
        self.joined = asyncio.Event()  # set once the group gave this consumer its partitions
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kafka-consumer")

    def is_running(self) -> bool:
        return self._running and self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Take no new batch; let the one in hand finish within the shutdown timeout."""
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._settings.shutdown_timeout_seconds)
        except TimeoutError:
            logger.warning("the batch in hand did not finish in time; its unfinished records will be delivered again")
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                await self._open()
                backoff.reset()
                self._running = True
                logger.info("consuming %r in group %r", self._settings.queue_name, self._settings.group_id)
                await self._consume()
            except CONNECTION_ERRORS as error:
                logger.warning("consumer lost Kafka at %s: %r", self._settings.broker_address, error)
            except Exception:
                # Never let the consumer die: log the bug and reconnect.
                logger.exception("consumer failed unexpectedly; reconnecting")
            finally:
                self._running = False
                await self._close()
            await sleep_unless_stopping(self._stopping, backoff.next_delay())

    async def _open(self) -> None:
        self.joined.clear()
        await ensure_topics(self._settings)
        self._producer = make_producer(self._settings, "dead-letters")
        await self._producer.start()
        session_ms = int(self._settings.session_timeout_seconds * 1000)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap_servers,
            group_id=self._settings.group_id,
            client_id="consumer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 3),
            # A request unanswered this long means a stuck connection: drop it and reconnect. It must
            # outlast a JoinGroup, which the broker may hold for up to the session timeout.
            request_timeout_ms=session_ms + REQUEST_TIMEOUT_MARGIN_MS,
            max_poll_records=self._settings.prefetch_count,
        )
        self._consumer.subscribe([self._settings.queue_name], listener=_CommitOnRevoke(self))
        await self._consumer.start()

    async def _close(self) -> None:
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        if consumer is not None:
            try:
                await self._finish_joining()
                await self._commit(consumer, set(self._done))
            finally:
                await consumer.stop()  # leaves the group: its partitions move on at once
        if producer is not None:
            await producer.stop()

    async def _finish_joining(self) -> None:
        """Leave the group only once joined: a member that leaves in the middle of the group's
        first join forces another rebalance on every member (and stalls some brokers)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.joined.wait(), self._settings.session_timeout_seconds)

    async def _consume(self) -> None:
        while not self._stopping.is_set():
            batch = await self._consumer.getmany(timeout_ms=1000, max_records=self._settings.prefetch_count)
            if batch:
                await asyncio.gather(*(self._handle_partition(tp, records) for tp, records in batch.items()))
                await self.commit_done(set(batch))

    async def commit_done(self, partitions: set[TopicPartition]) -> None:
        if self._consumer is not None:
            await self._commit(self._consumer, partitions)

    async def _commit(self, consumer: Any, partitions: set[TopicPartition]) -> None:
        offsets = {tp: self._done.pop(tp) for tp in partitions if tp in self._done}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as error:
            # The partitions moved on; their new owner starts from the last commit: duplicates, no loss.
            logger.warning("could not commit %s: %r", offsets, error)

    async def _handle_partition(self, tp: TopicPartition, records: list[Any]) -> None:
        for record in records:
            if self._stopping.is_set() or not await self._settle(record):
                # Not done: read it again from here (after a restart, from the last commit).
                self._consumer.seek(tp, record.offset)
                return
            self._done[tp] = record.offset + 1

    async def _settle(self, record: Any) -> bool:
        """Handle one record, retrying in place; dead-letter it if it must. True once it is done."""
        headers = text_headers(record.headers or ())
        for retry in range(self._settings.max_retries + 1):
            verdict = await self._processor.process(record.value or b"", retry, headers)
            if verdict.outcome is Outcome.SUCCEEDED:
                return True
            if verdict.outcome is Outcome.DEAD_LETTERED:
                return await self._dead_letter(record, verdict.reason, retry + 1)
            await sleep_unless_stopping(self._stopping, retry_pause(retry + 1))
            if self._stopping.is_set():
                return False
        return False  # not reached: the last retry's verdict is never RETRIED

    async def _dead_letter(self, record: Any, reason: str, attempts: int) -> bool:
        headers = dead_letter_headers(record.headers, reason, record.partition, record.offset, attempts)
        try:
            await self._producer.send_and_wait(
                self._settings.dead_letter_queue, value=record.value, key=record.key, headers=headers
            )
        except CONNECTION_ERRORS as error:
            logger.warning("could not dead-letter offset %d; it will be read again: %r", record.offset, error)
            return False
        return True
