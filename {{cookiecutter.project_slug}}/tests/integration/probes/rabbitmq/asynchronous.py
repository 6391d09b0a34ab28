"""Talks to RabbitMQ directly, as another program would, to set up and inspect integration tests.

Synchronous methods over aio-pika, so the tests read the same in both consumer styles.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel


@dataclass(frozen=True)
class Received:
    body: bytes
    headers: dict[str, Any]
    content_type: str | None
    persistent: bool
    message_id: str | None


class Probe:
    def __init__(self, url: str) -> None:
        self._url = url

    @asynccontextmanager
    async def _channel(self) -> AsyncIterator[AbstractChannel]:
        connection = await aio_pika.connect(self._url, timeout=3)
        try:
            yield await connection.channel()
        finally:
            await connection.close()

    def check(self) -> None:
        """Raise if the broker cannot be reached."""

        async def connect() -> None:
            async with self._channel():
                pass

        asyncio.run(connect())

    def publish(self, queue: str, *bodies: bytes) -> None:
        async def publish() -> None:
            async with self._channel() as channel:
                for body in bodies:
                    message = aio_pika.Message(
                        body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                    )
                    await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)

        asyncio.run(publish())

    def count(self, queue: str) -> int:
        async def count() -> int:
            async with self._channel() as channel:
                declared = await channel.declare_queue(queue, passive=True)
                return int(declared.declaration_result.message_count or 0)

        return asyncio.run(count())

    def take(self, queue: str, expected: int, timeout: float = 15.0) -> list[Received]:
        """Get and ack messages until `expected` arrived or the deadline passed."""

        async def take() -> list[Received]:
            taken: list[Received] = []
            deadline = time.monotonic() + timeout
            async with self._channel() as channel:
                declared = await channel.declare_queue(queue, passive=True)
                while len(taken) < expected and time.monotonic() < deadline:
                    message = await declared.get(fail=False)
                    if message is None:
                        await asyncio.sleep(0.05)  # polling an empty queue until the deadline
                        continue
                    await message.ack()
                    taken.append(
                        Received(
                            body=message.body,
                            headers=dict(message.headers or {}),
                            content_type=message.content_type,
                            persistent=message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT,
                            message_id=message.message_id,
                        )
                    )
            return taken

        return asyncio.run(take())

    def reject_one(self, queue: str, timeout: float = 15.0) -> bytes:
        """Take one message and reject it without requeueing, as a crashing consumer might."""

        async def reject() -> bytes:
            deadline = time.monotonic() + timeout
            async with self._channel() as channel:
                declared = await channel.declare_queue(queue, passive=True)
                while time.monotonic() < deadline:
                    message = await declared.get(fail=False)
                    if message is not None:
                        await message.reject(requeue=False)
                        return message.body
                    await asyncio.sleep(0.05)
            raise AssertionError(f"no message arrived in {queue!r} within {timeout} s")

        return asyncio.run(reject())

    def delete(self, *queues: str) -> None:
        async def delete() -> None:
            async with self._channel() as channel:
                for queue in queues:
                    await channel.queue_delete(queue)

        asyncio.run(delete())
