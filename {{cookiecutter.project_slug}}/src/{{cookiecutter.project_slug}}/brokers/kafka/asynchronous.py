"""Apache Kafka with aiokafka in the event loop. The producer waits for `acks=all` on every
send; the consumer's transport commits offsets only after records were handled, put to wait or
dead-lettered (each partition is a lane of the runner, its records in order), one commit per
batch the runner acknowledges, and commits what is done when its partitions are taken away. The
same consumer reads the wait topics (see `waits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    InvalidRequiredAcksError,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    UnknownError,
    UnknownTopicOrPartitionError,
)

from ...messages import TaskMessage, encode
from ...runner_asynchronous import connect_in_background
from ..base import BrokerUnavailable, Delivery, OutcomeUnknown, text_headers
from .reachability import PROBE_SECONDS, Reachability
from .records import (
    Partition,
    PartitionedTransport,
    assignment,
    dead_letter_headers,
    fair_share,
    group_id,
    partition_of,
)
from .waits import (
    Holds,
    Waiting,
    destination,
    now_ms,
    pass_on,
    retries_of,
    send_to_wait,
    tier_of,
    topics,
    wait_topics,
)

if TYPE_CHECKING:
    from ...settings import Settings

__all__ = ["CLIENT_LOGGERS", "BrokerPublisher", "BrokerTransport"]

logger = logging.getLogger(__name__)

# The client logs every reconnect attempt at length; ours say it once.
CLIENT_LOGGERS = ("aiokafka",)
TOPIC_ALREADY_EXISTS = 36
REQUEST_TIMEOUT_MARGIN_MS = 5000
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (KafkaError, OSError)
# The broker's answers that mean it did not append the batch. After any other error (a timeout, a lost
# connection, NotEnoughReplicasAfterAppend) it may hold the message: the outcome is unknown.
REFUSED: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    NotEnoughReplicasError,
    UnknownTopicOrPartitionError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    InvalidRequiredAcksError,
    CorruptRecordException,
    InvalidTimestampError,
)


async def ensure_topics(settings: Settings) -> None:
    """Idempotent: the service's topics, with the configured partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="admin")
    await admin.start()
    try:
        wanted = [
            NewTopic(name, num_partitions=settings.topic_partitions, replication_factor=settings.topic_replication)
            for name in topics(settings)
        ]
        response = await admin.create_topics(wanted)
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


class IdempotenceRefused(KafkaError):  # type: ignore[misc]
    """The broker cannot give us an idempotent producer."""


async def start_producer(producer: Any, settings: Settings) -> None:
    """Start it; where the broker has no idempotent producers (InitProducerId fails), say so and how to fix it."""
    try:
        await producer.start()
    except UnknownError as error:
        await producer.stop()
        if not settings.producer_idempotence:
            raise
        raise IdempotenceRefused(
            f"Kafka at {settings.broker_address} cannot start an idempotent producer (InitProducerId failed:"
            f" {error!r}); for a broker without idempotent producers, set PRODUCER_IDEMPOTENCE=false"
        ) from error


