"""Kafka as the tests see it: what to start, the settings that make faults quick to notice, and
the proxy listener that Kafka's advertised addresses need."""

from __future__ import annotations
{%- set style = "asynchronous" if cookiecutter.consumer == "async" else "threaded" %}

import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest

from {{ cookiecutter.project_slug }}.brokers.kafka.waits import wait_topics
from {{ cookiecutter.project_slug }}.settings import Settings

from ...tcp_proxy import TcpProxy
from ..common import RECONNECT_SECONDS
from .{{ style }} import Probe

__all__ = ["Probe"]

SERVICE_HINT = (
    "start Apache Kafka 3.7+ (`bin/kafka-server-start.sh config/server.properties` in its download, once its"
    " storage is formatted as its quickstart shows), or point BROKER_URL at one"
)
{%- if cookiecutter.use_docker == "yes" %}
START_HINT = "run `docker compose up -d kafka`, or " + SERVICE_HINT
{%- else %}
START_HINT = SERVICE_HINT
{%- endif %}
TEST_SETTINGS: dict[str, object] = {}
WORKER_ENV: dict[str, str] = {}
SILENCE_SETTINGS: dict[str, object] = {}
# Kafka clients bootstrap from BROKER_URL, then talk to the addresses the broker advertises, so a
# proxy must own an advertised address: the broker's FAULTS listener (port 9094) advertises
# 127.0.0.1:19094, where the fault tests' proxy listens and forwards to 9094.
PROXY_PORT = int(os.environ.get("KAFKA_PROXY_PORT", "19094"))
PROXY_UPSTREAM = os.environ.get("KAFKA_PROXY_UPSTREAM", "127.0.0.1:9094")


def notice_within(settings: Settings) -> float:
    """The group's session timeout: how long a consumer may be silent; its requests time out alike."""
    return 2 * settings.session_timeout_seconds + RECONNECT_SECONDS


def slow_handler_seconds(settings: Settings) -> float:
    """Slower than the session timeout: the consumer must keep its partitions through it."""
    return 2.5 * settings.session_timeout_seconds


def make_proxy(broker_url: str) -> TcpProxy:
    """A proxy on the advertised address of the broker's FAULTS listener (BROKER_URL is not used)."""
    host, _, port = PROXY_UPSTREAM.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as error:
        pytest.fail(
            f"no Kafka listener for the fault tests' proxy: {PROXY_UPSTREAM} is unreachable ({error!r}); "
{%- if cookiecutter.use_docker == "yes" %}
            "run `docker compose up -d kafka` (its FAULTS listener), or "
{%- endif %}
            "give Kafka a FAULTS listener on 9094 advertised as 127.0.0.1:19094 in server.properties"
            " (README.md, 'Run it'), or set KAFKA_PROXY_UPSTREAM to a listener that advertises"
            " 127.0.0.1:$KAFKA_PROXY_PORT",
            pytrace=False,
        )
    return TcpProxy(host, int(port), port=PROXY_PORT)


def ready_to_share(log: Path) -> bool:
    """A worker takes its share once the group assigned it partitions."""
    return bool(re.search(r"assigned partitions \[\d", log.read_text()))


def shares_settled(logs: Sequence[Path]) -> bool:
    """Each worker's latest assignment is non-empty, and together they hold every partition once."""
    latest = []
    for log in logs:
        assignments = re.findall(r"assigned partitions \[([\d, ]*)\]", log.read_text())
        if not assignments or not assignments[-1]:
            return False
        latest += [int(partition) for partition in assignments[-1].split(",")]
    return sorted(latest) == list(range(len(latest))) and len(set(latest)) == len(latest)


def waiting_places(settings: Settings) -> list[str]:
    """The wait topics of retries and delayed tasks."""
    return wait_topics(settings)
