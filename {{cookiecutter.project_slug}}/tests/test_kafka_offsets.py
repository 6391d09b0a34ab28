"""Unit tests of the offset bookkeeping (what may be committed, per partition, and when) and of the
fair hand-out of what was read (a share of each partition, each in its order)."""

from __future__ import annotations

from {{ cookiecutter.project_slug }}.brokers.base import Delivery
from {{ cookiecutter.project_slug }}.brokers.kafka.records import FairQueue, OffsetLedger, fair_share

P0, P1, P2 = ("tasks", 0), ("tasks", 1), ("tasks", 2)


def owning(*partitions: tuple[str, int]) -> OffsetLedger:
    ledger = OffsetLedger()
    ledger.assigned(partitions)
    return ledger


def test_the_offset_after_the_last_settled_record_is_due() -> None:
    ledger = owning(P0, P1)
    ledger.settled(P0, 4)
    ledger.settled(P0, 5)
    ledger.settled(P1, 9)
    assert ledger.due() == {P0: 6, P1: 10}
    assert ledger.due([P1]) == {P1: 10}


def test_a_record_settled_late_never_moves_the_offset_back() -> None:
    ledger = owning(P0)
    ledger.settled(P0, 7)  # a dead letter, settled before an earlier record's ack in the same batch
    ledger.settled(P0, 6)
    assert ledger.due() == {P0: 8}


def test_what_was_committed_is_no_longer_due_unless_more_was_settled_meanwhile() -> None:
    ledger = owning(P0, P1)
    ledger.settled(P0, 1)
    ledger.settled(P1, 1)
    offsets = ledger.due()
    ledger.settled(P1, 2)  # while the commit was under way
    ledger.committed(offsets)
    assert ledger.due() == {P1: 3}


def test_partitions_not_owned_are_never_committed() -> None:
    ledger = owning(P0)
    ledger.settled(P1, 3)  # a record of a partition never assigned
    ledger.settled(P0, 3)
    ledger.revoked([P0])
    ledger.settled(P0, 4)  # finished after its partition moved to another consumer
    assert ledger.due() == {}


def test_clear_forgets_everything() -> None:
    ledger = owning(P0)
    ledger.settled(P0, 1)
    ledger.clear()
    ledger.settled(P0, 2)
    assert ledger.due() == {}


def test_what_is_settled_but_not_committed_is_counted_until_committed() -> None:
    ledger = owning(P0, P1)
    for offset in range(10, 15):
        ledger.settled(P0, offset)
    ledger.settled(P1, 0)
    assert ledger.uncommitted() == 6
    offsets = ledger.due()
    ledger.settled(P0, 15)  # while the commit was under way
    ledger.committed(offsets)
    assert ledger.uncommitted() == 1
    ledger.committed(ledger.due())
    assert ledger.uncommitted() == 0


def test_a_revoked_partition_no_longer_counts_as_uncommitted() -> None:
    ledger = owning(P0, P1)
    ledger.settled(P0, 3)
    ledger.settled(P1, 3)
    ledger.revoked([P0])
    assert ledger.uncommitted() == 1


def read(*records: tuple[tuple[str, int], int]) -> FairQueue:
    """A queue holding records given as (partition, offset), in the order the client read them."""
    waiting = FairQueue()
    for partition, offset in records:
        waiting.put(Delivery(b"", {}, 0, offset, partition))
    return waiting


def taken(waiting: FairQueue, count: int, partitions: int = 3) -> list[tuple[object, int]]:
    return [(delivery.lane, delivery.handle) for delivery in waiting.take(count, partitions)]


def test_no_more_than_a_share_of_one_partition_is_handed_out() -> None:
    waiting = read(*((P0, n) for n in range(10)), *((P1, n) for n in range(3)), (P2, 0))
    assert taken(waiting, 6) == [(P0, 0), (P0, 1), (P1, 0), (P1, 1), (P2, 0)]
    assert len(waiting) == 9


def test_each_take_starts_with_the_partitions_the_last_one_reached_last() -> None:
    waiting = read(*((P0, n) for n in range(4)), *((P1, n) for n in range(4)), *((P2, n) for n in range(4)))
    assert taken(waiting, 2) == [(P0, 0), (P1, 0)]
    assert taken(waiting, 2) == [(P2, 0), (P0, 1)]


def test_the_share_is_of_the_partitions_owned_not_of_those_read_so_far() -> None:
    """The client may hand out one partition's backlog before it reads the next one's."""
    waiting = read(*((P0, n) for n in range(10)))
    assert taken(waiting, 8, partitions=4) == [(P0, 0), (P0, 1)]


def test_each_partition_comes_out_in_the_order_it_was_read() -> None:
    waiting = read(*((P0, n) for n in range(5)), *((P1, n) for n in range(5)))
    out = taken(waiting, 4, 2) + taken(waiting, 6, 2) + taken(waiting, 6, 2)
    assert [offset for partition, offset in out if partition == P0] == list(range(5))
    assert [offset for partition, offset in out if partition == P1] == list(range(5))
    assert len(waiting) == 0


def test_what_waits_of_a_revoked_partition_is_dropped() -> None:
    waiting = read((P0, 0), (P1, 0), (P1, 1))
    assert waiting.drop([P1, P2]) == 2
    assert taken(waiting, 10) == [(P0, 0)]
    assert waiting.drop() == 0


def test_a_fair_share_is_never_zero() -> None:
    assert fair_share(100, 8) == 13
    assert fair_share(3, 8) == 1
    assert fair_share(5, 0) == 5