class BrokerPublisher:
    """Sends with `acks=all`; 202 only once the send's delivery future resolved."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: Any = None
        self._stopping = asyncio.Event()
        self._connecting: asyncio.Task[None] | None = None
        self._reach = Reachability()

    async def start(self) -> None:
        what = f"publisher ({self._settings.broker_address})"
        self._connecting = connect_in_background(self._session, self._stopping, CONNECTION_ERRORS, what)

    async def _session(self, connected: Callable[[], None]) -> None:
        """Start the producer once; from then on it reconnects by itself."""
        producer = make_producer(self._settings, "publisher")
        try:
            await ensure_topics(self._settings)
            await start_producer(producer, self._settings)
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer
        self._reach.answered()
        connected()
        logger.info("publisher connected to %s", self._settings.broker_address)
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), PROBE_SECONDS)
            if self._reach.probe_due():
                await self._probe(producer)
        self._producer = None
        await producer.stop()

    async def _probe(self, producer: Any) -> None:
        try:
            await asyncio.wait_for(producer.client.fetch_all_metadata(), PROBE_SECONDS)
        except TimeoutError:
            return  # still away
        except CONNECTION_ERRORS:
            return
        self._reach.answered()

    def _connected(self) -> Any:
        if self._producer is None:
            raise BrokerUnavailable(f"not connected to Kafka at {self._settings.broker_address}")
        if not self._reach.up:
            raise BrokerUnavailable(f"Kafka at {self._settings.broker_address} is unreachable")
        return self._producer

    async def publish(self, message: TaskMessage, headers: Mapping[str, str], delay_seconds: float = 0.0) -> None:
        producer = self._connected()
        topic, sent_headers = destination(self._settings, headers, delay_seconds)
        try:  # into the producer's batch: nothing is sent yet
            key, value = message.id.encode(), encode(message)
            sent = await producer.send(topic, value=value, key=key, headers=sent_headers or None)
        except CONNECTION_ERRORS as error:
            self._reach.lost()
            raise BrokerUnavailable(f"Kafka did not take the message: {error!r}") from error
        try:
            await sent
        except REFUSED as error:
            raise BrokerUnavailable(f"Kafka refused the message: {error!r}") from error
        except CONNECTION_ERRORS as error:
            self._reach.lost()  # the next publishes are refused until a probe answers
            raise OutcomeUnknown(f"Kafka did not acknowledge the message, it may hold it: {error!r}") from error
        except asyncio.CancelledError:  # the caller's deadline passed: unanswered too
            self._reach.lost()
            raise
        self._reach.answered()

    async def ping(self) -> None:
        producer = self._connected()
        try:
            await producer.client.fetch_all_metadata()
        except CONNECTION_ERRORS as error:
            self._reach.lost()
            raise BrokerUnavailable(f"Kafka did not answer: {error!r}") from error
        self._reach.answered()

    async def close(self) -> None:
        self._stopping.set()
        if self._connecting is not None:
            await self._connecting  # its session stops the producer as it ends


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move to another consumer, commit what was done on them."""

    def __init__(self, transport: BrokerTransport) -> None:
        self._transport = transport

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._transport.revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._transport.assigned(assigned)


