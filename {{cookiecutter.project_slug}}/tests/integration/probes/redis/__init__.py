"""Redis as the tests see it: what to start, the settings that make faults quick to notice."""

from __future__ import annotations

from {{ cookiecutter.project_slug }}.brokers.redis.streams import client_options
from {{ cookiecutter.project_slug }}.settings import Settings

from ..common import RECONNECT_SECONDS, make_proxy, ready_to_share, shares_settled
from .client import Probe

__all__ = ["Probe", "make_proxy", "ready_to_share", "shares_settled"]

SERVICE_HINT = 'start Redis (`redis-server --daemonize yes --save ""`, or any Redis 6.2+), or point BROKER_URL at one'
{%- if cookiecutter.use_docker == "yes" %}
START_HINT = "run `docker compose up -d redis`, or " + SERVICE_HINT
{%- else %}
START_HINT = SERVICE_HINT
{%- endif %}
TEST_SETTINGS: dict[str, object] = {"claim_idle_seconds": 1}
WORKER_ENV = {"CLAIM_IDLE_SECONDS": "1"}
SILENCE_SETTINGS: dict[str, object] = {}


def notice_within(settings: Settings) -> float:
    """Redis has no heartbeat: every command, XREADGROUP's block included, is bounded by the socket timeout."""
    return 2 * float(client_options("test")["socket_timeout"]) + RECONNECT_SECONDS


def slow_handler_seconds(settings: Settings) -> float:
    """A message idle this long is another consumer's to claim, unless its own consumer keeps it fresh."""
    return 2.5 * settings.claim_idle_seconds


def waiting_places(settings: Settings) -> list[str]:
    """The sorted set where the test's retries waited."""
    return [f"{settings.queue_name}.delayed"]
