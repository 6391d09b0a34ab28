"""RabbitMQ with pika. A pika connection is not thread-safe, so each one is owned by a single
thread: the publisher's (a SelectConnection, so that many confirmed publishes are in flight at
once) or the consumer's (a BlockingConnection, driven by the runner's thread). Both try the nodes
of BROKER_URL in turn, on connect and on every reconnect.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel
from pika.exceptions import AMQPConnectionError, AMQPError, ChannelClosedByBroker, ConnectionClosedByClient
from pika.spec import Basic, BasicProperties

from ...messages import CONTENT_TYPE, TaskMessage, encode
from ...runner_threaded import keep_connected
from ..base import BrokerUnavailable, Delivery, OutcomeUnknown, text_headers
from .acks import AckWindow
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
CLIENT_LOGGERS = ("pika",)

ERRORS: tuple[type[BaseException], ...] = (AMQPError, OSError)  # the connection is gone, or never came
PERSISTENT = pika.DeliveryMode.Persistent


def connection_parameters(settings: Settings, name: str) -> list[pika.URLParameters]:
    """One set for each node of BROKER_URL, in its order; a BlockingConnection tries them in turn."""
    nodes = []
    for url in settings.broker_node_urls:
        parameters = pika.URLParameters(url)
        parameters.heartbeat = settings.heartbeat_seconds
        parameters.blocked_connection_timeout = settings.heartbeat_seconds
        parameters.socket_timeout = 5.0
        parameters.stack_timeout = 10.0
        parameters.connection_attempts = 1
        parameters.client_properties = {"connection_name": name}
        nodes.append(parameters)
    return nodes


def declare_topology(channel: BlockingChannel, settings: Settings) -> None:
    """Idempotent: the dead-letter queue, then the task queue that dead-letters into it."""
    try:
        channel.queue_declare(settings.dead_letter_queue, durable=True, arguments=dead_letter_queue_arguments(settings))
        channel.queue_declare(settings.queue_name, durable=True, arguments=queue_arguments(settings))
    except ChannelClosedByBroker as error:
        hint = mismatch_hint(settings, error.reply_code, error.reply_text)
        if hint is None:
            raise
        raise ChannelClosedByBroker(error.reply_code, hint) from error


@dataclass(frozen=True)
class Request:
    """One publish for the publisher's I/O thread."""

    body: bytes
    properties: BasicProperties
    delay_seconds: float = 0.0


def close_quietly(connection: BlockingConnection | None) -> None:
    if connection is not None and connection.is_open:
        try:
            connection.close()
        except AMQPError as error:
            logger.debug("closing the connection failed: %s", error)


