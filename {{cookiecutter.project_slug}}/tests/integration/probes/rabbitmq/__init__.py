"""RabbitMQ as the tests see it: what to start, the settings that make faults quick to notice."""

from __future__ import annotations
{%- set style = "asynchronous" if cookiecutter.consumer == "async" else "threaded" %}

from {{ cookiecutter.project_slug }}.brokers.rabbitmq.topology import wait_queue, wait_tier_ms
from {{ cookiecutter.project_slug }}.settings import Settings

from ..common import RECONNECT_SECONDS, make_proxy, ready_to_share, shares_settled
from .{{ style }} import Probe

__all__ = ["Probe", "make_proxy", "ready_to_share", "shares_settled"]

SERVICE_HINT = "start RabbitMQ (`rabbitmq-server -detached`, or any RabbitMQ 3.13+), or point BROKER_URL at one"
{%- if cookiecutter.use_docker == "yes" %}
START_HINT = "run `docker compose up -d rabbitmq`, or " + SERVICE_HINT
{%- else %}
START_HINT = SERVICE_HINT
{%- endif %}
TEST_SETTINGS: dict[str, object] = {"heartbeat_seconds": 10}
WORKER_ENV: dict[str, str] = {}
SILENCE_SETTINGS: dict[str, object] = {"heartbeat_seconds": 2}  # so that silence is noticed soon


def notice_within(settings: Settings) -> float:
{%- if cookiecutter.consumer == "async" %}
    """aiormq drops a connection that received nothing for 3 x (heartbeat + 1) seconds."""
    return 3 * (settings.heartbeat_seconds + 1) + RECONNECT_SECONDS
{%- else %}
    """pika checks every heartbeat + 5 seconds that something arrived since its last check."""
    return 2 * (settings.heartbeat_seconds + 5) + RECONNECT_SECONDS
{%- endif %}


def slow_handler_seconds(settings: Settings) -> float:
    """Slower than the heartbeat: the connection must live through it."""
    return 2.5 * settings.heartbeat_seconds


LONGEST_TEST_WAIT_SECONDS = 5.0  # no test waits longer


def waiting_places(settings: Settings) -> list[str]:
    """The wait queues a test's retries may have declared: those of every wait up to the longest."""
    tiers = {wait_tier_ms(seconds / 100) for seconds in range(1, round(LONGEST_TEST_WAIT_SECONDS * 100) + 1)}
    return [wait_queue(settings, ttl_ms) for ttl_ms in sorted(tier for tier in tiers if tier is not None)]
