"""RabbitMQ with pika's BlockingConnection. A pika connection is not thread-safe, so each one
is owned by a single thread: the publisher's thread or the consumer's. Handlers run in a pool
and hand their verdict back to the consumer's thread with `add_callback_threadsafe`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import AMQPError, NackError, UnroutableError
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


def declare_topology(channel: BlockingChannel, settings: Settings) -> None:
    """Idempotent: the dead-letter queue, then the task queue that dead-letters into it."""
    channel.queue_declare(settings.dead_letter_queue, durable=True)
    channel.queue_declare(
        settings.queue_name,
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": settings.dead_letter_queue},
    )


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
    """Publishes from one thread that owns the connection; callers await a future."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._parameters = connection_parameters(settings, "publisher")
        self._requests: queue.Queue[tuple[Callable[[BlockingChannel], None], Future[None]]] = queue.Queue()
        self._connected = threading.Event()
        self._stopping = threading.Event()
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
        body = encode(message)

        def send(channel: BlockingChannel) -> None:
            # mandatory: a message no queue takes is returned as an error, not silently confirmed.
            channel.basic_publish("", self._settings.queue_name, body, properties, mandatory=True)

        await self._call(send)

    async def ping(self) -> None:
        def declare_passively(channel: BlockingChannel) -> None:
            channel.queue_declare(self._settings.queue_name, passive=True)

        await self._call(declare_passively)

    async def close(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, self._settings.shutdown_timeout_seconds)

    async def _call(self, operation: Callable[[BlockingChannel], None]) -> None:
        if not self._connected.is_set():
            raise BrokerUnavailable(f"not connected to RabbitMQ at {self._settings.broker_address}")
        future: Future[None] = Future()
        self._requests.put((operation, future))
        await asyncio.wrap_future(future)

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            connection = None
            try:
                connection = BlockingConnection(self._parameters)
                channel = connection.channel()
                channel.confirm_delivery()
                declare_topology(channel, self._settings)
                self._connected.set()
                backoff.reset()
                logger.info("publisher connected to %s", self._settings.broker_address)
                self._serve(connection, channel)
            except AMQPError as error:
                logger.warning("publisher lost RabbitMQ at %s: %r", self._settings.broker_address, error)
            except Exception:
                # Never let the publisher's thread die: log the bug and reconnect.
                logger.exception("publisher failed unexpectedly; reconnecting")
            finally:
                self._connected.clear()
                self._fail_waiting_requests()
                close_quietly(connection)
            self._stopping.wait(backoff.next_delay())

    def _serve(self, connection: BlockingConnection, channel: BlockingChannel) -> None:
        while not self._stopping.is_set():
            try:
                operation, future = self._requests.get(timeout=0.2)
            except queue.Empty:
                connection.process_data_events(time_limit=0)  # heartbeats while idle
                continue
            if not future.set_running_or_notify_cancel():
                continue  # the caller gave up waiting
            try:
                operation(channel)
            except (UnroutableError, NackError) as error:
                future.set_exception(BrokerUnavailable(f"RabbitMQ refused the message: {error!r}"))
            except AMQPError as error:
                future.set_exception(BrokerUnavailable(f"RabbitMQ connection failed: {error!r}"))
                raise
            else:
                future.set_result(None)

    def _fail_waiting_requests(self) -> None:
        while True:
            try:
                _, future = self._requests.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(BrokerUnavailable("the connection to RabbitMQ was lost"))


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
