"""Where Kafka's retries and delayed tasks wait: on the broker, in wait topics, never in a worker.

Every record of one wait topic waits as long (the tier in its name, from the record's
timestamp), so the record at a partition's head is always the first whose wait is over: the
consumer pauses that partition until then and nothing waits behind a longer wait. Tiers are 4 x
apart, from 250 ms to 18 h; a record carries its due time (`x-due-ms`), and a longer wait takes
several hops, each to the longest tier that fits what remains, then back to the task topic.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from .records import Partition, int_header, record_headers

if TYPE_CHECKING:
    from ...settings import Settings

WAIT_TIERS_MS = tuple(250 * 4**n for n in range(10))  # 250 ms ... 65,536 s
DUE_HEADER = "x-due-ms"  # epoch milliseconds at which the record is to be handled
RETRIES_HEADER = "x-retries"  # on a record back from a retry's wait: the retries it had
ON_TIME_MS = 10  # a wait this close to its end is over
Record = TypeVar("Record")  # a client's record


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def wait_topic(settings: Settings, tier_ms: int) -> str:
    return f"{settings.queue_name}.wait.{tier_ms}ms"


def wait_topics(settings: Settings) -> list[str]:
    return [wait_topic(settings, tier) for tier in WAIT_TIERS_MS]


def topics(settings: Settings) -> list[str]:
    """Every topic the service creates: the task topic, its dead letters and its wait topics."""
    return [settings.queue_name, settings.dead_letter_queue, *wait_topics(settings)]


def tier_of(settings: Settings, topic: str) -> int | None:
    """The wait of a wait topic's records, in ms; None for any other topic."""
    prefix = f"{settings.queue_name}.wait."
    if not topic.startswith(prefix) or not topic.endswith("ms"):
        return None
    tier = topic[len(prefix) : -2]
    return int(tier) if tier.isdigit() and int(tier) in WAIT_TIERS_MS else None


def next_stop(settings: Settings, due_ms: int, now: int) -> str:
    """Where a record due at `due_ms` goes now: the wait topic of the longest tier that fits
    what remains (the shortest, if none fits), or the task topic once the wait is over."""
    remaining = due_ms - now
    if remaining <= ON_TIME_MS:
        return settings.queue_name
    fitting = [tier for tier in WAIT_TIERS_MS if tier <= remaining]
    return wait_topic(settings, fitting[-1] if fitting else WAIT_TIERS_MS[0])


def due_of(headers: Iterable[tuple[str, bytes | None]]) -> int | None:
    """The due time a record carries; None where it carries none (or a mangled one)."""
    return int_header(headers, DUE_HEADER)


def retries_of(headers: Iterable[tuple[str, bytes | None]]) -> int:
    """How often this record was retried; a missing or mangled header counts as none."""
    return int_header(headers, RETRIES_HEADER) or 0


def waiting_headers(
    headers: Sequence[tuple[str, bytes | None]] | None, due_ms: int, retries: int | None = None
) -> list[tuple[str, bytes]]:
    """A record's headers for its wait: its own, with its due time and (for a retry) its retries."""
    replaced = {DUE_HEADER} if retries is None else {DUE_HEADER, RETRIES_HEADER}
    kept = [(key, value) for key, value in headers or () if value is not None and key not in replaced]
    added = [(DUE_HEADER, str(due_ms).encode())]
    if retries is not None:
        added.append((RETRIES_HEADER, str(retries).encode()))
    return kept + added


def send_to_wait(
    settings: Settings,
    headers: Sequence[tuple[str, bytes | None]] | None,
    delay_seconds: float,
    retries: int | None = None,
) -> tuple[str, list[tuple[str, bytes]]]:
    """Where a record that is to wait `delay_seconds` goes, and with which headers (see `waiting_headers`)."""
    now = now_ms()
    due = now + round(delay_seconds * 1000)
    return next_stop(settings, due, now), waiting_headers(headers, due, retries)


def destination(
    settings: Settings, headers: Mapping[str, str], delay_seconds: float
) -> tuple[str, list[tuple[str, bytes]]]:
    """Where a new task goes, with which headers: the task topic, or for a delay, its first wait topic."""
    if delay_seconds > 0:
        return send_to_wait(settings, record_headers(headers), delay_seconds)
    return settings.queue_name, record_headers(headers)


class Holds:
    """The wait-topic partitions paused until the wait of the record at their head is over."""

    def __init__(self) -> None:
        self._until: dict[Partition, int] = {}  # epoch ms

    def hold(self, partition: Partition, until_ms: int) -> None:
        self._until[partition] = until_ms

    def held(self, partition: Partition) -> bool:
        return partition in self._until

    def release(self, now: int) -> list[Partition]:
        """The partitions whose hold is over, no longer held."""
        over = [partition for partition, until in self._until.items() if until <= now + ON_TIME_MS]
        for partition in over:
            del self._until[partition]
        return over

    def seconds_to_next(self, now: int) -> float | None:
        """How long until the next hold is over; None when nothing is held."""
        return max(0.0, (min(self._until.values()) - now) / 1000) if self._until else None

    def revoked(self, partitions: Iterable[Partition]) -> None:
        for partition in partitions:
            self._until.pop(partition, None)

    def clear(self) -> None:
        self._until.clear()


@dataclass(frozen=True)
class Waiting:
    """A record fetched from a wait topic, as both clients' records tell it."""

    partition: Partition
    offset: int
    timestamp_ms: int
    tier_ms: int
    headers: Sequence[tuple[str, bytes | None]]


def pass_on(
    settings: Settings, fetched: Sequence[tuple[Waiting, Record]], holds: Holds, now: int
) -> tuple[list[tuple[Record, str]], list[Waiting]]:
    """Of records fetched from wait topics, in order: those whose wait is over, each with where it
    goes next, and the first of each partition still waiting, now held (its consumer pauses the
    partition and reads again from it once the hold is over). What follows a held one is left."""
    onward: list[tuple[Record, str]] = []
    held: list[Waiting] = []
    for waiting, record in fetched:
        if holds.held(waiting.partition):
            continue
        over_at = waiting.timestamp_ms + waiting.tier_ms
        if over_at > now + ON_TIME_MS:
            holds.hold(waiting.partition, over_at)
            held.append(waiting)
            continue
        due = due_of(waiting.headers)
        onward.append((record, settings.queue_name if due is None else next_stop(settings, due, now)))
    return onward, held
