"""Redis Streams with redis.asyncio in the event loop. One reader task reads the consumer group
and starts a task per message; each task acknowledges its own message. The reader stops on a
flag between short blocking reads: no task is cancelled in the middle of a Redis command.
Failed messages stay pending and come back after CLAIM_IDLE_SECONDS.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping
from typing import Any, cast

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.exceptions import RedisError, ResponseError

from ..messages import TaskMessage, encode
from ..processing import Outcome, Processor
from ..settings import Settings
from .base import Backoff, BrokerUnavailable, sleep_unless_stopping
from .redis_streams import (
    BLOCK_MILLISECONDS,
    BODY_FIELD,
    CLIENT_LOGGERS,
    Entry,
    claim_interval,
    client_options,
    dead_letter_fields,
    entries_of,
    group_exists_error,
    headers_of,
    publish_fields,
    retry_backoff,
)

__all__ = ["CLIENT_LOGGERS", "BrokerConsumer", "BrokerPublisher"]

logger = logging.getLogger(__name__)


def make_client(settings: Settings, name: str) -> redis.Redis:
    return redis.Redis.from_url(settings.broker_url, retry=Retry(retry_backoff(), 2), **client_options(name))


class BrokerPublisher:
    """XADD; 202 only after Redis replied."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client = make_client(settings, "publisher")

    async def start(self) -> None:
        """Nothing to do: connections are made on first use, and the consumers declare the group."""

    async def publish(self, message: TaskMessage, headers: Mapping[str, str]) -> None:
        fields = publish_fields(encode(message), headers)
        try:
            await self._client.xadd(self._settings.queue_name, fields)
        except RedisError as error:
            raise BrokerUnavailable(f"Redis at {self._settings.broker_address} failed: {error!r}") from error

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except RedisError as error:
            raise BrokerUnavailable(f"Redis at {self._settings.broker_address} failed: {error!r}") from error

    async def close(self) -> None:
        await self._client.aclose()


