"""The dead-letter tool's side of RabbitMQ with aio-pika (see `deadletters`), driven from the
command line's one event loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import AMQPError, ChannelNotFoundEntity

from ...deadletters import Blocking, DeadLetter, Progress
from ..base import BrokerUnavailable
from .asynchronous import ERRORS, PERSISTENT, open_channel
from .asynchronous import connect as connect_to_node
from .deadletters import letter, replayed_headers
from .topology import copied_properties

if TYPE_CHECKING:
    from ...settings import Settings


TOOL_ERRORS: tuple[type[BaseException], ...] = (AMQPError, OSError, *ERRORS)


def open_queue(settings: Settings) -> Blocking:
    return Blocking(lambda: connect(settings))


async def connect(settings: Settings) -> DeadLetterQueue:
    try:
        connection = await connect_to_node(settings, "deadletters")
    except TOOL_ERRORS as error:
        raise BrokerUnavailable(f"cannot reach RabbitMQ at {settings.broker_address}: {error!r}") from error
    try:
        channel = await open_channel(connection)
        queue = await channel.get_queue(settings.dead_letter_queue, ensure=True)  # a passive declare
    except ChannelNotFoundEntity as error:
        await connection.close()
        raise BrokerUnavailable(f"no queue {settings.dead_letter_queue!r}: has the service run yet?") from error
    except BaseException:
        await connection.close()
        raise
    return DeadLetterQueue(settings, connection, channel, queue)


class DeadLetterQueue:
    errors = TOOL_ERRORS

    def __init__(
        self, settings: Settings, connection: AbstractConnection, channel: AbstractChannel, queue: AbstractQueue
    ) -> None:
        self._settings = settings
        self.name = settings.dead_letter_queue
        self._connection = connection
        self._channel = channel
        self._queue = queue
        self._taken: list[AbstractIncomingMessage] = []  # unacknowledged, to give back

    async def count(self) -> int:
        declared = await self._channel.get_queue(self.name, ensure=True)
        return int(declared.declaration_result.message_count or 0)

    async def peek(self, limit: int | None) -> list[DeadLetter]:
        letters = await self._take(limit)
        await self._give_back()
        return letters

    async def replay(self, ids: set[str] | None, progress: Progress) -> int:
        return await self._settle(ids, self._publish_back, progress)

    async def purge(self, ids: set[str] | None, progress: Progress) -> int:
        if ids is None:
            purged = await self._queue.purge()
            return int(purged.message_count or 0)
        return await self._settle(ids, None, progress)

    async def close(self) -> None:
        await self._connection.close()  # what is still unacknowledged goes back to the queue

    async def _settle(
        self, ids: set[str] | None, before_ack: Callable[[DeadLetter], Awaitable[None]] | None, progress: Progress
    ) -> int:
        """`before_ack` each chosen one, then acknowledge it (it leaves the queue); give back the rest."""
        settled = 0
        for dead in await self._take(None):
            if ids is None or dead.id in ids:
                if before_ack is not None:
                    await before_ack(dead)
                message: AbstractIncomingMessage = dead.handle
                await message.ack()
                self._taken.remove(message)
                settled += 1
                progress(settled)
        await self._give_back()
        return settled

    async def _publish_back(self, dead: DeadLetter) -> None:
        """Returns once RabbitMQ confirmed the message on the task queue (confirms are on)."""
        message: AbstractIncomingMessage = dead.handle
        properties = copied_properties(message, replayed_headers(message.headers))
        copy = aio_pika.Message(message.body, delivery_mode=PERSISTENT, **properties)
        await self._channel.default_exchange.publish(
            copy, routing_key=self._settings.queue_name, mandatory=True, timeout=self._settings.publish_timeout_seconds
        )

    async def _take(self, limit: int | None) -> list[DeadLetter]:
        """Up to `limit` (None: all) messages, unacknowledged, in their order."""
        taken: list[DeadLetter] = []
        while limit is None or len(taken) < limit:
            message = await self._queue.get(no_ack=False, fail=False)
            if message is None:
                break
            self._taken.append(message)
            taken.append(letter(message.body, message.headers, message.message_id, message))
        return taken

    async def _give_back(self) -> None:
        """Every message taken and not acknowledged goes back to its place in the queue."""
        for message in self._taken:
            await message.nack(requeue=True)
        self._taken.clear()
