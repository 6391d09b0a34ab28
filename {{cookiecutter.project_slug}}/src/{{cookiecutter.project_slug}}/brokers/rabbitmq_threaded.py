"""RabbitMQ with pika. A pika connection is not thread-safe, so each one is owned by a single
thread: the publisher's (a SelectConnection, so that many confirmed publishes are in flight at
once) or the consumer's (a BlockingConnection). Handlers run in a pool and hand their verdict back
to the consumer's thread with `add_callback_threadsafe`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel
from pika.exceptions import AMQPError, ConnectionClosedByClient
from pika.spec import Basic, BasicProperties

from ..messages import CONTENT_TYPE, TaskMessage, encode
from ..processing import Outcome, Processor, Verdict
from ..settings import Settings
from .base import Backoff, BrokerUnavailable, text_headers

logger = logging.getLogger(__name__)

# The client logs every reconnect attempt at length; ours say it once.
CLIENT_LOGGERS = ("pika",)

RETRIES_HEADER = "x-retries"
REASON_HEADER = "x-dead-letter-reason"
PERSISTENT = pika.DeliveryMode.Persistent


def connection_parameters(settings: Settings, name: str) -> pika.URLParameters:
    parameters = pika.URLParameters(settings.broker_url)
    parameters.heartbeat = settings.heartbeat_seconds
    parameters.blocked_connection_timeout = settings.heartbeat_seconds
    parameters.socket_timeout = 5.0
    parameters.stack_timeout = 10.0
    parameters.connection_attempts = 1
    parameters.client_properties = {"connection_name": name}
    return parameters


def dead_letter_arguments(settings: Settings) -> dict[str, str]:
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": settings.dead_letter_queue}


def declare_topology(channel: BlockingChannel, settings: Settings) -> None:
    """Idempotent: the dead-letter queue, then the task queue that dead-letters into it."""
    channel.queue_declare(settings.dead_letter_queue, durable=True)
    channel.queue_declare(settings.queue_name, durable=True, arguments=dead_letter_arguments(settings))


@dataclass(frozen=True)
class Request:
    """One publish for the publisher's I/O thread."""

    body: bytes
    properties: BasicProperties


def retries_of(properties: BasicProperties) -> int:
    """How often this message was retried; a missing or mangled header counts as none."""
    value = (properties.headers or {}).get(RETRIES_HEADER, 0)
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def close_quietly(connection: BlockingConnection | None) -> None:
    if connection is not None and connection.is_open:
        try:
            connection.close()
        except AMQPError as error:
            logger.debug("closing the connection failed: %s", error)


