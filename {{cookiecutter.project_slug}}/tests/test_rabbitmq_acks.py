"""Unit tests of the acknowledgement window: one multiple ack for the unbroken run of handled
tags, never past a message still in hand, and nothing held longer than ACK_HOLD_SECONDS."""

from __future__ import annotations

from {{ cookiecutter.project_slug }}.brokers.rabbitmq.acks import ACK_HOLD_SECONDS, AckWindow


def window(*tags: int) -> AckWindow:
    acks = AckWindow()
    for tag in tags:
        acks.delivered(tag)
    return acks


def test_an_unbroken_run_goes_as_one_multiple_ack() -> None:
    acks = window(1, 2, 3, 4)
    acks.handled([2, 1, 3], now=0.0)
    assert acks.due(now=0.0) == (3, [])
    assert acks.due(now=1.0) == (None, [])  # nothing twice


def test_a_multiple_ack_stops_below_a_message_still_in_hand() -> None:
    acks = window(1, 2, 3, 4, 5)
    acks.handled([1, 2, 4, 5], now=0.0)
    assert acks.due(now=0.0) == (2, [])  # 4 and 5 wait for 3
    acks.handled([3], now=0.001)
    assert acks.due(now=0.001) == (5, [])


def test_what_waits_above_a_gap_goes_alone_once_held_too_long() -> None:
    acks = window(1, 2, 3)
    acks.handled([2, 3], now=0.0)
    assert acks.due(now=ACK_HOLD_SECONDS / 2) == (None, [])
    assert acks.due(now=ACK_HOLD_SECONDS) == (None, [2, 3])
    acks.handled([1], now=1.0)
    assert acks.due(now=1.0) == (1, [])


def test_a_message_delivered_but_never_fetched_is_never_passed() -> None:
    """Given back unstarted on a stop, it must stay unacknowledged for the broker to deliver again."""
    acks = window(1, 2, 3)
    acks.handled([1, 3], now=0.0)
    assert acks.due(now=0.0, everything=True) == (1, [3])


def test_a_message_settled_on_its_own_no_longer_holds_the_run_back() -> None:
    acks = window(1, 2, 3)
    acks.handled([1, 3], now=0.0)
    acks.settled(2)  # its retry was confirmed, then it was acknowledged alone
    assert acks.due(now=0.0) == (3, [])


def test_a_new_channel_starts_afresh() -> None:
    acks = window(1, 2)
    acks.handled([2], now=0.0)
    acks.clear()
    assert acks.due(now=1.0) == (None, [])
