"""RabbitMQ with aio-pika in the event loop: a robust connection, publisher confirms,
persistent messages, explicit acks, and a consumer that drains before it disconnects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError, PublishError

from ..messages import CONTENT_TYPE, TaskMessage, encode
from ..processing import Outcome, Processor
from ..settings import Settings
from .base import Backoff, BrokerUnavailable, sleep_unless_stopping, text_headers

logger = logging.getLogger(__name__)

# The client logs every reconnect attempt at length; ours say it once.
CLIENT_LOGGERS = ("aio_pika", "aiormq")

RETRIES_HEADER = "x-retries"
REASON_HEADER = "x-dead-letter-reason"
PERSISTENT = aio_pika.DeliveryMode.PERSISTENT


async def connect(settings: Settings, name: str, stopping: asyncio.Event) -> AbstractRobustConnection | None:
    """Retry with backoff until connected (or stopping): a robust connection only reconnects
    by itself once its first connect succeeded."""
    backoff = Backoff()
    while not stopping.is_set():
        try:
            return await aio_pika.connect_robust(
                settings.broker_url,
                heartbeat=settings.heartbeat_seconds,
                timeout=settings.publish_timeout_seconds,
                client_properties={"connection_name": name},
            )
        except CONNECTION_EXCEPTIONS as error:
            logger.warning("%s cannot reach RabbitMQ at %s: %r", name, settings.broker_address, error)
        await sleep_unless_stopping(stopping, backoff.next_delay())
    return None


async def open_channel(connection: AbstractRobustConnection, settings: Settings) -> AbstractRobustChannel:
    # on_return_raises: a message no queue takes fails its publish instead of being confirmed.
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    assert isinstance(channel, AbstractRobustChannel)
    return channel


async def declare_topology(channel: AbstractRobustChannel, settings: Settings) -> AbstractQueue:
    """Idempotent: the dead-letter queue, then the task queue that dead-letters into it."""
    await channel.declare_queue(settings.dead_letter_queue, durable=True)
    return await channel.declare_queue(
        settings.queue_name,
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": settings.dead_letter_queue},
    )


def retries_of(message: AbstractIncomingMessage) -> int:
    """How often this message was retried; a missing or mangled header counts as none."""
    value = (message.headers or {}).get(RETRIES_HEADER, 0)
    try:
        return max(0, int(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def current_task_cancelled() -> bool:
    """True when a CancelledError is meant for this task (a timeout, shutdown), not one a client raised
    because it dropped its own pending futures on a closing connection."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class BrokerPublisher:
    """Publishes with confirms on one robust channel; each publish is bounded by a timeout."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stopping = asyncio.Event()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._connecting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._connecting = asyncio.create_task(self._connect(), name="rabbitmq-publisher-connect")

    async def _connect(self) -> None:
        self._connection = await connect(self._settings, "publisher", self._stopping)
        if self._connection is None:
            return
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                channel = await open_channel(self._connection, self._settings)
                await declare_topology(channel, self._settings)
            except CONNECTION_EXCEPTIONS as error:
                logger.warning("publisher cannot declare its queues: %r", error)
                await sleep_unless_stopping(self._stopping, backoff.next_delay())
                continue
            self._channel = channel
            logger.info("publisher connected to %s", self._settings.broker_address)
            return

    def _ready_channel(self) -> AbstractRobustChannel:
        channel = self._channel
        if channel is None or channel.is_closed or self._connection is None or self._connection.is_closed:
            raise BrokerUnavailable(f"not connected to RabbitMQ at {self._settings.broker_address}")
        return channel

    async def publish(self, message: TaskMessage, headers: Mapping[str, str]) -> None:
        channel = self._ready_channel()
        outgoing = aio_pika.Message(
            encode(message),
            content_type=CONTENT_TYPE,
            delivery_mode=PERSISTENT,  # aio-pika's default is transient
            message_id=message.id,
            type=message.type,
            headers=dict(headers),
        )
        try:
            await channel.default_exchange.publish(
                outgoing,
                routing_key=self._settings.queue_name,
                mandatory=True,
                timeout=self._settings.publish_timeout_seconds,
            )
        except (DeliveryError, PublishError) as error:
            raise BrokerUnavailable(f"RabbitMQ refused the message: {error!r}") from error
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as error:
            raise BrokerUnavailable(f"RabbitMQ did not confirm the message: {error!r}") from error
        except asyncio.CancelledError as error:
            if current_task_cancelled():
                raise  # our caller gave up: a timeout, or shutdown
            # aiormq cancels the confirms it still awaits when it closes a connection (e.g. a stuck one).
            raise BrokerUnavailable("the connection closed before RabbitMQ confirmed the message") from error

    async def ping(self) -> None:
        channel = self._ready_channel()
        try:
            # The underlying channel: the robust one answers a passive declare from its cache.
            underlay = await channel.get_underlay_channel()
            await underlay.queue_declare(self._settings.queue_name, passive=True)
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as error:
            raise BrokerUnavailable(f"RabbitMQ did not answer: {error!r}") from error

    async def close(self) -> None:
        self._stopping.set()
        if self._connecting is not None:
            await self._connecting
        if self._connection is not None:
            await self._connection.close()


class BrokerConsumer:
    """Consumes as an asyncio task; each delivery is handled in its own task, up to the prefetch."""

    def __init__(self, settings: Settings, processor: Processor) -> None:
        self._settings = settings
        self._processor = processor
        self._stopping = asyncio.Event()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._in_hand: set[asyncio.Task[Any]] = set()
        self._subscribing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._subscribing = asyncio.create_task(self._subscribe(), name="rabbitmq-consumer-subscribe")

    def is_running(self) -> bool:
        connection = self._connection
        return (
            self._consumer_tag is not None
            and connection is not None
            and not connection.is_closed
            and connection.connected.is_set()
        )

    async def _subscribe(self) -> None:
        self._connection = await connect(self._settings, "consumer", self._stopping)
        backoff = Backoff()
        while self._connection is not None and not self._stopping.is_set():
            try:
                self._channel = await open_channel(self._connection, self._settings)
                await self._channel.set_qos(prefetch_count=self._settings.prefetch_count)
                self._queue = await declare_topology(self._channel, self._settings)
                # The robust channel re-subscribes this consumer after every reconnect.
                self._consumer_tag = await self._queue.consume(self._on_message, no_ack=False)
            except CONNECTION_EXCEPTIONS as error:
                logger.warning("consumer cannot subscribe: %r", error)
                await sleep_unless_stopping(self._stopping, backoff.next_delay())
                continue
            logger.info("consuming %r from %s", self._settings.queue_name, self._settings.broker_address)
            return

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_hand.add(task)
        try:
            await self._handle(message)
        finally:
            self._in_hand.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        retries = retries_of(message)
        verdict = await self._processor.process(message.body, retries, text_headers((message.headers or {}).items()))
        try:
            if verdict.outcome is Outcome.RETRIED:
                await self._republish(message, self._settings.queue_name, {RETRIES_HEADER: retries + 1})
            elif verdict.outcome is Outcome.DEAD_LETTERED:
                await self._republish(message, self._settings.dead_letter_queue, {REASON_HEADER: verdict.reason})
            await message.ack()
        except (TimeoutError, DeliveryError, PublishError, *CONNECTION_EXCEPTIONS) as error:
            # Not acked: the broker redelivers it once the connection is back.
            logger.warning("could not settle message %s; it will be redelivered: %r", message.message_id, error)

    async def _republish(self, message: AbstractIncomingMessage, routing_key: str, extra: Mapping[str, Any]) -> None:
        """Confirmed publish of the original body; the original is acked only after this returns."""
        assert self._channel is not None
        copy = aio_pika.Message(
            message.body,
            content_type=message.content_type or CONTENT_TYPE,
            delivery_mode=PERSISTENT,
            message_id=message.message_id,
            type=message.type,
            timestamp=message.timestamp,
            headers={**(message.headers or {}), **extra},
        )
        await self._channel.default_exchange.publish(
            copy, routing_key=routing_key, mandatory=True, timeout=self._settings.publish_timeout_seconds
        )

    async def stop(self) -> None:
        self._stopping.set()
        if self._subscribing is not None:
            await self._subscribing
        if self._queue is not None and self._consumer_tag is not None:
            try:
                await self._queue.cancel(self._consumer_tag, timeout=self._settings.publish_timeout_seconds)
            except (TimeoutError, *CONNECTION_EXCEPTIONS) as error:
                logger.warning("could not cancel the consumer cleanly: %r", error)
            self._consumer_tag = None
        if self._in_hand:
            _, interrupted = await asyncio.wait(set(self._in_hand), timeout=self._settings.shutdown_timeout_seconds)
            for task in interrupted:
                task.cancel()  # neither acked nor rejected: the broker redelivers it
            logger.info("consumer stopped: %d message(s) interrupted", len(interrupted))
        if self._connection is not None:
            await self._connection.close()
