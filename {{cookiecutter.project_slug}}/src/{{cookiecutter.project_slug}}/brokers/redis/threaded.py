"""Redis Streams with the synchronous redis-py client: the publisher sends XADD from a small
thread pool; the consumer's transport speaks streams.py's conversations from the runner's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import ResponseError

from ...messages import TaskMessage, encode
from ..base import BrokerUnavailable, Delivery
from . import streams
from .connections import blocking_client
from .streams import CLIENT_LOGGERS

if TYPE_CHECKING:
    from ...settings import Settings

__all__ = ["CLIENT_LOGGERS", "BrokerPublisher", "BrokerTransport"]


def drive(client: redis.Redis, steps: streams.Steps[Any]) -> Any:
    """Carry a conversation of streams.py to Redis, one blocking round trip per batch."""
    step = streams.advance(steps, None)
    while isinstance(step, streams.Batch):
        step = streams.advance(steps, streams.pipeline_of(client, step).execute(raise_on_error=step.raise_on_error))
    return step.value


class BrokerPublisher:
    """XADD from a small thread pool; 202 only after Redis replied."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client = blocking_client(settings, "publisher")
        self._executor = ThreadPoolExecutor(16, thread_name_prefix="broker-publisher")

    async def start(self) -> None:
        """Nothing to do: connections are made on first use, and the consumers declare the group."""

    async def _call(self, function: functools.partial[Any]) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function)
        except redis.RedisError as error:
            raise BrokerUnavailable(f"Redis at {self._settings.broker_address} failed: {error!r}") from error

    async def publish(self, message: TaskMessage, headers: Mapping[str, str], delay_seconds: float = 0.0) -> None:
        commands = streams.publish_commands(self._settings, encode(message), headers, message.id, delay_seconds)
        replies = await self._call(functools.partial(self._send, commands))
        streams.judge(self._settings, replies)

    def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The commands on one connection of the pool, and their replies (an error reply in its place).
        Not the client's own retries: a command resent after its reply was lost may have been applied
        twice, and a refusal must be told from a lost reply (503 against 504)."""
        pool = self._client.connection_pool
        try:
            connection: Any = pool.get_connection()  # its methods are untyped
        except redis.RedisError as error:
            raise streams.unsent(self._settings, error) from error
        replies: list[Any] = []
        clean = False
        try:
            for sent, command in enumerate(commands):
                try:
                    connection.send_command(*command)
                except redis.RedisError as error:
                    raise (streams.unanswered if sent else streams.unsent)(self._settings, error) from error
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except ResponseError as error:
                    replies.append(error)
                except redis.RedisError as error:
                    raise streams.read_failure(self._settings, error, first=not replies) from error
            clean = True
        finally:
            if not clean:
                connection.disconnect()  # a reply may still be on its way: nobody else may read it
            pool.release(connection)
        return replies

    async def ping(self) -> None:
        await self._call(functools.partial(self._client.ping))

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()


class BrokerTransport(streams.StreamTransport):
    """The consumer's side: one named consumer of the group, driven by the runner's thread. Its
    acknowledgements ride on the next round trip, the read that follows them (or `pump`, at once,
    when there is no room to read): one round trip, not two, for each batch."""

    handlers_may_hold_thread = True  # Redis has no heartbeat: nothing waits on the consumer's thread

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, capacity=settings.prefetch_count)
        self._client = blocking_client(settings, f"consumer:{settings.consumer_name}")

    def open(self) -> str:
        drive(self._client, self._stream.declare())
        return self._stream.describe()

    def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        deliveries: list[Delivery] = drive(self._client, self._stream.fetch(max_count, wait_seconds))
        return deliveries

    def pump(self) -> None:
        """Send the acknowledgements that no read carried (redis-py has no background I/O)."""
        drive(self._client, self._stream.flush())

    def unsubscribe(self) -> int:
        self._leaving = True
        return 0  # nothing is delivered before it is read

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._stream.ack_later(list(deliveries))

    def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        drive(self._client, self._stream.retry(delivery, delay_seconds))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        drive(self._client, self._stream.dead_letter(delivery, reason))

    def close(self) -> None:
        """Drop the connections (the next session makes new ones); what is in hand stays pending."""
        with contextlib.suppress(redis.RedisError):
            drive(self._client, self._stream.leave() if self._leaving else self._stream.flush())
        self._client.close()
