"""RabbitMQ with aio-pika in the event loop: publisher confirms for the API, explicit acks for
the consumer, each on a plain connection that is reconnected (keep_connected) to the first node of
BROKER_URL that takes it, trying them in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import (
    CONNECTION_EXCEPTIONS,
    AMQPConnectionError,
    AMQPError,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)

from ...messages import CONTENT_TYPE, TaskMessage, encode
from ...runner_asynchronous import connect_in_background
from ..base import BrokerUnavailable, Delivery, OutcomeUnknown, text_headers
from .topology import (
    BLOCKED,
    NACKED,
    PROBE_ROUTING_KEY,
    WaitQueues,
    copied_properties,
    dead_letter_headers,
    dead_letter_queue_arguments,
    mismatch_hint,
    queue_arguments,
    retried_headers,
    retries_of,
)

if TYPE_CHECKING:
    from ...settings import Settings

logger = logging.getLogger(__name__)

# The client logs every reconnect attempt at length; ours say it once.
CLIENT_LOGGERS = ("aio_pika", "aiormq")

ERRORS: tuple[type[BaseException], ...] = (TimeoutError, DeliveryError, PublishError, *CONNECTION_EXCEPTIONS)
PERSISTENT = aio_pika.DeliveryMode.PERSISTENT


async def connect(settings: Settings, name: str) -> AbstractConnection:
    """A plain connection to the first node of BROKER_URL that takes it, trying them in turn."""
    failed: BaseException | None = None
    for url in settings.broker_node_urls:
        try:
            return await aio_pika.connect(
                url,
                heartbeat=settings.heartbeat_seconds,
                timeout=settings.publish_timeout_seconds,
                client_properties={"connection_name": name},
            )
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as error:
            failed = error
            logger.debug("%s could not connect to a node: %r", name, error)
    assert failed is not None  # BROKER_URL names one node at least
    raise failed


def is_blocked(connection: AbstractConnection) -> bool:
    """Whether RabbitMQ has sent connection.blocked (a resource alarm) and not yet connection.unblocked.
    aiormq tracks it in an event of its own that it does not expose (tests/test_rabbitmq_blocked.py
    fails if a new aiormq renames it)."""
    underlay = getattr(connection.transport, "connection", None)
    unblocked = getattr(underlay, "_Connection__connection_unblocked", None)
    return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()


async def open_channel(connection: AbstractConnection) -> AbstractChannel:
    # on_return_raises: a message no queue takes fails its publish instead of being confirmed.
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


async def declare_topology(channel: AbstractChannel, settings: Settings) -> AbstractQueue:
    """Idempotent: the dead-letter queue, then the task queue that dead-letters into it."""
    try:
        await channel.declare_queue(
            settings.dead_letter_queue, durable=True, arguments=dead_letter_queue_arguments(settings)
        )
        return await channel.declare_queue(settings.queue_name, durable=True, arguments=queue_arguments(settings))
    except ChannelPreconditionFailed as error:
        hint = mismatch_hint(settings, 406, str(error))
        raise AMQPConnectionError(hint) from error


async def wait_first(*waits: Any) -> None:
    """Until the first of `waits` (coroutines) is done; the others are cancelled."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def current_task_cancelled() -> bool:
    """True when a CancelledError is meant for this task (a timeout, shutdown), not one a client raised
    because it dropped its own pending futures on a closing connection."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class BrokerPublisher:
    """Publishes with confirms on one channel; each publish is bounded by a timeout. While RabbitMQ
    blocks the connection (a memory or disk alarm) nothing is written: a publish is refused at
    once; one written whose confirm never comes is OutcomeUnknown, not refused."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stopping = asyncio.Event()
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._nacked = asyncio.Event()  # set by a nack: the session ends, and a new one connects (NACKED)
        self._wait_queues = WaitQueues(settings)  # declared again on each new connection

    async def start(self) -> None:
        what = f"publisher ({self._settings.broker_address})"
        self._connecting = connect_in_background(self._session, self._stopping, ERRORS, what)

    async def _session(self, connected: Callable[[], None]) -> None:
        """One connection, until it or its channel closes (keep_connected then connects again) or until stopping."""
        connection = await connect(self._settings, "publisher")
        closed = asyncio.Event()
        try:
            channel = await open_channel(connection)
            await declare_topology(channel, self._settings)
            connection.close_callbacks.add(lambda *_: closed.set())
            channel.close_callbacks.add(lambda *_: closed.set())
            self._wait_queues.clear()
            self._nacked.clear()
            self._connection, self._channel = connection, channel
            connected()
            logger.info("publisher connected to %s", self._settings.broker_address)
            await wait_first(self._stopping.wait(), closed.wait(), self._nacked.wait())
        finally:
            self._connection = self._channel = None
            with contextlib.suppress(Exception):
                await connection.close()
        if not self._stopping.is_set():
            raise AMQPConnectionError(NACKED if self._nacked.is_set() else "the publisher's connection closed")

    def _ready_channel(self) -> AbstractChannel:
        channel, connection = self._channel, self._connection
        if channel is None or channel.is_closed or connection is None or connection.is_closed:
            raise BrokerUnavailable(f"not connected to RabbitMQ at {self._settings.broker_address}")
        if is_blocked(connection):
            raise BrokerUnavailable(BLOCKED)
        return channel

    async def publish(self, message: TaskMessage, headers: Mapping[str, str], delay_seconds: float = 0.0) -> None:
        channel = self._ready_channel()
        routing_key = self._settings.queue_name
        if delay_seconds > 0:
            routing_key = await self._wait_queue(channel, delay_seconds)
        outgoing = aio_pika.Message(
            encode(message),
            content_type=CONTENT_TYPE,
            delivery_mode=PERSISTENT,  # aio-pika's default is transient
            message_id=message.id,
            type=message.type,
            headers=dict(headers),
        )
        channel = self._ready_channel()  # again: it may have been blocked while the wait queue was declared
        try:
            await channel.default_exchange.publish(
                outgoing, routing_key=routing_key, mandatory=True, timeout=self._settings.publish_timeout_seconds
            )
        except (DeliveryError, PublishError) as error:
            self._wait_queues.clear()  # a wait queue deleted meanwhile is declared again next time
            if isinstance(error, PublishError):  # returned: no queue took it; the task queue was deleted?
                with contextlib.suppress(TimeoutError, *CONNECTION_EXCEPTIONS):
                    await asyncio.wait_for(declare_topology(channel, self._settings), 1.0)
            else:
                self._nacked.set()
            raise BrokerUnavailable(f"RabbitMQ refused the message: {error!r}") from error
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as error:
            raise OutcomeUnknown(f"RabbitMQ did not confirm the message: {error!r}") from error
        except asyncio.CancelledError as error:
            if current_task_cancelled():
                raise  # our caller gave up: a timeout, or shutdown
            # aiormq cancels the confirms it still awaits when it closes a connection (e.g. a stuck one).
            raise OutcomeUnknown("the connection closed before RabbitMQ confirmed the message") from error

    async def _wait_queue(self, channel: AbstractChannel, delay_seconds: float) -> str:
        """Where a delayed task waits, declared on first use."""
        name, arguments = self._wait_queues.route(delay_seconds)
        if arguments is not None:
            try:
                await channel.declare_queue(
                    name, durable=True, arguments=arguments, timeout=self._settings.publish_timeout_seconds
                )
            except (TimeoutError, AMQPError, *CONNECTION_EXCEPTIONS) as error:
                raise BrokerUnavailable(f"RabbitMQ did not declare the wait queue {name!r}: {error!r}") from error
            self._wait_queues.declared(name)
        return name

    async def ping(self) -> None:
        channel = self._ready_channel()
        try:
            # The underlying channel: the robust one answers a passive declare from its cache.
            underlay = await channel.get_underlay_channel()
            await underlay.queue_declare(self._settings.queue_name, passive=True)
            # Learn of an alarm before a task is written into it (see PROBE_ROUTING_KEY).
            probe = aio_pika.Message(b"")
            await channel.default_exchange.publish(probe, routing_key=PROBE_ROUTING_KEY, mandatory=False)
        except (TimeoutError, DeliveryError, PublishError, *CONNECTION_EXCEPTIONS) as error:
            raise BrokerUnavailable(f"RabbitMQ did not answer: {error!r}") from error

    async def close(self) -> None:
        self._stopping.set()
        if self._connecting is not None:
            await self._connecting  # its session closes the connection as it ends


