"""Creating the service's topics with confluent-kafka's admin client: in steps that
never block, for the publisher's thread (it keeps polling its producer meanwhile), or waiting a
bounded time, for the consumer's transport as it opens."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # where the stubs declare it; confluent_kafka.admin re-exports it untyped

from ..base import Backoff
from .threaded_config import client_config
from .waits import topics

if TYPE_CHECKING:
    from ...settings import Settings

logger = logging.getLogger(__name__)

ADMIN_TIMEOUT_SECONDS = 10.0  # for one attempt to create the topics
POLL_SECONDS = 0.1


def start_creating_topics(settings: Settings) -> tuple[AdminClient, dict[str, Future[Any]]]:
    """Ask for the service's topics; the admin client must outlive the futures it resolves."""
    admin = AdminClient(client_config(settings, "admin"))
    wanted = [
        NewTopic(name, num_partitions=settings.topic_partitions, replication_factor=settings.topic_replication)
        for name in topics(settings)
    ]
    futures = admin.create_topics(
        wanted, request_timeout=ADMIN_TIMEOUT_SECONDS, operation_timeout=ADMIN_TIMEOUT_SECONDS
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


def ensure_topics(settings: Settings) -> None:
    """Create the topics if missing, waiting for the answer (a bounded time); raise if it failed."""
    admin, futures = start_creating_topics(settings)
    wait(futures.values(), timeout=ADMIN_TIMEOUT_SECONDS + 5)
    raise_unless_created(futures)  # a future not done by now raises TimeoutError
    del admin  # only now: the admin client resolves the futures


class TopicCreation:
    """Creates the topics if missing, retrying with backoff, in steps that never block: the
    publisher's thread keeps polling its producer meanwhile."""

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
            logger.info("topic %r, its dead letters and its wait topics are there", self._settings.queue_name)
