"""Talks to Kafka directly, as another program would, to set up and inspect integration tests.

Synchronous methods over aiokafka, so the tests read the same in both consumer styles.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

IDLE_SECONDS = 1.0  # a topic read this long without a new record is read to its end


@dataclass(frozen=True)
class Received:
    body: bytes
    headers: dict[str, str]
    key: bytes | None = None


class Probe:
    def __init__(self, url: str) -> None:
        self._servers = urlsplit(url).netloc.rpartition("@")[2]

    @asynccontextmanager
    async def _admin(self) -> AsyncIterator[Any]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._servers, request_timeout_ms=5000)
        await admin.start()
        try:
            yield admin
        finally:
            await admin.close()

    def check(self) -> None:
        """Raise if the broker cannot be reached."""

        async def check() -> None:
            async with self._admin() as admin:
                await admin.list_topics()

        asyncio.run(asyncio.wait_for(check(), 10))

    def publish(self, topic: str, *bodies: bytes) -> None:
        async def publish() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=self._servers, acks="all")
            await producer.start()
            try:
                for body in bodies:
                    await producer.send(topic, value=body)
                await producer.flush()
            finally:
                await producer.stop()

        asyncio.run(publish())

    async def _read(self, topic: str, start: dict[TopicPartition, int] | None, until: int | None) -> list[Received]:
        """Read the topic from `start` (or the beginning) until `until` records or the topic's end."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self._servers, enable_auto_commit=False)
        await consumer.start()
        try:
            if topic not in await consumer.topics():
                raise LookupError(f"no topic {topic!r}")
            partitions = consumer.partitions_for_topic(topic) or set()
            assigned = [TopicPartition(topic, partition) for partition in partitions]
            consumer.assign(assigned)
            for tp in assigned:
                if start and start.get(tp) is not None:
                    consumer.seek(tp, start[tp])
                else:
                    await consumer.seek_to_beginning(tp)
            received: list[Received] = []
            idle_since = time.monotonic()
            while (until is None or len(received) < until) and time.monotonic() - idle_since < IDLE_SECONDS:
                batch = await consumer.getmany(timeout_ms=200)
                for record in (record for records in batch.values() for record in records):
                    headers = {key: (value or b"").decode(errors="replace") for key, value in record.headers}
                    received.append(Received(body=record.value or b"", headers=headers, key=record.key))
                    idle_since = time.monotonic()
            return received
        finally:
            await consumer.stop()

    def count(self, topic: str, group: str = "") -> int:
        """Records `group` (by default `<topic>.workers`) has not committed, counted by reading them."""

        async def count() -> int:
            # A member of the group that never joins it: it only asks for the committed offsets.
            member = AIOKafkaConsumer(bootstrap_servers=self._servers, group_id=group or f"{topic}.workers")
            await member.start()
            try:
                if topic not in await member.topics():
                    raise LookupError(f"no topic {topic!r}")
                partitions = member.partitions_for_topic(topic) or set()
                committed = {tp: await member.committed(tp) for tp in (TopicPartition(topic, p) for p in partitions)}
            finally:
                await member.stop()
            start = {tp: offset for tp, offset in committed.items() if offset is not None}
            return len(await self._read(topic, start, until=None))

        return asyncio.run(count())

    def take(self, topic: str, expected: int, timeout: float = 15.0) -> list[Received]:
        """Read the topic from the beginning until `expected` records arrived or the deadline passed."""

        async def take() -> list[Received]:
            deadline = time.monotonic() + timeout
            while True:
                received = await self._read(topic, None, until=expected)
                if len(received) >= expected or time.monotonic() > deadline:
                    return received

        return asyncio.run(take())

    def delete(self, *topics: str) -> None:
        async def delete() -> None:
            async with self._admin() as admin:
                await admin.delete_topics(list(topics))

        asyncio.run(delete())
