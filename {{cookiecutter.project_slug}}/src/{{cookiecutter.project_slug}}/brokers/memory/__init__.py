"""BROKER_URL=memory://: a queue in the API process's memory, for a first look without any broker.
Nothing is durable: what is queued is lost when the process stops, so a worker alone (another
process) cannot use it. The publisher and the consumer of one process share one queue."""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
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
    """Deliveries waiting (now, or until they are due), and dead letters, guarded for the API's
    loop and a consumer's thread alike."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting: collections.deque[Delivery] = collections.deque()
        self._delayed: list[tuple[float, int, Delivery]] = []  # a heap of (due, order, delivery)
        self._order = itertools.count()
        self.dead_letters: list[tuple[Delivery, str]] = []

    def put(self, delivery: Delivery, delay_seconds: float = 0.0) -> None:
        with self._changed:
            if delay_seconds > 0:
                heapq.heappush(self._delayed, (time.monotonic() + delay_seconds, next(self._order), delivery))
            else:
                self._waiting.append(delivery)
            self._changed.notify()

    def take(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        deadline = time.monotonic() + wait_seconds
        with self._changed:
            while True:
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    self._waiting.append(heapq.heappop(self._delayed)[2])
                left = deadline - now
                if self._waiting or left <= 0:
                    return [self._waiting.popleft() for _ in range(min(max_count, len(self._waiting)))]
                self._changed.wait(min(left, self._delayed[0][0] - now) if self._delayed else left)


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

    async def publish(self, message: TaskMessage, headers: Mapping[str, str], delay_seconds: float = 0.0) -> None:
        self._queue.put(Delivery(encode(message), dict(headers), 0, None), delay_seconds)

    async def ping(self) -> None:
        """Always there: it is this process."""

    async def close(self) -> None:
        """Nothing to close; what is still queued is lost with the process."""


class MemoryTransport:
    """The consumer's side of the in-memory queue. A retry waits in memory, then goes to the back
    of the queue; a dead letter is kept in memory (and logged by the processor)."""

    errors: tuple[type[BaseException], ...] = ()
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

    def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        self._queue.put(Delivery(delivery.body, delivery.headers, delivery.retries + 1, None), delay_seconds)

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
