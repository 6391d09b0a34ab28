"""BROKER_URL=memory://: a queue in the API process's memory, for a first look without any broker.
Nothing is durable: what is queued is lost when the process stops, so a worker alone (another
process) cannot use it. The publisher and the consumer of one process share one queue."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...messages import TaskMessage, encode
from ..base import Delivery

if TYPE_CHECKING:
    from ...settings import Settings

logger = logging.getLogger(__name__)

SCHEME = "memory"


def is_memory(settings: Settings) -> bool:
    return settings.broker_url.partition(":")[0] == SCHEME


class MemoryQueue:
    """Deliveries waiting, and dead letters, guarded for the API's loop and a consumer's thread alike."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting: collections.deque[Delivery] = collections.deque()
        self.dead_letters: list[tuple[Delivery, str]] = []

    def put(self, delivery: Delivery) -> None:
        with self._changed:
            self._waiting.append(delivery)
            self._changed.notify()

    def take(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        with self._changed:
            self._changed.wait_for(lambda: bool(self._waiting), wait_seconds)
            return [self._waiting.popleft() for _ in range(min(max_count, len(self._waiting)))]


_queues: dict[str, MemoryQueue] = {}
_queues_lock = threading.Lock()


def memory_queue(settings: Settings) -> MemoryQueue:
    """The process's queue of that name: the publisher and the consumer get the same one."""
    with _queues_lock:
        return _queues.setdefault(settings.queue_name, MemoryQueue())


class MemoryPublisher:
    """Puts tasks on the in-memory queue; always "accepted", never durable."""

    def __init__(self, settings: Settings) -> None:
        self._queue = memory_queue(settings)

    async def start(self) -> None:
        logger.warning(
            "BROKER_URL=memory://: tasks live in this process's memory and are lost when it stops; "
            "for a first look only, point BROKER_URL at the broker for anything else"
        )

    async def publish(self, message: TaskMessage, headers: Mapping[str, str]) -> None:
        self._queue.put(Delivery(encode(message), dict(headers), 0, None))

    async def ping(self) -> None:
        """Always there: it is this process."""

    async def close(self) -> None:
        """Nothing to close; what is still queued is lost with the process."""


class MemoryTransport:
    """The consumer's side of the in-memory queue. A retry goes to the back of the queue; a dead
    letter is kept in memory (and logged by the processor)."""

    errors: tuple[type[BaseException], ...] = ()
    retry_in_place = False
    finish_unstarted = True  # what is not handled before the process stops is lost: handle it
    handlers_may_hold_thread = True  # no connection to serve

    def __init__(self, settings: Settings) -> None:
        self._queue = memory_queue(settings)
        self.capacity = settings.prefetch_count

    def open(self) -> str:
        return "the in-memory queue (memory://; nothing is durable)"

    def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        return self._queue.take(max_count, wait_seconds)

    def pump(self) -> None:
        """No connection to serve."""

    def unsubscribe(self) -> int:
        return 0

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Taken off the queue already."""

    def retry(self, delivery: Delivery) -> None:
        self._queue.put(Delivery(delivery.body, delivery.headers, delivery.retries + 1, None))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._queue.dead_letters.append((delivery, reason))

    def close(self) -> None:
        """No connection to close."""


def consumer_transport(settings: Settings) -> Any:
    """The in-memory queue's transport, for the runner of this project's consumer style."""
{%- if cookiecutter.consumer == "async" %}
    from .asynchronous import BrokerTransport  # imported here: that module builds on this one

    return BrokerTransport(MemoryTransport(settings))
{%- else %}
    return MemoryTransport(settings)
{%- endif %}