class BrokerTransport(PartitionedTransport):
    """The consumer's side: a consumer in the group, and a producer for retries and dead letters."""

    errors = CONNECTION_ERRORS

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._consumer: Any = None
        self._producer: Any = None
        self._committing = asyncio.Lock()
        self._joined = asyncio.Event()  # set once the group gave this consumer its partitions
        self._holds = Holds()

    async def open(self) -> str:
        self._ledger.clear()
        self._holds.clear()
        self._joined.clear()
        await ensure_topics(self._settings)
        self._producer = make_producer(self._settings, "settler")
        await start_producer(self._producer, self._settings)
        session_ms = int(self._settings.session_timeout_seconds * 1000)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap_servers,
            group_id=group_id(self._settings),
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
        self._consumer.subscribe([self._settings.queue_name, *wait_topics(self._settings)], listener=_Rebalance(self))
        await self._consumer.start()
        return f"{self._settings.queue_name!r} in group {group_id(self._settings)!r}"

    def assigned(self, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._ledger.assigned(keys)
        logger.info("assigned partitions %s", assignment(self._settings, keys))
        self._joined.set()

    async def revoked(self, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        await self._commit(self._ledger.due(keys))
        self._ledger.revoked(keys)
        self._holds.revoked(keys)

    async def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        """A share of `max_count` from each partition that has records, then the rest from any: a
        partition's records run one at a time, so a batch of one partition's (what a plain getmany
        returns) would leave the others' waiting and the handlers idle. Records of the wait topics
        go on from here once their wait is over."""
        await self._commit_settled()  # retries and dead letters settled since the last fetch
        self._release_holds()
        next_release = self._holds.seconds_to_next(now_ms())
        wait_seconds = min(wait_seconds, next_release or wait_seconds)
        partitions = {tp for tp in self._consumer.assignment() if tp.topic == self._settings.queue_name}
        share = fair_share(max_count, len(partitions))
        batch = await self._consumer.getmany(timeout_ms=int(wait_seconds * 1000), max_records=share)
        taken = sum(len(records) for records in batch.values())
        for partition in partitions - batch.keys():
            if taken >= max_count:
                break
            more = await self._consumer.getmany(partition, max_records=min(share, max_count - taken))
            for records in more.values():
                batch[partition] = records
                taken += len(records)
        if 0 < taken < max_count:
            for partition, records in (await self._consumer.getmany(max_records=max_count - taken)).items():
                batch[partition] = batch.get(partition, []) + records
        deliveries, waits = [], []
        for partition, records in batch.items():
            tier = tier_of(self._settings, partition.topic)
            if tier is None:
                deliveries += [self._delivery(record) for record in records]
            else:
                waits += [(self._waiting(record, tier), record) for record in records]
        if waits:
            await self._pass_on(waits)
            await self._commit_settled()
        return deliveries

    @staticmethod
    def _delivery(record: Any) -> Delivery:
        lane: Partition = (record.topic, record.partition)
        headers = record.headers or ()
        return Delivery(record.value or b"", text_headers(headers), retries_of(headers), record, lane)

    @staticmethod
    def _waiting(record: Any, tier_ms: int) -> Waiting:
        return Waiting((record.topic, record.partition), record.offset, record.timestamp, tier_ms, record.headers or ())

    async def _pass_on(self, fetched: list[tuple[Waiting, Any]]) -> None:
        """Records whose wait is over go on (to a shorter wait or the task topic), and are settled
        once the broker has them; a partition whose head still waits is paused until it is due."""
        onward, held = pass_on(self._settings, fetched, self._holds, now_ms())
        for waiting in held:
            partition = TopicPartition(*waiting.partition)
            self._consumer.pause(partition)
            self._consumer.seek(partition, waiting.offset)
        sent = [
            await self._producer.send(destination, value=record.value, key=record.key, headers=[*record.headers])
            for record, destination in onward
        ]
        await asyncio.gather(*sent)
        for record, _ in onward:
            self._ledger.settled((record.topic, record.partition), record.offset)

    def _release_holds(self) -> None:
        released = self._holds.release(now_ms())
        if released:
            self._consumer.resume(*(TopicPartition(*partition) for partition in released))

    async def _commit_settled(self) -> None:
        if self._ledger.due():
            async with self._committing:
                await self._commit(self._ledger.due())

    async def unsubscribe(self) -> int:
        return 0  # records are fetched only when asked for

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Count them done and commit what is done (the runner sends one batch at a time)."""
        for delivery in deliveries:
            self._ledger.settled(partition_of(delivery), delivery.handle.offset)
        await self._commit_settled()

    async def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        """Send to the wait topic for `delay_seconds` and wait for the broker's ack, then count the record done."""
        record = delivery.handle
        topic, headers = send_to_wait(self._settings, record.headers, delay_seconds, delivery.retries + 1)
        await self._producer.send_and_wait(topic, value=record.value, key=record.key, headers=headers)
        self._ledger.settled(partition_of(delivery), record.offset)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        record = delivery.handle
        headers = dead_letter_headers(record.headers, reason, record.partition, record.offset, delivery.retries + 1)
        await self._producer.send_and_wait(
            self._settings.dead_letter_queue, value=record.value, key=record.key, headers=headers
        )
        self._ledger.settled(partition_of(delivery), record.offset)

    async def close(self) -> None:
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        if consumer is not None:
            try:
                await self._finish_joining()
                async with self._committing:
                    await self._commit(self._ledger.due(), consumer)
            except Exception as error:
                logger.warning("closing the consumer failed: %r", error)
            finally:
                await consumer.stop()  # leaves the group: its partitions move on at once
        if producer is not None:
            await producer.stop()

    async def _finish_joining(self) -> None:
        """Leave the group only once joined: a member that leaves in the middle of the group's
        first join forces another rebalance on every member (and stalls some brokers)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._joined.wait(), self._settings.session_timeout_seconds)

    async def _commit(self, offsets: dict[Partition, int], consumer: Any = None) -> bool:
        consumer = consumer or self._consumer
        if not offsets:
            return True
        if consumer is None:
            return False  # closed meanwhile: closing commits what is due
        try:
            await consumer.commit({TopicPartition(*partition): offset for partition, offset in offsets.items()})
        except KafkaError as error:
            # The partitions moved on; their new owner starts from the last commit: duplicates, no loss.
            logger.warning("could not commit %s: %r", offsets, error)
            return False
        self._ledger.committed(offsets)
        return True
