"""Unit tests of Kafka's wait topics: which one a wait goes to, how a long wait hops to its end,
and which fetched records go on and which partitions are held."""

from __future__ import annotations

import pytest

from {{ cookiecutter.project_slug }}.brokers.kafka.waits import (
    WAIT_TIERS_MS,
    Holds,
    Waiting,
    due_of,
    next_stop,
    pass_on,
    retries_of,
    tier_of,
    topics,
    waiting_headers,
)
from {{ cookiecutter.project_slug }}.settings import Settings

SETTINGS = Settings(broker_url="kafka://127.0.0.1:9092", queue_name="jobs")
NOW = 1_000_000_000  # epoch ms
W1 = ("jobs.wait.1000ms", 0)
W4 = ("jobs.wait.4000ms", 0)


def hops(delay_ms: int) -> list[int]:
    """The tiers a record waits in, one after the other, for a wait of `delay_ms`; each hop is on time."""
    due, now, waited = NOW + delay_ms, NOW, []
    while (topic := next_stop(SETTINGS, due, now)) != "jobs":
        tier = tier_of(SETTINGS, topic)
        assert tier is not None, topic
        waited.append(tier)
        now += tier
    return waited


@pytest.mark.parametrize("seconds", [0.1, 0.5, 1, 2, 3, 7.3, 30, 300, 3_600, 86_400])
def test_a_wait_ends_on_time_after_a_few_hops(seconds: float) -> None:
    waited = hops(round(seconds * 1000))
    assert seconds <= sum(waited) / 1000 <= seconds + WAIT_TIERS_MS[0] / 1000
    assert len(waited) <= 3 * len(WAIT_TIERS_MS)


def test_a_wait_of_a_tier_is_one_hop() -> None:
    assert hops(1000) == [1000]
    assert hops(4000) == [4000]


def test_a_record_due_now_goes_to_the_task_topic() -> None:
    assert next_stop(SETTINGS, NOW, NOW) == "jobs"
    assert next_stop(SETTINGS, NOW - 5_000, NOW) == "jobs"


def test_only_the_service_s_own_wait_topics_have_a_tier() -> None:
    assert tier_of(SETTINGS, "jobs.wait.1000ms") == 1000
    assert tier_of(SETTINGS, "jobs") is None
    assert tier_of(SETTINGS, "jobs.dlq") is None
    assert tier_of(SETTINGS, "jobs.wait.1234ms") is None  # not a tier: never read
    assert tier_of(SETTINGS, "other.wait.1000ms") is None
    assert set(topics(SETTINGS)) >= {"jobs", "jobs.dlq", "jobs.wait.250ms", "jobs.wait.65536000ms"}


def test_a_waiting_record_carries_its_due_time_and_retries_replacing_old_ones() -> None:
    headers = waiting_headers([("traceparent", b"00-x"), ("x-retries", b"1"), ("x-due-ms", b"5")], NOW, 2)
    assert headers == [("traceparent", b"00-x"), ("x-due-ms", str(NOW).encode()), ("x-retries", b"2")]
    assert (due_of(headers), retries_of(headers)) == (NOW, 2)
    assert (due_of([("x-due-ms", b"soon")]), retries_of([("x-retries", b"many")])) == (None, 0)


def waiting(partition: tuple[str, int], offset: int, age_ms: int, due_in_ms: int | None = None) -> Waiting:
    tier = tier_of(SETTINGS, partition[0])
    assert tier is not None
    headers = [] if due_in_ms is None else [("x-due-ms", str(NOW + due_in_ms).encode())]
    return Waiting(partition, offset, NOW - age_ms, tier, headers)


def test_records_whose_wait_is_over_go_on_and_the_first_still_waiting_holds_its_partition() -> None:
    holds = Holds()
    fetched = [
        (waiting(W1, 10, age_ms=1500), "a"),  # over: due now
        (waiting(W1, 11, age_ms=500), "b"),  # waits 500 ms more: holds W1
        (waiting(W1, 12, age_ms=1200), "c"),  # behind a held record: left for the next read
        (waiting(W4, 3, age_ms=4000, due_in_ms=2500), "d"),  # over, but its due time is later: another hop
    ]
    onward, held = pass_on(SETTINGS, fetched, holds, NOW)
    assert onward == [("a", "jobs"), ("d", "jobs.wait.1000ms")]
    assert [(hold.partition, hold.offset) for hold in held] == [(W1, 11)]
    assert holds.held(W1)
    assert not holds.held(W4)
    assert holds.seconds_to_next(NOW) == pytest.approx(0.5)


def test_a_hold_is_released_once_its_time_came() -> None:
    holds = Holds()
    holds.hold(W1, NOW + 500)
    holds.hold(W4, NOW + 3000)
    assert holds.release(NOW) == []
    assert holds.release(NOW + 500) == [W1]
    assert holds.held(W4)
    assert not holds.held(W1)
    holds.revoked([W4])
    assert holds.seconds_to_next(NOW) is None