class BrokerPublisher:
    """Publishes from one I/O thread that owns the connection (pika's SelectConnection); callers
    await a future. Every request waiting is published at once and each future resolves on its
    own confirm, so many publishes are in flight together instead of one confirm at a time."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._parameters = connection_parameters(settings, "publisher")
        self._waiting: collections.deque[tuple[Request | None, Future[None]]] = collections.deque()
        self._lock = threading.Lock()  # guards _flush_scheduled
        self._flush_scheduled = False
        self._ready = threading.Event()  # channel open, confirms on, queues declared
        self._stopping = threading.Event()
        # Owned by the I/O thread once it runs; other threads only call add_callback_threadsafe.
        self._connection: SelectConnection | None = None
        self._channel: Channel | None = None
        self._delivery_tag = 0
        self._unconfirmed: dict[int, tuple[str, Future[None]]] = {}  # delivery tag: (message id, future)
        self._returned: set[str] = set()  # ids of messages no queue took, until their confirm
        self._pings: collections.deque[Future[None]] = collections.deque()
        self._thread = threading.Thread(target=self._run, name="rabbitmq-publisher", daemon=True)

    async def start(self) -> None:
        self._thread.start()

    async def publish(self, message: TaskMessage, headers: Mapping[str, str]) -> None:
        properties = BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=PERSISTENT,
            message_id=message.id,
            type=message.type,
            timestamp=int(time.time()),
            headers=dict(headers),
        )
        await self._call(Request(encode(message), properties))

    async def ping(self) -> None:
        await self._call(None)

    async def close(self) -> None:
        self._stopping.set()
        self._wake(self._shut_down)
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, self._settings.shutdown_timeout_seconds)

    async def _call(self, request: Request | None) -> None:
        """A publish (or, with None, a passive declare of the queue) handed to the I/O thread."""
        if not self._ready.is_set():
            raise BrokerUnavailable(f"not connected to RabbitMQ at {self._settings.broker_address}")
        future: Future[None] = Future()
        self._waiting.append((request, future))
        with self._lock:
            scheduled, self._flush_scheduled = self._flush_scheduled, True
        if not scheduled:
            self._wake(self._flush)
        await asyncio.wrap_future(future)

    def _wake(self, callback: Callable[[], None]) -> None:
        """Run `callback` in the I/O thread; if there is no connection, its requests fail there."""
        connection = self._connection
        if connection is None:
            return
        try:
            connection.ioloop.add_callback_threadsafe(callback)
        except Exception as error:  # the loop is closed: the I/O thread fails what waits
            logger.debug("could not wake the publisher's thread: %r", error)

    # Everything below runs in the I/O thread.

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                self._connection = SelectConnection(
                    self._parameters,
                    on_open_callback=self._on_connection_open,
                    on_open_error_callback=self._on_connection_error,
                    on_close_callback=self._on_connection_closed,
                )
                self._connection.ioloop.start()  # until the connection is closed or fails to open
                if self._channel is not None:
                    backoff.reset()
            except Exception:
                # Never let the publisher's thread die: log the bug and reconnect.
                logger.exception("publisher failed unexpectedly; reconnecting")
            finally:
                self._ready.clear()
                self._fail_all("the connection to RabbitMQ was lost")
                self._channel = None
                if self._connection is not None:
                    with contextlib.suppress(Exception):
                        self._connection.ioloop.close()
            self._stopping.wait(backoff.next_delay())

    def _on_connection_open(self, connection: SelectConnection) -> None:
        if self._stopping.is_set():
            connection.close()
            return
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_connection_error(self, connection: SelectConnection, error: BaseException | str) -> None:
        logger.warning("publisher cannot reach RabbitMQ at %s: %r", self._settings.broker_address, error)
        connection.ioloop.stop()

    def _on_connection_closed(self, connection: SelectConnection, reason: BaseException) -> None:
        if not self._stopping.is_set() and not isinstance(reason, ConnectionClosedByClient):
            logger.warning("publisher lost RabbitMQ at %s: %r", self._settings.broker_address, reason)
        connection.ioloop.stop()

    def _on_channel_open(self, channel: Channel) -> None:
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)

        def declare_queue(_: Any) -> None:
            channel.queue_declare(
                self._settings.queue_name,
                durable=True,
                arguments=dead_letter_arguments(self._settings),
                callback=lambda _: self._on_ready(channel),
            )

        def declare_dead_letter_queue(_: Any) -> None:
            channel.queue_declare(self._settings.dead_letter_queue, durable=True, callback=declare_queue)

        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=declare_dead_letter_queue)

    def _on_ready(self, channel: Channel) -> None:
        self._channel = channel
        self._delivery_tag = 0
        self._ready.set()
        logger.info("publisher connected to %s", self._settings.broker_address)
        self._flush()

    def _on_channel_closed(self, _channel: Channel, reason: BaseException) -> None:
        """A channel error (say, the queue was deleted): start over on a new connection."""
        self._ready.clear()
        self._fail_all(f"RabbitMQ closed the channel: {reason!r}")
        connection = self._connection
        if connection is not None and connection.is_open:
            logger.warning("publisher's channel closed: %r; reconnecting", reason)
            connection.close()

    def _flush(self) -> None:
        """Publish everything waiting; confirms resolve the futures later, in _on_confirm."""
        with self._lock:
            self._flush_scheduled = False
        channel = self._channel
        while self._waiting:
            request, future = self._waiting.popleft()
            if not future.set_running_or_notify_cancel():
                continue  # the caller gave up waiting
            if channel is None or not channel.is_open:
                future.set_exception(BrokerUnavailable("the connection to RabbitMQ was lost"))
            elif request is None:
                self._pings.append(future)
                channel.queue_declare(self._settings.queue_name, passive=True, callback=self._on_pong)
            else:
                # mandatory: a message no queue takes is returned (then confirmed): an error, in _on_confirm.
                channel.basic_publish("", self._settings.queue_name, request.body, request.properties, mandatory=True)
                self._delivery_tag += 1
                self._unconfirmed[self._delivery_tag] = (request.properties.message_id, future)

    def _on_pong(self, _frame: Any) -> None:
        if self._pings:
            self._pings.popleft().set_result(None)

    def _on_return(self, _channel: Channel, _method: Any, properties: BasicProperties, _body: bytes) -> None:
        self._returned.add(properties.message_id)

    def _on_confirm(self, frame: Any) -> None:
        """Basic.Ack or Basic.Nack for one delivery tag, or for every tag up to it (`multiple`)."""
        method = frame.method
        acked = isinstance(method, Basic.Ack)
        tags = (
            [tag for tag in self._unconfirmed if tag <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        for tag in tags:
            message_id, future = self._unconfirmed.pop(tag, ("", None))
            if future is None:
                continue
            if message_id in self._returned:
                self._returned.discard(message_id)
                future.set_exception(BrokerUnavailable("RabbitMQ refused the message: no queue took it"))
            elif acked:
                future.set_result(None)
            else:
                future.set_exception(BrokerUnavailable("RabbitMQ refused the message (nack)"))

    def _fail_all(self, reason: str) -> None:
        """Every request in flight or waiting fails: its caller answers 503 at once."""
        failed = [future for _, future in self._unconfirmed.values()] + list(self._pings)
        self._unconfirmed.clear()
        self._pings.clear()
        self._returned.clear()
        while self._waiting:
            _, future = self._waiting.popleft()
            if future.set_running_or_notify_cancel():
                failed.append(future)
        for future in failed:
            if not future.done():
                future.set_exception(BrokerUnavailable(reason))

    def _shut_down(self) -> None:
        connection = self._connection
        if connection is None:
            return
        if connection.is_open:
            connection.close()
        elif not connection.is_closing:
            connection.ioloop.stop()


class BrokerConsumer:
    """Consumes in a background thread that owns its connection; handlers run in a thread pool."""

    def __init__(self, settings: Settings, processor: Processor) -> None:
        self._settings = settings
        self._processor = processor
        self._parameters = connection_parameters(settings, "consumer")
        self._stopping = threading.Event()
        self._consuming = threading.Event()
        self._pool = ThreadPoolExecutor(settings.handler_threads, thread_name_prefix="handler")
        self._thread = threading.Thread(target=self._run, name="rabbitmq-consumer", daemon=True)

    async def start(self) -> None:
        self._thread.start()

    def is_running(self) -> bool:
        return self._consuming.is_set() and self._thread.is_alive()

    async def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, self._settings.shutdown_timeout_seconds + 5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            connection = None
            try:
                connection = BlockingConnection(self._parameters)
                self._consume(connection, backoff)
            except AMQPError as error:
                logger.warning("consumer lost RabbitMQ at %s: %r", self._settings.broker_address, error)
            except Exception:
                # Never let the consumer's thread die: log the bug and reconnect.
                logger.exception("consumer failed unexpectedly; reconnecting")
            finally:
                self._consuming.clear()
                close_quietly(connection)
            self._stopping.wait(backoff.next_delay())

    def _consume(self, connection: BlockingConnection, backoff: Backoff) -> None:
        channel = connection.channel()
        channel.confirm_delivery()
        declare_topology(channel, self._settings)
        channel.basic_qos(prefetch_count=self._settings.prefetch_count)
        in_hand: dict[int, Future[Verdict]] = {}
        on_message = functools.partial(self._on_message, connection, channel, in_hand)
        consumer_tag = channel.basic_consume(self._settings.queue_name, on_message)
        self._consuming.set()
        backoff.reset()
        logger.info("consuming %r from %s", self._settings.queue_name, self._settings.broker_address)
        while not self._stopping.is_set():
            connection.process_data_events(time_limit=0.5)
        self._drain(connection, channel, consumer_tag, in_hand)

    def _drain(
        self,
        connection: BlockingConnection,
        channel: BlockingChannel,
        consumer_tag: str,
        in_hand: dict[int, Future[Verdict]],
    ) -> None:
        """Take nothing new; finish what runs; leave the rest unacked, so the broker redelivers it."""
        channel.basic_cancel(consumer_tag)
        not_started = [future for future in in_hand.values() if future.cancel()]
        deadline = time.monotonic() + self._settings.shutdown_timeout_seconds
        while in_hand and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.1)
        logger.info(
            "consumer stopped: %d message(s) returned unstarted, %d interrupted",
            len(not_started),
            len(in_hand),
        )

    def _on_message(
        self,
        connection: BlockingConnection,
        channel: BlockingChannel,
        in_hand: dict[int, Future[Verdict]],
        _channel: BlockingChannel,
        method: Basic.Deliver,
        properties: BasicProperties,
        body: bytes,
    ) -> None:
        tag = method.delivery_tag
        headers = text_headers((properties.headers or {}).items())
        future = self._pool.submit(self._processor.process, body, retries_of(properties), headers)
        in_hand[tag] = future
        settle = functools.partial(self._settle, channel, in_hand, tag, properties, body)

        def hand_back(done: Future[Verdict]) -> None:
            try:
                connection.add_callback_threadsafe(functools.partial(settle, done))
            except AMQPError:
                logger.info("connection closed before message %d was settled; it will be redelivered", tag)

        future.add_done_callback(hand_back)

    def _settle(
        self,
        channel: BlockingChannel,
        in_hand: dict[int, Future[Verdict]],
        tag: int,
        properties: BasicProperties,
        body: bytes,
        done: Future[Verdict],
    ) -> None:
        """Runs in the connection's thread: republish if needed, then ack."""
        in_hand.pop(tag, None)
        if done.cancelled() or channel.is_closed:
            return
        if done.exception() is not None:
            # The processor never raises for a message; this is a bug or interpreter shutdown.
            logger.error("processing crashed; message %d will be redelivered", tag, exc_info=done.exception())
            return
        verdict = done.result()
        if verdict.outcome is Outcome.RETRIED:
            retried = {RETRIES_HEADER: retries_of(properties) + 1}
            self._republish(channel, self._settings.queue_name, properties, body, retried)
        elif verdict.outcome is Outcome.DEAD_LETTERED:
            reason = {REASON_HEADER: verdict.reason}
            self._republish(channel, self._settings.dead_letter_queue, properties, body, reason)
        channel.basic_ack(tag)

    @staticmethod
    def _republish(
        channel: BlockingChannel,
        routing_key: str,
        properties: BasicProperties,
        body: bytes,
        extra_headers: Mapping[str, Any],
    ) -> None:
        """Confirmed publish of the original body; the original is acked only after this returns."""
        headers = {**(properties.headers or {}), **extra_headers}
        republished = BasicProperties(
            content_type=properties.content_type or CONTENT_TYPE,
            delivery_mode=PERSISTENT,
            message_id=properties.message_id,
            type=properties.type,
            timestamp=properties.timestamp,
            headers=headers,
        )
        channel.basic_publish("", routing_key, body, republished, mandatory=True)