class BrokerPublisher:
    """Publishes from one I/O thread that owns the connection (pika's SelectConnection); callers
    await a future. Every request waiting is published at once and each future resolves on its
    own confirm, so many publishes are in flight together instead of one confirm at a time.
    While RabbitMQ blocks the connection (a memory or disk alarm) nothing is written: a publish is
    refused at once; one written whose confirm never comes is OutcomeUnknown, not refused."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._nodes = connection_parameters(settings, "publisher")
        self._next_node = 0  # where the next session starts trying: the node after the one last lost
        self._opened = False  # whether the current connection ever opened
        self._blocked = threading.Event()  # RabbitMQ said connection.blocked, and not yet unblocked
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
        self._wait_queues = WaitQueues(settings)
        self._declaring: list[Future[None]] = []  # publishes waiting for their wait queue's declare
        self._connected: Callable[[], None] = lambda: None  # keep_connected's, for the session that runs
        self._lost: BaseException | None = None  # what closed the session's connection
        self._thread = threading.Thread(target=self._run, name="broker-publisher", daemon=True)

    async def start(self) -> None:
        self._thread.start()

    async def publish(self, message: TaskMessage, headers: Mapping[str, str], delay_seconds: float = 0.0) -> None:
        properties = BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=PERSISTENT,
            message_id=message.id,
            type=message.type,
            timestamp=int(time.time()),
            headers=dict(headers),
        )
        await self._call(Request(encode(message), properties, delay_seconds))

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
        if self._blocked.is_set():
            raise BrokerUnavailable(BLOCKED)
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
        keep_connected(self._session, self._stopping, ERRORS, f"publisher ({self._settings.broker_address})")

    def _session(self, connected: Callable[[], None]) -> None:
        """One connection, to the first node of BROKER_URL that takes it, until it closes; raises
        what closed it, for keep_connected to report."""
        self._connected = connected
        for _ in range(len(self._nodes)):
            node = self._next_node
            self._next_node = (node + 1) % len(self._nodes)
            opened = self._connect(self._nodes[node])
            if opened or self._stopping.is_set():
                break  # lost after it opened: keep_connected waits a backoff, then the next node
        if self._lost is not None and not self._stopping.is_set():
            raise self._lost

    def _connect(self, parameters: pika.URLParameters) -> bool:
        """Connect to one node and serve until the connection closes; whether it ever opened."""
        self._lost = None
        self._opened = False
        self._blocked.clear()
        try:
            self._connection = SelectConnection(
                parameters,
                on_open_callback=self._on_connection_open,
                on_open_error_callback=self._on_connection_error,
                on_close_callback=self._on_connection_closed,
            )
            self._connection.ioloop.start()  # until the connection is closed or fails to open
        finally:
            self._ready.clear()
            self._fail_all("the connection to RabbitMQ was lost")
            self._channel = None
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    self._connection.ioloop.close()
        return self._opened

    def _on_connection_open(self, connection: SelectConnection) -> None:
        self._opened = True
        if self._stopping.is_set():
            connection.close()
            return
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_blocked(self, _connection: SelectConnection, frame: Any) -> None:
        self._blocked.set()
        logger.warning("RabbitMQ blocked the publisher (%s): refusing tasks until it lifts", frame.method.reason)
        self._fail_waiting(BLOCKED)

    def _on_unblocked(self, _connection: SelectConnection, _frame: Any) -> None:
        self._blocked.clear()
        logger.info("RabbitMQ unblocked the publisher")

    def _on_connection_error(self, connection: SelectConnection, error: BaseException | str) -> None:
        self._lost = error if isinstance(error, BaseException) else AMQPConnectionError(error)
        connection.ioloop.stop()

    def _on_connection_closed(self, connection: SelectConnection, reason: BaseException) -> None:
        if not self._stopping.is_set() and not isinstance(reason, ConnectionClosedByClient):
            self._lost = reason
        connection.ioloop.stop()

    def _on_declare_failed(self, reason: BaseException) -> None:
        """A queue RabbitMQ would not declare as configured: say why and what to do, in one line."""
        if isinstance(reason, ChannelClosedByBroker):
            hint = mismatch_hint(self._settings, reason.reply_code, reason.reply_text)
            if hint is not None:
                self._lost = ChannelClosedByBroker(reason.reply_code, hint)

    def _on_channel_open(self, channel: Channel) -> None:
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)

        def confirming(_: Any) -> None:
            self._declare(channel, lambda _: self._on_ready(channel))

        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=confirming)

    def _declare(self, channel: Channel, done: Callable[[Any], None] | None = None) -> None:
        """The dead-letter queue, then the task queue (whose arguments name it), then `done`."""

        def declare_queue(_: Any) -> None:
            arguments = queue_arguments(self._settings)
            channel.queue_declare(self._settings.queue_name, durable=True, arguments=arguments, callback=done)

        dead_letters = dead_letter_queue_arguments(self._settings)
        channel.queue_declare(
            self._settings.dead_letter_queue, durable=True, arguments=dead_letters, callback=declare_queue
        )

    def _on_ready(self, channel: Channel) -> None:
        self._channel = channel
        self._delivery_tag = 0
        self._wait_queues.clear()
        self._ready.set()
        self._connected()
        logger.info("publisher connected to %s", self._settings.broker_address)
        self._flush()

    def _on_channel_closed(self, _channel: Channel, reason: BaseException) -> None:
        """A channel error (say, the queue was deleted): start over on a new connection."""
        self._ready.clear()
        self._fail_all(f"RabbitMQ closed the channel: {reason!r}")
        self._on_declare_failed(reason)
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
            elif self._blocked.is_set():
                future.set_exception(BrokerUnavailable(BLOCKED))
            elif request is None:
                self._pings.append(future)
                channel.queue_declare(self._settings.queue_name, passive=True, callback=self._on_pong)
            elif request.delay_seconds > 0:
                self._publish_to_wait(channel, request, future)
            else:
                self._publish(channel, self._settings.queue_name, request, future)

    def _publish(self, channel: Channel, routing_key: str, request: Request, future: Future[None]) -> None:
        # mandatory: a message no queue takes is returned (then confirmed): an error, in _on_confirm.
        channel.basic_publish("", routing_key, request.body, request.properties, mandatory=True)
        self._delivery_tag += 1
        self._unconfirmed[self._delivery_tag] = (request.properties.message_id, future)

    def _publish_to_wait(self, channel: Channel, request: Request, future: Future[None]) -> None:
        """A delayed task goes to its wait queue, declared first on this channel's first use of it."""
        name, arguments = self._wait_queues.route(request.delay_seconds)
        if arguments is None:
            self._publish(channel, name, request, future)
            return

        def declared(_: Any) -> None:
            self._wait_queues.declared(name)
            if future in self._declaring:  # else failed meanwhile, with the channel
                self._declaring.remove(future)
                self._publish(channel, name, request, future)

        self._declaring.append(future)
        channel.queue_declare(name, durable=True, arguments=arguments, callback=declared)

    def _on_pong(self, _frame: Any) -> None:
        """The queue is there; the ping ends with the confirm of a probe publish (see PROBE_ROUTING_KEY)."""
        channel = self._channel
        if not self._pings:
            return
        future = self._pings.popleft()
        if channel is None or not channel.is_open:
            future.set_exception(BrokerUnavailable("the connection to RabbitMQ was lost"))
            return
        channel.basic_publish("", PROBE_ROUTING_KEY, b"")
        self._delivery_tag += 1
        self._unconfirmed[self._delivery_tag] = ("", future)

    def _on_return(self, channel: Channel, _method: Any, properties: BasicProperties, _body: bytes) -> None:
        """No queue took the message: it fails, and the queues are declared again (deleted meanwhile?)."""
        self._returned.add(properties.message_id)
        self._wait_queues.clear()
        if channel.is_open:
            self._declare(channel)

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
        if not acked:
            self._connect_again(NACKED)

    def _connect_again(self, reason: str) -> None:
        """Close the connection; keep_connected reports `reason` and connects again."""
        connection = self._connection
        if connection is not None and connection.is_open:
            self._lost = AMQPConnectionError(reason)
            connection.close()

    def _fail_all(self, reason: str) -> None:
        """Every request in flight or waiting fails at once: one written and not confirmed with
        OutcomeUnknown (504: RabbitMQ may have it), the others with BrokerUnavailable (503)."""
        written = [future for _, future in self._unconfirmed.values()]
        self._unconfirmed.clear()
        self._returned.clear()
        for future in written:
            if not future.done():
                future.set_exception(OutcomeUnknown(f"{reason} before RabbitMQ confirmed the message"))
        self._fail_waiting(reason)

    def _fail_waiting(self, reason: str) -> None:
        """Every request not yet written fails with BrokerUnavailable: its caller answers 503 at once."""
        failed = list(self._pings) + self._declaring
        self._pings.clear()
        self._declaring = []
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


