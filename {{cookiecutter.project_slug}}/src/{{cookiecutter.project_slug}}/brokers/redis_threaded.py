"""Redis Streams with the synchronous redis-py client. A background thread reads the consumer
group; handlers run in a thread pool and acknowledge their own messages (redis-py's connection
pool is thread-safe). Failed messages stay pending and come back after CLAIM_IDLE_SECONDS.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, cast

import redis
from redis.retry import Retry

from ..messages import TaskMessage, encode
from ..processing import Outcome, Processor
from ..settings import Settings
from .base import Backoff, BrokerUnavailable
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
    """XADD from a small thread pool; 202 only after Redis replied."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client = make_client(settings, "publisher")
        self._executor = ThreadPoolExecutor(16, thread_name_prefix="redis-publisher")

    async def start(self) -> None:
        """Nothing to do: connections are made on first use, and the consumers declare the group."""

    async def _call(self, function: functools.partial[Any]) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function)
        except redis.RedisError as error:
            raise BrokerUnavailable(f"Redis at {self._settings.broker_address} failed: {error!r}") from error

    async def publish(self, message: TaskMessage, headers: Mapping[str, str]) -> None:
        fields = publish_fields(encode(message), headers)
        await self._call(functools.partial(self._client.xadd, self._settings.queue_name, fields))

    async def ping(self) -> None:
        await self._call(functools.partial(self._client.ping))

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()


class BrokerConsumer:
    """Reads the stream as one named consumer of the group; at most `capacity` messages in hand."""

    def __init__(self, settings: Settings, processor: Processor) -> None:
        self._settings = settings
        self._processor = processor
        self._stream = settings.queue_name
        self._group = settings.consumer_group
        self._name = settings.consumer_name
        self._client = make_client(settings, f"consumer:{self._name}")
        # No more in hand than threads to run them: what waits unstarted would stay pending on shutdown.
        self._capacity = min(settings.prefetch_count, settings.handler_threads)
        self._pool = ThreadPoolExecutor(settings.handler_threads, thread_name_prefix="handler")
        self._in_hand: dict[bytes, Future[None]] = {}
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._consuming = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-consumer", daemon=True)

    async def start(self) -> None:
        self._thread.start()

    def is_running(self) -> bool:
        return self._consuming.is_set() and self._thread.is_alive()

    async def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, self._settings.shutdown_timeout_seconds + 5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                self._declare()
                self._consuming.set()
                backoff.reset()
                logger.info("consuming %r as %r in group %r", self._stream, self._name, self._group)
                self._consume()
            except redis.RedisError as error:
                logger.warning("consumer lost Redis at %s: %r", self._settings.broker_address, error)
            except Exception:
                # Never let the consumer's thread die: log the bug and reconnect.
                logger.exception("consumer failed unexpectedly; reconnecting")
            finally:
                self._consuming.clear()
            self._stopping.wait(backoff.next_delay())
        self._drain()

    def _declare(self) -> None:
        """Idempotent: the stream and the group; a new group starts at the stream's first entry."""
        try:
            self._client.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if not group_exists_error(error):
                raise

    def _consume(self) -> None:
        own_pending: bytes | None = b"0"  # after a restart or reconnect, first finish our own pending list
        next_claim = 0.0
        while not self._stopping.is_set():
            free = self._wait_for_capacity()
            if free == 0:
                continue
            if time.monotonic() >= next_claim:
                free -= self._reclaim(free)
                next_claim = time.monotonic() + claim_interval(self._settings)
                if free <= 0:
                    continue
            if own_pending is not None:
                entries = self._read(own_pending, free, block=None)
                own_pending = entries[-1][0] if entries else None
                self._dispatch(entries, self._deliveries(entries))
            else:
                entries = self._read(b">", free, block=BLOCK_MILLISECONDS)
                self._dispatch(entries, dict.fromkeys((entry_id for entry_id, _ in entries), 1))

    def _read(self, start: bytes, count: int, block: int | None) -> list[Entry]:
        return entries_of(
            self._client.xreadgroup(self._group, self._name, {self._stream: start}, count=count, block=block)
        )

    def _reclaim(self, free: int) -> int:
        """Keep our own long handlers from looking abandoned; take over what others abandoned."""
        with self._changed:
            in_hand = list(self._in_hand)
        if in_hand:
            # JUSTID: resets the idle time without counting a delivery.
            self._client.xclaim(self._stream, self._group, self._name, 0, cast(Any, in_hand), justid=True)
        idle_ms = int(self._settings.claim_idle_seconds * 1000)
        _, claimed, _ = self._client.xautoclaim(self._stream, self._group, self._name, idle_ms, "0-0", count=free)
        entries = [(entry_id, fields) for entry_id, fields in claimed if entry_id not in self._in_hand]
        if entries:
            logger.info("reclaimed %d message(s) idle over %s s", len(entries), self._settings.claim_idle_seconds)
        self._dispatch(entries, self._deliveries(entries))
        return len(entries)

    def _deliveries(self, entries: list[Entry]) -> dict[bytes, int]:
        """How often each entry has been delivered, from the group's pending list."""
        if not entries:
            return {}
        pipeline = self._client.pipeline(transaction=False)
        for entry_id, _ in entries:
            pipeline.xpending_range(self._stream, self._group, min=entry_id, max=entry_id, count=1)
        counts = {}
        for (entry_id, _), pending in zip(entries, pipeline.execute(), strict=True):
            counts[entry_id] = int(pending[0]["times_delivered"]) if pending else 1
        return counts

    def _wait_for_capacity(self) -> int:
        with self._changed:
            self._changed.wait_for(
                lambda: len(self._in_hand) < self._capacity or self._stopping.is_set(), BLOCK_MILLISECONDS / 1000
            )
            return max(0, self._capacity - len(self._in_hand))

    def _dispatch(self, entries: list[Entry], deliveries: dict[bytes, int]) -> None:
        for entry_id, fields in entries:
            with self._changed:
                future = self._pool.submit(self._handle, entry_id, fields or {}, deliveries.get(entry_id, 1))
                self._in_hand[entry_id] = future
            future.add_done_callback(functools.partial(self._release, entry_id))

    def _release(self, entry_id: bytes, _: Future[None]) -> None:
        with self._changed:
            self._in_hand.pop(entry_id, None)
            self._changed.notify_all()

    def _handle(self, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int) -> None:
        """Runs in a handler thread: process, then acknowledge or dead-letter. A retry is left
        pending; it is delivered again once it has been idle for CLAIM_IDLE_SECONDS."""
        verdict = self._processor.process(fields.get(BODY_FIELD, b""), deliveries - 1, headers_of(fields))
        try:
            if verdict.outcome is Outcome.SUCCEEDED:
                self._client.xack(self._stream, self._group, entry_id)
            elif verdict.outcome is Outcome.DEAD_LETTERED:
                transaction = self._client.pipeline(transaction=True)
                dead_letter = dead_letter_fields(fields, entry_id, verdict.reason, deliveries)
                transaction.xadd(self._settings.dead_letter_queue, dead_letter)
                transaction.xack(self._stream, self._group, entry_id)
                transaction.execute()
        except redis.RedisError as error:
            logger.warning("could not settle message %s; it will be delivered again: %r", entry_id, error)

    def _drain(self) -> None:
        """Take nothing new; finish what runs. What is interrupted stays pending and is reclaimed."""
        with self._changed:
            in_hand = list(self._in_hand.values())
        _, interrupted = wait(in_hand, timeout=self._settings.shutdown_timeout_seconds)
        logger.info("consumer stopped: %d message(s) interrupted", len(interrupted))