class BrokerConsumer:
    """Reads the stream as one named consumer of the group; at most PREFETCH_COUNT messages in hand."""

    def __init__(self, settings: Settings, processor: Processor) -> None:
        self._settings = settings
        self._processor = processor
        self._stream = settings.queue_name
        self._group = settings.consumer_group
        self._name = settings.consumer_name
        self._client = make_client(settings, f"consumer:{self._name}")
        self._capacity = settings.prefetch_count
        self._in_hand: dict[bytes, asyncio.Task[None]] = {}
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._consuming = False
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._run(), name="redis-consumer")

    def is_running(self) -> bool:
        return self._consuming and self._reader is not None and not self._reader.done()

    async def stop(self) -> None:
        self._stopping.set()
        if self._reader is not None:
            await self._reader  # returns within one blocking read
        if self._in_hand:
            in_hand = set(self._in_hand.values())
            _, interrupted = await asyncio.wait(in_hand, timeout=self._settings.shutdown_timeout_seconds)
            for task in interrupted:
                task.cancel()  # not acknowledged: it stays pending and is reclaimed
            logger.info("consumer stopped: %d message(s) interrupted", len(interrupted))
        await self._client.aclose()

    async def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                await self._declare()
                self._consuming = True
                backoff.reset()
                logger.info("consuming %r as %r in group %r", self._stream, self._name, self._group)
                await self._consume()
            except RedisError as error:
                logger.warning("consumer lost Redis at %s: %r", self._settings.broker_address, error)
            except Exception:
                # Never let the reader die: log the bug and reconnect.
                logger.exception("consumer failed unexpectedly; reconnecting")
            finally:
                self._consuming = False
            await sleep_unless_stopping(self._stopping, backoff.next_delay())

    async def _declare(self) -> None:
        """Idempotent: the stream and the group; a new group starts at the stream's first entry."""
        try:
            await self._client.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except ResponseError as error:
            if not group_exists_error(error):
                raise

    async def _consume(self) -> None:
        own_pending: bytes | None = b"0"  # after a restart or reconnect, first finish our own pending list
        next_claim = 0.0
        while not self._stopping.is_set():
            free = await self._wait_for_capacity()
            if free == 0:
                continue
            if time.monotonic() >= next_claim:
                free -= await self._reclaim(free)
                next_claim = time.monotonic() + claim_interval(self._settings)
                if free <= 0:
                    continue
            if own_pending is not None:
                entries = await self._read(own_pending, free, block=None)
                own_pending = entries[-1][0] if entries else None
                self._dispatch(entries, await self._deliveries(entries))
            else:
                entries = await self._read(b">", free, block=BLOCK_MILLISECONDS)
                self._dispatch(entries, dict.fromkeys((entry_id for entry_id, _ in entries), 1))

    async def _read(self, start: bytes, count: int, block: int | None) -> list[Entry]:
        return entries_of(
            await self._client.xreadgroup(self._group, self._name, {self._stream: start}, count=count, block=block)
        )

    async def _reclaim(self, free: int) -> int:
        """Keep our own long handlers from looking abandoned; take over what others abandoned."""
        if self._in_hand:
            # JUSTID: resets the idle time without counting a delivery.
            await self._client.xclaim(
                self._stream, self._group, self._name, 0, cast(Any, list(self._in_hand)), justid=True
            )
        idle_ms = int(self._settings.claim_idle_seconds * 1000)
        _, claimed, _ = await self._client.xautoclaim(self._stream, self._group, self._name, idle_ms, "0-0", count=free)
        entries = [(entry_id, fields) for entry_id, fields in claimed if entry_id not in self._in_hand]
        if entries:
            logger.info("reclaimed %d message(s) idle over %s s", len(entries), self._settings.claim_idle_seconds)
        self._dispatch(entries, await self._deliveries(entries))
        return len(entries)

    async def _deliveries(self, entries: list[Entry]) -> dict[bytes, int]:
        """How often each entry has been delivered, from the group's pending list."""
        if not entries:
            return {}
        pipeline = self._client.pipeline(transaction=False)
        for entry_id, _ in entries:
            pipeline.xpending_range(self._stream, self._group, min=entry_id, max=entry_id, count=1)
        counts = {}
        for (entry_id, _), pending in zip(entries, await pipeline.execute(), strict=True):
            counts[entry_id] = int(pending[0]["times_delivered"]) if pending else 1
        return counts

    async def _wait_for_capacity(self) -> int:
        if len(self._in_hand) >= self._capacity:
            self._slot_freed.clear()
            await sleep_unless_stopping(self._slot_freed, BLOCK_MILLISECONDS / 1000)
        return max(0, self._capacity - len(self._in_hand))

    def _dispatch(self, entries: list[Entry], deliveries: dict[bytes, int]) -> None:
        for entry_id, fields in entries:
            task = asyncio.create_task(self._handle(entry_id, fields or {}, deliveries.get(entry_id, 1)))
            self._in_hand[entry_id] = task
            task.add_done_callback(functools.partial(self._release, entry_id))

    def _release(self, entry_id: bytes, _: asyncio.Task[None]) -> None:
        self._in_hand.pop(entry_id, None)
        self._slot_freed.set()

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int) -> None:
        """Process, then acknowledge or dead-letter. A retry is left pending; it is delivered
        again once it has been idle for CLAIM_IDLE_SECONDS."""
        verdict = await self._processor.process(fields.get(BODY_FIELD, b""), deliveries - 1, headers_of(fields))
        try:
            if verdict.outcome is Outcome.SUCCEEDED:
                await self._client.xack(self._stream, self._group, entry_id)
            elif verdict.outcome is Outcome.DEAD_LETTERED:
                transaction = self._client.pipeline(transaction=True)
                dead_letter = dead_letter_fields(fields, entry_id, verdict.reason, deliveries)
                transaction.xadd(self._settings.dead_letter_queue, dead_letter)
                transaction.xack(self._stream, self._group, entry_id)
                await transaction.execute()
        except RedisError as error:
            logger.warning("could not settle message %s; it will be delivered again: %r", entry_id, error)
