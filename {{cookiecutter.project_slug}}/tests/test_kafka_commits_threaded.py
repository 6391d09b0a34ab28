"""Unit tests of the threaded Kafka transport's commit window, on a stand-in for librdkafka's
consumer whose asynchronous commits are answered only when a test says so: records handed to the
runner and not confirmed committed are never more than PREFETCH_COUNT, what a SIGKILL repeats."""

from __future__ import annotations

import collections
from typing import Any

from confluent_kafka import TopicPartition

from {{ cookiecutter.project_slug }}.brokers.base import Delivery
from {{ cookiecutter.project_slug }}.brokers.kafka.threaded import BrokerTransport
from {{ cookiecutter.project_slug }}.settings import Settings

TOPIC = "tasks"
CAPACITY = 4


class Record:
    """What the transport reads of a confluent_kafka Message."""

    def __init__(self, offset: int) -> None:
        self._offset = offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def headers(self) -> list[tuple[str, bytes]]:
        return []

    def value(self) -> bytes:
        return b"{}"


class Consumer:
    """Hands out the records of one partition; keeps the commits, answering the synchronous ones."""

    def __init__(self, records: int) -> None:
        self.waiting = collections.deque(Record(offset) for offset in range(records))
        self.commits: list[tuple[int, bool]] = []  # (offset, asynchronous)
        self.confirmed = 0  # the group's committed offset, as the broker has it

    def consume(self, count: int, timeout: float) -> list[Record]:
        return [self.waiting.popleft() for _ in range(min(count, len(self.waiting)))]

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition] | None:
        [partition] = offsets
        self.commits.append((partition.offset, asynchronous))
        if asynchronous:
            return None  # answered later, if ever, through on_commit
        self.confirmed = max(self.confirmed, partition.offset)
        return offsets


class Producer:
    def poll(self, timeout: float) -> int:
        return 0


def transport_on(consumer: Consumer) -> BrokerTransport:
    transport = BrokerTransport(Settings(broker_url="kafka://127.0.0.1:9", prefetch_count=CAPACITY))
    state: dict[str, Any] = vars(transport)
    state["_consumer"], state["_producer"] = consumer, Producer()
    transport._on_assign(consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
    return transport


def offsets(deliveries: list[Delivery]) -> list[int]:
    return [delivery.handle.offset() for delivery in deliveries]


def test_with_the_window_full_the_next_fetch_first_waits_for_a_commit_of_it_all() -> None:
    consumer = Consumer(records=12)
    transport = transport_on(consumer)
    first = transport.fetch(CAPACITY, 0)
    transport.ack(first)  # half the window settled: a commit goes out, not yet answered
    assert consumer.commits == [(4, True)]
    assert offsets(transport.fetch(CAPACITY, 0)) == [4, 5, 6, 7]
    assert consumer.commits == [(4, True), (4, False)]  # waited for the broker before taking more


def test_a_commit_the_broker_confirmed_makes_room_without_waiting() -> None:
    consumer = Consumer(records=12)
    transport = transport_on(consumer)
    transport.ack(transport.fetch(CAPACITY, 0))
    transport._on_commit(None, [TopicPartition(TOPIC, 0, 4)])
    assert offsets(transport.fetch(CAPACITY, 0)) == [4, 5, 6, 7]
    assert consumer.commits == [(4, True)]


def test_what_is_handed_out_and_not_confirmed_never_exceeds_the_window() -> None:
    consumer = Consumer(records=200)
    transport = transport_on(consumer)
    held: collections.deque[Delivery] = collections.deque()
    handed_out = 0
    for step in range(1000):
        if handed_out == 200 and not held:
            break
        taken = transport.fetch(CAPACITY - len(held), 0)
        handed_out += len(taken)
        held.extend(taken)
        assert handed_out - consumer.confirmed <= CAPACITY, (step, consumer.commits)
        settled = [held.popleft() for _ in range(min(len(held), 1 + step % 3))]  # as a runner would, in order
        transport.ack(settled)
    assert (handed_out, len(held)) == (200, 0)