class BrokerTransport:
    """The consumer's side: a BlockingConnection that the runner's thread owns and drives. Its
    acknowledgements go as one multiple ack for each unbroken run of handled tags (acks.py)."""

    errors = ERRORS
    finish_unstarted = False  # what is not acknowledged goes back to the queue as the connection closes
    # pika sends heartbeats from the consumer's thread only: a long handler there would lose the connection.
    handlers_may_hold_thread = False

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._nodes = connection_parameters(settings, "consumer")
        self.capacity = settings.prefetch_count  # the broker sends no more than the prefetch anyway
        self._connection: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._consumer_tag: str | None = None
        self._received: collections.deque[Delivery] = collections.deque()  # delivered, not yet fetched
        self._acks = AckWindow()
        self._wait_queues = WaitQueues(settings)
        self._cancelled = False  # RabbitMQ cancelled our consumer

    def open(self) -> str:
        self._connection = BlockingConnection(self._nodes)  # the first node of BROKER_URL that takes it
        self._acks.clear()
        self._wait_queues.clear()
        channel = self._connection.channel()
        channel.confirm_delivery()
        declare_topology(channel, self._settings)
        channel.basic_qos(prefetch_count=self._settings.prefetch_count)
        self._cancelled = False
        channel.add_on_cancel_callback(self._on_cancelled)
        self._consumer_tag = channel.basic_consume(self._settings.queue_name, self._on_message)
        self._channel = channel
        return f"{self._settings.queue_name!r} from {self._settings.broker_address}"

    def _on_message(
        self, _channel: BlockingChannel, method: Basic.Deliver, properties: BasicProperties, body: bytes
    ) -> None:
        headers = properties.headers or {}
        extra = {"properties": properties}
        self._acks.delivered(method.delivery_tag)
        self._received.append(
            Delivery(body, text_headers(headers.items()), retries_of(headers), method.delivery_tag, extra=extra)
        )

    def _on_cancelled(self, _frame: Any) -> None:
        """RabbitMQ cancelled the consumer (its queue was deleted, say): reconnect, declaring it again."""
        self._cancelled = True

    def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        if self._cancelled:
            raise AMQPConnectionError("RabbitMQ cancelled the consumer (was the queue deleted?)")
        self._send_acks()
        if not self._received:
            self._open_connection().process_data_events(time_limit=wait_seconds)  # returns once a message came
        return [self._received.popleft() for _ in range(min(max_count, len(self._received)))]

    def pump(self) -> None:
        self._send_acks()
        self._open_connection().process_data_events(time_limit=0)

    def unsubscribe(self) -> int:
        """Take no new messages; those delivered but not fetched go back to the queue on close."""
        if self._channel is not None and self._consumer_tag is not None and self._channel.is_open:
            self._channel.basic_cancel(self._consumer_tag)
        self._consumer_tag = None
        returned = len(self._received)
        self._received.clear()
        return returned

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._acks.handled((delivery.handle for delivery in deliveries), time.monotonic())
        self._send_acks()

    def _send_acks(self, everything: bool = False) -> None:
        up_to, alone = self._acks.due(time.monotonic(), everything)
        if up_to is None and not alone:
            return
        channel = self._open_channel()
        if up_to is not None:
            channel.basic_ack(up_to, multiple=True)
        for tag in alone:
            channel.basic_ack(tag)

    def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        properties = delivery.extra["properties"]
        headers = retried_headers(properties.headers, delivery.retries)
        self._republish(self._wait_queue(delay_seconds), delivery, headers)

    def _wait_queue(self, delay_seconds: float) -> str:
        """Where a retry waits `delay_seconds`, declared on first use (the task queue: no wait)."""
        name, arguments = self._wait_queues.route(delay_seconds)
        if arguments is not None:
            self._open_channel().queue_declare(name, durable=True, arguments=arguments)
            self._wait_queues.declared(name)
        return name

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        properties = delivery.extra["properties"]
        self._republish(self._settings.dead_letter_queue, delivery, dead_letter_headers(properties.headers, reason))

    def _republish(self, routing_key: str, delivery: Delivery, headers: Mapping[str, Any]) -> None:
        """A confirmed publish of the original body, then the original's ack."""
        properties: BasicProperties = delivery.extra["properties"]
        republished = BasicProperties(delivery_mode=PERSISTENT, **copied_properties(properties, headers))
        channel = self._open_channel()
        channel.basic_publish("", routing_key, delivery.body, republished, mandatory=True)
        channel.basic_ack(delivery.handle)
        self._acks.settled(delivery.handle)

    def close(self) -> None:
        with contextlib.suppress(*ERRORS):
            self._send_acks(everything=True)  # what was handled is not delivered again, if the channel lives
        self._received.clear()
        self._channel = None
        self._consumer_tag = None
        close_quietly(self._connection)
        self._connection = None

    def _open_connection(self) -> BlockingConnection:
        if self._connection is None or not self._connection.is_open:
            raise AMQPConnectionError("the consumer's connection is closed")
        return self._connection

    def _open_channel(self) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            raise AMQPConnectionError("the consumer's channel is closed")
        return self._channel
