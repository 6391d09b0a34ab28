"""What both Kafka styles share: the consumer group, record headers, the dead-letter record's
headers, and the bookkeeping of which offsets may be committed."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, cast

from ..base import Delivery

if TYPE_CHECKING:
    from ...settings import Settings

REASON_HEADER = "x-dead-letter-reason"
Headers = list[tuple[str, bytes]]
Partition = tuple[str, int]  # (topic, partition): a delivery's lane


def partition_of(delivery: Delivery) -> Partition:
    """A Kafka delivery's lane is its partition."""
    return cast("Partition", delivery.lane)


def fair_share(max_count: int, partitions: int) -> int:
    """How many of a fetch's `max_count` records one of `partitions` partitions may take first."""
    return max(1, -(-max_count // max(1, partitions)))


def group_id(settings: Settings) -> str:
    return settings.consumer_group or f"{settings.queue_name}.workers"


def assignment(settings: Settings, partitions: Collection[Partition]) -> str:
    """What a consumer was given, for its log: the task topic's partitions, and how many wait partitions."""
    own = sorted(partition for topic, partition in partitions if topic == settings.queue_name)
    waits = sum(1 for topic, _ in partitions if topic != settings.queue_name)
    return f"{own} and {waits} of the wait topics"


def int_header(headers: Iterable[tuple[str, bytes | None]], key: str) -> int | None:
    """The first `key` header as a whole number; None where missing or mangled."""
    for name, value in headers:
        if name == key and value is not None:
            return int(value) if value.isdigit() else None
    return None


def record_headers(headers: Mapping[str, str]) -> Headers:
    return [(key, value.encode()) for key, value in headers.items()]


def dead_letter_headers(
    headers: Sequence[tuple[str, bytes | None]] | None, reason: str, partition: int, offset: int, attempts: int
) -> Headers:
    """The original headers, plus why the record was dead-lettered and where it came from."""
    kept = [(key, value) for key, value in headers or () if value is not None]
    return [
        *kept,
        (REASON_HEADER, reason.encode()),
        ("x-original-partition", str(partition).encode()),
        ("x-original-offset", str(offset).encode()),
        ("x-attempts", str(attempts).encode()),
    ]


class PartitionedTransport:
    """What both Kafka transports tell the runner, and the bookkeeping they share."""

    finish_unstarted = False  # what is not committed is read again by the partition's next owner

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.capacity = settings.prefetch_count
        self._ledger = OffsetLedger()


class OffsetLedger:
    """What may be committed: per partition this consumer owns, the offset after the last record
    settled. Records of a partition are settled in order (the runner runs each partition as one
    lane), so a record that failed to settle is never passed: the runner starts over first.
    It also counts what is settled but not yet committed (what a crash would deliver again),
    including what a commit under way covers until the broker confirms it."""

    def __init__(self) -> None:
        self._owned: set[Partition] = set()
        self._due: dict[Partition, int] = {}  # settled, not yet sent in a commit: the offset to commit
        self._first: dict[Partition, int] = {}  # ... and the first offset the commit would cover
        self._sent: dict[Partition, tuple[int, int]] = {}  # under way: (first offset covered, offset committed)

    def assigned(self, partitions: Iterable[Partition]) -> None:
        self._owned.update(partitions)

    def settled(self, partition: Partition, offset: int) -> None:
        """Record `offset` of `partition` as done; a partition that moved away meanwhile is ignored."""
        if partition in self._owned:
            self._due[partition] = max(self._due.get(partition, 0), offset + 1)
            self._first.setdefault(partition, offset)

    def due(self, partitions: Iterable[Partition] | None = None) -> dict[Partition, int]:
        """The offsets to commit, for every partition or those given."""
        wanted = self._due.keys() if partitions is None else set(partitions) & self._due.keys()
        return {partition: self._due[partition] for partition in wanted}

    def unconfirmed(self) -> dict[Partition, int]:
        """The offsets to commit for everything settled, including what a commit under way covers."""
        offsets = {partition: offset for partition, (_, offset) in self._sent.items()}
        return offsets | self._due

    def uncommitted(self) -> int:
        """How many records are settled but not confirmed committed (at most: offsets may have gaps)."""
        return self.unsent() + sum(offset - first for first, offset in self._sent.values())

    def unsent(self) -> int:
        """How many records are settled but in no commit yet (at most: offsets may have gaps)."""
        return sum(offset - self._first[partition] for partition, offset in self._due.items())

    def sent(self, offsets: Mapping[Partition, int]) -> None:
        """A commit of `offsets` is under way: no longer due, not committed until `committed`."""
        for partition, offset in offsets.items():
            if partition in self._owned:
                first = self._sent.get(partition, (self._first.get(partition, offset), 0))[0]
                self._sent[partition] = (first, offset)
        self._forget_due(offsets)

    def committed(self, offsets: Mapping[Partition, int]) -> None:
        """Confirmed: forget what the commit covered, unless more was settled meanwhile."""
        self._forget_due(offsets)
        for partition, offset in offsets.items():
            if partition in self._sent:
                first, sent = self._sent[partition]
                if sent <= offset:
                    del self._sent[partition]
                else:
                    self._sent[partition] = (max(first, offset), sent)

    def failed(self, partition: Partition, offset: int) -> None:
        """A commit of `offset` failed: what it covered is due again, unless a later commit covers it."""
        first, sent = self._sent.get(partition, (0, -1))
        if sent != offset:
            return
        del self._sent[partition]
        if partition in self._owned:
            self._due[partition] = max(self._due.get(partition, 0), offset)
            self._first[partition] = min(self._first.get(partition, first), first)

    def _forget_due(self, offsets: Mapping[Partition, int]) -> None:
        for partition, offset in offsets.items():
            if self._due.get(partition) == offset:
                del self._due[partition]
                del self._first[partition]
            elif partition in self._due:
                self._first[partition] = max(self._first[partition], offset)

    def revoked(self, partitions: Iterable[Partition]) -> None:
        """The partitions moved to another consumer: their new owner starts from the last commit."""
        for partition in partitions:
            self._owned.discard(partition)
            self._due.pop(partition, None)
            self._first.pop(partition, None)
            self._sent.pop(partition, None)

    def clear(self) -> None:
        self._owned.clear()
        self._due.clear()
        self._first.clear()
        self._sent.clear()
