"""The dead-letter tool's side of Redis, for both consumer styles (a command-line tool blocks
anyway): the dead letters are the entries of the stream `<QUEUE_NAME>.dlq`. A replay adds the
body to the task stream and deletes the dead letter in one MULTI/EXEC: both or neither."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

import redis

from ...deadletters import DeadLetter, Progress, described
from ..base import BrokerUnavailable
from .connections import blocking_client
from .streams import BODY_FIELD, Entry

if TYPE_CHECKING:
    from ...settings import Settings

PAGE = 1000  # entries read per XRANGE


def open_dead_letters(settings: Settings) -> DeadLetterQueue:
    return DeadLetterQueue(settings)


class DeadLetterQueue:
    errors: tuple[type[BaseException], ...] = (redis.RedisError,)

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.name = settings.dead_letter_queue
        self._client = blocking_client(settings, "deadletters")
        try:
            self._client.ping()
        except redis.RedisError as error:
            self._client.close()
            raise BrokerUnavailable(f"cannot reach Redis at {settings.broker_address}: {error}") from error

    def count(self) -> int:
        return int(self._client.xlen(self.name))

    def peek(self, limit: int | None) -> list[DeadLetter]:
        letters = []
        for entry in self._entries():
            letters.append(letter(entry))
            if limit is not None and len(letters) >= limit:
                break
        return letters

    def replay(self, ids: set[str] | None, progress: Progress) -> int:
        replayed = 0
        for dead in self.peek(None):
            if ids is None or dead.id in ids:
                entry_id, fields = dead.handle
                pipeline = self._client.pipeline(transaction=True)
                pipeline.xadd(self._settings.queue_name, {BODY_FIELD: fields.get(BODY_FIELD, b"")})
                pipeline.xdel(self.name, entry_id)
                pipeline.execute()
                replayed += 1
                progress(replayed)
        return replayed

    def purge(self, ids: set[str] | None, progress: Progress) -> int:
        doomed = [dead.handle[0] for dead in self.peek(None) if ids is None or dead.id in ids]
        for start in range(0, len(doomed), PAGE):
            self._client.xdel(self.name, *doomed[start : start + PAGE])
            progress(min(start + PAGE, len(doomed)))
        return len(doomed)

    def close(self) -> None:
        self._client.close()

    def _entries(self) -> Iterator[Entry]:
        """Every entry, oldest first, a page at a time."""
        start = "-"
        while True:
            page = cast("list[Entry]", self._client.xrange(self.name, start, "+", count=PAGE))
            yield from page
            if len(page) < PAGE:
                return
            start = "(" + page[-1][0].decode()


def letter(entry: Entry) -> DeadLetter:
    entry_id, fields = entry[0], entry[1] or {}
    attempts = fields.get(b"attempts") or fields.get(b"deliveries") or b"0"
    when = int(entry_id.split(b"-")[0]) / 1000  # an entry's id starts with when it was added, in ms
    reason = fields.get(b"reason", b"").decode(errors="replace")
    body = fields.get(BODY_FIELD, b"")
    return described(body, entry_id.decode(), reason, int(attempts), when, (entry_id, fields))
