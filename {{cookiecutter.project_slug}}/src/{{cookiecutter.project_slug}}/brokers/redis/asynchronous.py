"""Redis Streams with redis.asyncio in the event loop: the publisher awaits XADD; the consumer's
transport speaks streams.py's conversations, awaiting each round trip. A fetch is never
cancelled in the middle of a command: the runner checks for a stop between short blocking reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError, ResponseError

from ...messages import TaskMessage, encode
from ..base import BrokerUnavailable, Delivery
from . import streams
from .connections import primary_options, sentinel_options
from .settings import sentinel_target
from .streams import CLIENT_LOGGERS

if TYPE_CHECKING:
    from ...settings import Settings

__all__ = ["CLIENT_LOGGERS", "BrokerPublisher", "BrokerTransport"]


def make_client(settings: Settings, name: str) -> redis.Redis:
    """A client for BROKER_URL: direct, or to the primary Sentinel names (asked again on each reconnect)."""
    options = {**streams.client_options(name), "retry": Retry(streams.retry_backoff(), 2)}
    target = sentinel_target(settings.broker_url)
    if target is None:
        return redis.Redis.from_url(settings.broker_url, **options)
    sentinel = cast("Any", Sentinel)(list(target.sentinels), sentinel_kwargs=sentinel_options(target))  # untyped
    return cast("redis.Redis", sentinel.master_for(target.master, **options, **primary_options(target)))


async def drive(client: redis.Redis, steps: streams.Steps[Any]) -> Any:
    """Carry a conversation of streams.py to Redis, one awaited round trip per batch."""
    step = streams.advance(steps, None)
    while isinstance(step, streams.Batch):
        step = streams.advance(
            steps, await streams.pipeline_of(client, step).execute(raise_on_error=step.raise_on_error)
        )
    return step.value


class BrokerPublisher:
    """XADD; 202 only after Redis replied."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client = make_client(settings, "publisher")

    async def start(self) -> None:
        """Nothing to do: connections are made on first use, and the consumers declare the group."""

    async def publish(self, message: TaskMessage, headers: Mapping[str, str], delay_seconds: float = 0.0) -> None:
        commands = streams.publish_commands(self._settings, encode(message), headers, message.id, delay_seconds)
        streams.judge(self._settings, await self._send(commands))

    async def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The commands on one connection of the pool, and their replies (an error reply in its place).
        Not the client's own retries: a command resent after its reply was lost may have been applied
        twice, and a refusal must be told from a lost reply (503 against 504)."""
        pool = self._client.connection_pool
        try:
            connection: Any = await cast("Any", pool).get_connection()  # untyped
        except RedisError as error:
            raise streams.unsent(self._settings, error) from error
        replies: list[Any] = []
        clean = False
        try:
            for sent, command in enumerate(commands):
                try:
                    await connection.send_command(*command)
                except RedisError as error:
                    raise (streams.unanswered if sent else streams.unsent)(self._settings, error) from error
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as error:
                    replies.append(error)
                except RedisError as error:
                    raise streams.read_failure(self._settings, error, first=not replies) from error
            clean = True
        finally:
            if not clean:  # an error, or the deadline cancelled us: a reply may still be on its way
                await connection.disconnect()
            await pool.release(connection)
        return replies

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except RedisError as error:
            raise BrokerUnavailable(f"Redis at {self._settings.broker_address} failed: {error!r}") from error

    async def close(self) -> None:
        await self._client.aclose()


class BrokerTransport(streams.StreamTransport):
    """The consumer's side: one named consumer of the group, driven by the runner's task."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, capacity=settings.prefetch_count)
        self._client = make_client(settings, f"consumer:{settings.consumer_name}")

    async def open(self) -> str:
        await drive(self._client, self._stream.declare())
        return self._stream.describe()

    async def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        deliveries: list[Delivery] = await drive(self._client, self._stream.fetch(max_count, wait_seconds))
        return deliveries

    async def unsubscribe(self) -> int:
        self._leaving = True
        return 0  # nothing is delivered before it is read

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        await drive(self._client, self._stream.ack(list(deliveries)))

    async def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        await drive(self._client, self._stream.retry(delivery, delay_seconds))

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        await drive(self._client, self._stream.dead_letter(delivery, reason))

    async def close(self) -> None:
        """Drop the connections (the next session makes new ones); what is in hand stays pending."""
        if self._leaving:
            with contextlib.suppress(RedisError):
                await drive(self._client, self._stream.leave())
        await self._client.aclose()
