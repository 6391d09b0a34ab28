"""The dead-letter tool's side of RabbitMQ with pika's BlockingConnection (see `deadletters`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pika import BasicProperties, BlockingConnection
from pika.exceptions import ChannelClosedByBroker

from ...deadletters import DeadLetter, Progress
from ..base import BrokerUnavailable
from .deadletters import letter, replayed_headers
from .threaded import ERRORS, PERSISTENT, connection_parameters
from .topology import copied_properties

if TYPE_CHECKING:
    from ...settings import Settings

NOT_FOUND = 404


def open_queue(settings: Settings) -> DeadLetterQueue:
    try:
        return DeadLetterQueue(settings)
    except ChannelClosedByBroker as error:
        if error.reply_code == NOT_FOUND:
            raise BrokerUnavailable(f"no queue {settings.dead_letter_queue!r}: has the service run yet?") from error
        raise BrokerUnavailable(f"RabbitMQ at {settings.broker_address} refused: {error}") from error
    except ERRORS as error:
        raise BrokerUnavailable(f"cannot reach RabbitMQ at {settings.broker_address}: {error!r}") from error


class DeadLetterQueue:
    errors = ERRORS

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.name = settings.dead_letter_queue
        self._connection = BlockingConnection(connection_parameters(settings, "deadletters"))
        try:
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
            self.count()  # a passive declare: the queue is there
        except BaseException:
            self._connection.close()
            raise

    def count(self) -> int:
        return int(self._channel.queue_declare(self.name, passive=True).method.message_count)

    def peek(self, limit: int | None) -> list[DeadLetter]:
        letters = self._take(limit)
        self._give_back()
        return letters

    def replay(self, ids: set[str] | None, progress: Progress) -> int:
        return self._settle(ids, self._publish_back, progress)

    def purge(self, ids: set[str] | None, progress: Progress) -> int:
        if ids is None:
            return int(self._channel.queue_purge(self.name).method.message_count)
        return self._settle(ids, lambda _: None, progress)

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()  # what is still unacknowledged goes back to the queue

    def _settle(self, ids: set[str] | None, before_ack: Callable[[DeadLetter], None], progress: Progress) -> int:
        """`before_ack` each chosen one, then acknowledge it (it leaves the queue); give back the rest."""
        settled = 0
        for dead in self._take(None):
            if ids is None or dead.id in ids:
                before_ack(dead)
                self._channel.basic_ack(dead.handle[0])
                settled += 1
                progress(settled)
        self._give_back()
        return settled

    def _publish_back(self, dead: DeadLetter) -> None:
        """Raises unless RabbitMQ confirmed the message on the task queue (confirms are on)."""
        _, properties, body = dead.handle
        headers = replayed_headers(properties.headers)
        copied = BasicProperties(delivery_mode=PERSISTENT, **copied_properties(properties, headers))
        self._channel.basic_publish("", self._settings.queue_name, body, copied, mandatory=True)

    def _take(self, limit: int | None) -> list[DeadLetter]:
        """Up to `limit` (None: all) messages, unacknowledged, in their order."""
        taken: list[DeadLetter] = []
        while limit is None or len(taken) < limit:
            method, properties, body = self._channel.basic_get(self.name, auto_ack=False)
            if method is None:
                break
            handle: tuple[Any, ...] = (method.delivery_tag, properties, body)
            taken.append(letter(body, properties.headers, properties.message_id, handle))
        return taken

    def _give_back(self) -> None:
        """Every message taken and not acknowledged goes back to its place in the queue."""
        self._channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
