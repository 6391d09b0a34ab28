"""Unit tests of the wait queues' tiers: a wait goes to the first tier no shorter than it, within
the contract's tolerance, from a tenth of a second to a day, in a bounded number of queues."""

from __future__ import annotations

import pytest

from {{ cookiecutter.project_slug }}.brokers.rabbitmq.topology import wait_queue, wait_queue_arguments, wait_tier_ms
from {{ cookiecutter.project_slug }}.settings import Settings

DAY = 86_400.0


@pytest.mark.parametrize("seconds", [0.1, 0.5, 1, 2, 4, 7.3, 30, 300, 3_600, DAY])
def test_a_wait_goes_to_the_first_tier_no_shorter_than_it(seconds: float) -> None:
    ttl_ms = wait_tier_ms(seconds)
    assert ttl_ms is not None
    assert seconds <= ttl_ms / 1000 <= 1.2 * seconds


def test_a_wait_shorter_than_the_first_tier_waits_that_long_and_none_not_at_all() -> None:
    assert wait_tier_ms(0.05) == 100
    assert wait_tier_ms(0) is None


def test_every_wait_up_to_a_day_fits_in_under_a_hundred_queues() -> None:
    tiers = {wait_tier_ms(seconds / 10) for seconds in range(1, int(DAY * 10), 997)}
    assert len(tiers) < 100


def test_a_wait_queue_expires_its_messages_into_the_task_queue() -> None:
    settings = Settings(broker_url="amqp://guest:guest@127.0.0.1:5672/%2F", queue_name="jobs")
    assert wait_queue(settings, 1526) == "jobs.wait.1526ms"
    assert wait_queue_arguments(settings, 1526) == {
        "x-message-ttl": 1526,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "jobs",
        "x-queue-type": "quorum",
        "x-dead-letter-strategy": "at-least-once",  # an expiring retry is not lost on its way back
        "x-overflow": "reject-publish",
    }
