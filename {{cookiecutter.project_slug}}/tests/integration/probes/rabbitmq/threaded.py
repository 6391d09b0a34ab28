"""Talks to RabbitMQ directly, as another program would, to set up and inspect integration tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel


@dataclass(frozen=True)
class Received:
    body: bytes
    headers: dict[str, Any]
    content_type: str | None
    persistent: bool
    message_id: str | None


class Probe:
    def __init__(self, url: str) -> None:
        self._parameters = pika.URLParameters(url)
        self._parameters.connection_attempts = 1
        self._parameters.socket_timeout = 3

    @contextmanager
    def _channel(self) -> Iterator[BlockingChannel]:
        connection = pika.BlockingConnection(self._parameters)
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            yield channel
        finally:
            if connection.is_open:
                connection.close()

    def check(self) -> None:
        """Raise if the broker cannot be reached."""
        with self._channel():
            pass

    def publish(self, queue: str, *bodies: bytes) -> None:
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        with self._channel() as channel:
            for body in bodies:
                channel.basic_publish("", queue, body, properties, mandatory=True)

    def count(self, queue: str) -> int:
        with self._channel() as channel:
            return int(channel.queue_declare(queue, passive=True).method.message_count)

    def take(self, queue: str, expected: int, timeout: float = 15.0) -> list[Received]:
        """Get and ack messages until `expected` arrived or the deadline passed."""
        taken: list[Received] = []
        deadline = time.monotonic() + timeout
        with self._channel() as channel:
            while len(taken) < expected and time.monotonic() < deadline:
                method, properties, body = channel.basic_get(queue)
                if method is None:
                    time.sleep(0.05)  # polling an empty queue until the deadline
                    continue
                channel.basic_ack(method.delivery_tag)
                taken.append(
                    Received(
                        body=body,
                        headers=dict(properties.headers or {}),
                        content_type=properties.content_type,
                        persistent=properties.delivery_mode == 2,
                        message_id=properties.message_id,
                    )
                )
        return taken

    def reject_one(self, queue: str, timeout: float = 15.0) -> bytes:
        """Take one message and reject it without requeueing, as a crashing consumer might."""
        deadline = time.monotonic() + timeout
        with self._channel() as channel:
            while time.monotonic() < deadline:
                method, _, body = channel.basic_get(queue)
                if method is not None:
                    channel.basic_reject(method.delivery_tag, requeue=False)
                    return bytes(body)
                time.sleep(0.05)
        raise AssertionError(f"no message arrived in {queue!r} within {timeout} s")

    def delete(self, *queues: str) -> None:
        with self._channel() as channel:
            for queue in queues:
                channel.queue_delete(queue)