class BrokerTransport:
    """The consumer's side: a plain connection (the runner reconnects it) and a consumer whose
    deliveries wait in a local queue, bounded by the prefetch, until the runner fetches them."""

    errors = ERRORS
    finish_unstarted = False  # what is not acknowledged goes back to the queue as the connection closes

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.capacity = settings.prefetch_count  # the broker sends no more than the prefetch anyway
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        # Delivered, not yet fetched; None: the connection closed.
        self._received: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._wait_queues = WaitQueues(settings)

    async def open(self) -> str:
        self._received = asyncio.Queue()
        self._wait_queues.clear()
        self._connection = await connect(self._settings, "consumer")
        self._connection.close_callbacks.add(self._on_close)
        self._channel = await open_channel(self._connection)
        await self._channel.set_qos(prefetch_count=self._settings.prefetch_count)
        self._queue = await declare_topology(self._channel, self._settings)
        # RabbitMQ cancels the consumer when its queue is deleted: reconnect, declaring it again.
        underlay = await self._channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_close)
        self._consumer_tag = await self._queue.consume(self._received.put, no_ack=False)
        return f"{self._settings.queue_name!r} from {self._settings.broker_address}"

    def _on_close(self, *_: Any) -> None:
        self._received.put_nowait(None)  # wakes a fetch that waits

    async def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        try:
            first = await asyncio.wait_for(self._received.get(), wait_seconds)
        except TimeoutError:
            return []
        messages = [first]
        while len(messages) < max_count and not self._received.empty():
            messages.append(self._received.get_nowait())
        if None in messages:
            raise AMQPConnectionError("the consumer's connection closed")
        return [self._delivery(message) for message in messages if message is not None]

    @staticmethod
    def _delivery(message: AbstractIncomingMessage) -> Delivery:
        headers = message.headers or {}
        return Delivery(message.body, text_headers(headers.items()), retries_of(headers), message)

    async def unsubscribe(self) -> int:
        """Take no new messages; those delivered but not fetched go back to the queue on close."""
        if self._queue is not None and self._consumer_tag is not None:
            await self._queue.cancel(self._consumer_tag, timeout=self._settings.publish_timeout_seconds)
        self._consumer_tag = None
        returned = self._received.qsize()
        self._received = asyncio.Queue()
        return returned

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """All at once: each waits for the connection's writer, and one after another they would wait in turn."""
        await asyncio.gather(*(delivery.handle.ack() for delivery in deliveries))

    async def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        headers = retried_headers(delivery.handle.headers, delivery.retries)
        await self._republish(await self._wait_queue(delay_seconds), delivery, headers)

    async def _wait_queue(self, delay_seconds: float) -> str:
        """Where a retry waits `delay_seconds`, declared on first use (the task queue: no wait)."""
        name, arguments = self._wait_queues.route(delay_seconds)
        if arguments is not None:
            if self._channel is None:
                raise AMQPConnectionError("the consumer's channel is closed")
            await self._channel.declare_queue(name, durable=True, arguments=arguments)
            self._wait_queues.declared(name)
        return name

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        headers = dead_letter_headers(delivery.handle.headers, reason)
        await self._republish(self._settings.dead_letter_queue, delivery, headers)

    async def _republish(self, routing_key: str, delivery: Delivery, headers: Mapping[str, Any]) -> None:
        """A confirmed publish of the original body, then the original's ack."""
        message: AbstractIncomingMessage = delivery.handle
        if self._channel is None:
            raise AMQPConnectionError("the consumer's channel is closed")
        copy = aio_pika.Message(message.body, delivery_mode=PERSISTENT, **copied_properties(message, headers))
        await self._channel.default_exchange.publish(
            copy, routing_key=routing_key, mandatory=True, timeout=self._settings.publish_timeout_seconds
        )
        await message.ack()

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = self._queue = self._consumer_tag = None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()
