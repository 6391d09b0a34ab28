"""Unit tests of the offset bookkeeping (what may be committed, per partition, and when) and of the
share of a fetch that one partition may take."""

from __future__ import annotations

from {{ cookiecutter.project_slug }}.brokers.kafka.records import OffsetLedger, fair_share

P0, P1 = ("tasks", 0), ("tasks", 1)


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


def test_a_fair_share_is_never_zero() -> None:
    assert fair_share(100, 8) == 13
    assert fair_share(3, 8) == 1
    assert fair_share(5, 0) == 5


def test_a_commit_under_way_counts_as_uncommitted_until_the_broker_confirms_it() -> None:
    ledger = owning(P0)
    for offset in range(10):
        ledger.settled(P0, offset)
    ledger.sent(ledger.due())
    ledger.settled(P0, 10)  # while the commit is under way
    assert (ledger.due(), ledger.unsent(), ledger.uncommitted()) == ({P0: 11}, 1, 11)
    assert ledger.unconfirmed() == {P0: 11}
    ledger.committed({P0: 10})
    assert (ledger.unsent(), ledger.uncommitted()) == (1, 1)


def test_what_a_failed_commit_covered_is_due_again_from_its_first_offset() -> None:
    ledger = owning(P0)
    for offset in range(5, 8):
        ledger.settled(P0, offset)
    ledger.sent(ledger.due())
    ledger.settled(P0, 8)
    ledger.failed(P0, 8)
    assert (ledger.due(), ledger.uncommitted()) == ({P0: 9}, 4)


def test_a_failed_commit_that_a_later_one_covers_changes_nothing() -> None:
    ledger = owning(P0)
    ledger.settled(P0, 0)
    ledger.sent(ledger.due())
    ledger.settled(P0, 1)
    ledger.sent(ledger.due())  # covers the first
    ledger.failed(P0, 1)
    assert (ledger.due(), ledger.uncommitted()) == ({}, 2)
    ledger.committed({P0: 2})
    assert ledger.uncommitted() == 0


def test_a_revoked_partitions_commit_under_way_is_forgotten() -> None:
    ledger = owning(P0)
    ledger.settled(P0, 0)
    ledger.sent(ledger.due())
    ledger.revoked([P0])
    ledger.failed(P0, 1)
    assert (ledger.due(), ledger.uncommitted()) == ({}, 0)
