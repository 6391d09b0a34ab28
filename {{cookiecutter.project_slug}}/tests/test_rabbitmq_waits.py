"""Unit tests of the wait queues' tiers: a retry's wait goes to the tier nearest it, within the
contract's tolerance, from a tenth of a second to a day, in a bounded number of queues."""

from __future__ import annotations

import pytest

from {{ cookiecutter.project_slug }}.brokers.rabbitmq.topology import wait_queue, wait_queue_arguments, wait_tier_ms
from {{ cookiecutter.project_slug }}.settings import Settings

DAY = 86_400.0


@pytest.mark.parametrize("seconds", [0.1, 0.5, 1, 2, 4, 7.3, 30, 300, 3_600, DAY])
def test_a_wait_goes_to_the_tier_nearest_it(seconds: float) -> None:
    ttl_ms = wait_tier_ms(seconds)
    assert ttl_ms is not None
    assert 0.88 * seconds <= ttl_ms / 1000 <= 1.12 * seconds


def test_a_wait_too_short_for_the_first_tier_waits_not_at_all() -> None:
    assert wait_tier_ms(0) is None
    assert wait_tier_ms(0.05) is None


def test_every_wait_up_to_a_day_fits_in_a_few_dozen_queues() -> None:
    tiers = {wait_tier_ms(seconds / 10) for seconds in range(1, int(DAY * 10), 997)}
    assert len(tiers) <= 64


def test_a_wait_queue_expires_its_messages_into_the_task_queue() -> None:
    settings = Settings(broker_url="amqp://guest:guest@127.0.0.1:5672/%2F", queue_name="jobs")
    assert wait_queue(settings, 1526) == "jobs.wait.1526ms"
    assert wait_queue_arguments(settings, 1526) == {
        "x-message-ttl": 1526,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "jobs",
    }
