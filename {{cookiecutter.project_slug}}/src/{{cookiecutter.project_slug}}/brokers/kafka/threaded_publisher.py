"""The API's side of Kafka with confluent-kafka: one producer, `acks=all`, polled by its own
thread so that delivery reports resolve the futures POST /tasks awaits."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from ...messages import TaskMessage, encode
from ..base import BrokerUnavailable, OutcomeUnknown
from .reachability import PROBE_SECONDS, Reachability
from .threaded_config import producer_config
from .threaded_topics import POLL_SECONDS, TopicCreation
from .waits import destination

if TYPE_CHECKING:
    from ...settings import Settings

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 5.0  # for messages still in flight at close
# Delivery errors that mean the broker did not append the message. After any other (a timeout, a lost
# connection, NOT_ENOUGH_REPLICAS_AFTER_APPEND) it may hold it: the outcome is unknown.
REFUSED = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.INVALID_REQUIRED_ACKS,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_TIMESTAMP,
        KafkaError.POLICY_VIOLATION,
        KafkaError.PRODUCER_FENCED,
        KafkaError._FENCED,
        KafkaError._QUEUE_FULL,
    }
)


def delivery_failure(error: KafkaError) -> BrokerUnavailable:
    """The exception for a failed delivery report: a refusal (503), or OutcomeUnknown (504)."""
    if error.code() in REFUSED:
        return BrokerUnavailable(f"Kafka did not accept the message: {error}")
    return OutcomeUnknown(f"Kafka did not confirm the message, it may hold it: {error}")


class BrokerPublisher:
    """One producer, `acks=all`; 202 only once its delivery report resolved the caller's future."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._fatal = threading.Event()
        self._reach = Reachability()
        self._producer = self._new_producer()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-publisher", daemon=True)

    def _new_producer(self) -> Producer:
        config = producer_config(self._settings, "publisher", self._settings.publish_timeout_seconds, self._on_fatal)
        return Producer(config)

    def _on_fatal(self, _: KafkaError) -> None:
        self._fatal.set()  # the thread replaces the producer

    async def start(self) -> None:
        self._thread.start()

    async def publish(self, message: TaskMessage, headers: Mapping[str, str], delay_seconds: float = 0.0) -> None:
        delivered: Future[None] = Future()
        # Running from the start: a caller that gives up cannot cancel it under the delivery report's feet.
        delivered.set_running_or_notify_cancel()

        def on_delivery(error: KafkaError | None, _: Message) -> None:
            if error is None:
                self._reach.answered()
                delivered.set_result(None)
                return
            failure = delivery_failure(error)
            if isinstance(failure, OutcomeUnknown):
                self._reach.lost()  # unanswered: the next publishes are refused until a probe answers
            delivered.set_exception(failure)
            if error.code() == KafkaError.PRODUCER_FENCED:
                self._on_fatal(error)  # a fenced producer never sends again

        if not self._reach.up:
            raise BrokerUnavailable(f"Kafka at {self._settings.broker_address} is unreachable")
        topic, sent_headers = destination(self._settings, headers, delay_seconds)
        produced: list[tuple[str, str | bytes | None]] = [*sent_headers]
        try:
            self._producer.produce(
                topic=topic,
                value=encode(message),
                key=message.id,
                headers=produced,
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
            self._reach.lost()
            raise BrokerUnavailable(f"Kafka at {self._settings.broker_address} did not answer: {error}") from error
        self._reach.answered()
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
                if self._reach.probe_due():
                    self._probe()
                if self._fatal.is_set():
                    self._replace_producer()
            except Exception:
                # Never let the publisher's thread die: log the bug and carry on.
                logger.exception("publisher's thread failed unexpectedly; carrying on")
                self._stopping.wait(1.0)
        unconfirmed = self._producer.flush(FLUSH_SECONDS)
        if unconfirmed:
            logger.warning("publisher closed with %d message(s) unconfirmed", unconfirmed)

    def _probe(self) -> None:
        try:
            self._producer.list_topics(self._settings.queue_name, PROBE_SECONDS)
        except KafkaException:
            return  # still away
        self._reach.answered()

    def _replace_producer(self) -> None:
        logger.warning("publisher's producer cannot go on; replacing it")
        broken, self._producer = self._producer, self._new_producer()
        self._fatal.clear()
        broken.purge()  # fails what it still holds: those callers get 503
        broken.poll(0)
