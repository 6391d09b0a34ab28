"""The dead-letter tool's side of Kafka, what both styles share. A topic cannot lose one record,
so the tool keeps its place in a consumer group of its own, `<QUEUE_NAME>.deadletters`: the dead
letters are the records of `<QUEUE_NAME>.dlq` after the offsets it committed. To replay or purge
some, it goes through a partition in order up to the last one chosen: a chosen record is produced
to the task topic (replay) or left behind (purge), any other is produced again to the end of the
dead-letter topic (kept), and the offset past each is committed once the broker acknowledged what
it produced: a kill in between repeats one record at most."""

from __future__ import annotations
{%- set style = "asynchronous" if cookiecutter.consumer == "async" else "threaded" %}

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...deadletters import DeadLetter, described
from .records import REASON_HEADER, int_header
from .waits import DUE_HEADER, RETRIES_HEADER

if TYPE_CHECKING:
    from ...deadletters import DeadLetterQueue
    from ...settings import Settings

DEAD_LETTERED_AT_HEADER = "x-dead-lettered-at"  # on a kept copy: when the original was dead-lettered (ms)
# What a dead letter carries that a replayed task must not: its retries, why and where it died.
DEAD_LETTER_ONLY = {
    REASON_HEADER,
    DEAD_LETTERED_AT_HEADER,
    RETRIES_HEADER,
    DUE_HEADER,
    "x-original-partition",
    "x-original-offset",
    "x-attempts",
}
Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Record:
    """A dead letter as both clients' records tell it."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: Headers


def open_dead_letters(settings: Settings) -> DeadLetterQueue:
    from .{{ style }}_deadletters import open_queue  # the client of this project's style

    return open_queue(settings)


def tool_group(settings: Settings) -> str:
    return f"{settings.queue_name}.deadletters"


def letter(record: Record) -> DeadLetter:
    when_ms = int_header(record.headers, DEAD_LETTERED_AT_HEADER) or record.timestamp_ms
    reason = dict(record.headers).get(REASON_HEADER, b"").decode(errors="replace")
    attempts = int_header(record.headers, "x-attempts") or 0
    fallback = f"{record.partition}-{record.offset}"  # partition-offset, for a record that is not a task
    return described(record.value, fallback, reason, attempts, when_ms / 1000, record)


def oldest_first(live: Mapping[int, Sequence[Record]], limit: int | None) -> list[DeadLetter]:
    """The first `limit` (None: all) of every partition's records, by when they were written."""
    records = sorted(
        (record for records in live.values() for record in records),
        key=lambda record: (record.timestamp_ms, record.partition, record.offset),
    )
    return [letter(record) for record in records[:limit]]


def replayed_headers(headers: Sequence[tuple[str, bytes]]) -> Headers:
    """A dead letter's headers, as a new task's: its retries reset."""
    return [(key, value) for key, value in headers if key not in DEAD_LETTER_ONLY]


def kept_headers(record: Record) -> Headers:
    """A kept dead letter's, copied to the end of its topic: when the original was dead-lettered stays."""
    if any(key == DEAD_LETTERED_AT_HEADER for key, _ in record.headers):
        return list(record.headers)
    return [*record.headers, (DEAD_LETTERED_AT_HEADER, str(record.timestamp_ms).encode())]


@dataclass(frozen=True)
class Step:
    """Produce `record` to `topic` (None: nowhere) with `headers`, then commit past it."""

    record: Record
    topic: str | None
    headers: Headers


def steps(settings: Settings, live: Sequence[Record], ids: set[str] | None, replay: bool) -> list[Step]:
    """What to do, record after record of one partition's dead letters; nothing after the last
    one chosen is touched."""
    chosen = [ids is None or letter(record).id in ids for record in live]
    if True not in chosen:
        return []
    last = len(chosen) - 1 - chosen[::-1].index(True)
    planned = []
    for record, picked in zip(live[: last + 1], chosen[: last + 1], strict=True):
        if not picked:
            planned.append(Step(record, settings.dead_letter_queue, kept_headers(record)))
        elif replay:
            planned.append(Step(record, settings.queue_name, replayed_headers(record.headers)))
        else:
            planned.append(Step(record, None, []))
    return planned
