"""Integration fixtures: the real broker at BROKER_URL, a fresh queue per test, cleaned up after."""

from __future__ import annotations

import os
{%- if cookiecutter.broker == "kafka" %}
import socket
{%- endif %}
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

{% if cookiecutter.broker == "kafka" -%}
from {{ cookiecutter.project_slug }}.settings import DEFAULT_BROKER_URL, Settings
{%- else -%}
from {{ cookiecutter.project_slug }}.settings import BROKER_SCHEMES, DEFAULT_BROKER_URL, Settings
{%- endif %}

{% if cookiecutter.broker == "redis" -%}
from .probe_redis import SERVICE_HINT, Probe
{%- else -%}
from .probe_{{ cookiecutter.broker }}_{{ cookiecutter.consumer }} import SERVICE_HINT, Probe
{%- endif %}
from .tally import RESULTS, table
from .tcp_proxy import TcpProxy

__all__ = ["Probe", "via"]

{% if cookiecutter.use_docker == "yes" -%}
START_HINT = "run `docker compose up -d {{ cookiecutter.broker }}`, or " + SERVICE_HINT
{%- else -%}
START_HINT = SERVICE_HINT
{%- endif %}
{%- if cookiecutter.broker == "kafka" %}
# Kafka clients bootstrap from BROKER_URL, then talk to the addresses the broker advertises, so a
# proxy must own an advertised address: the broker's FAULTS listener (port 9094) advertises
# 127.0.0.1:19094, where the fault tests' proxy listens and forwards to 9094.
PROXY_PORT = int(os.environ.get("KAFKA_PROXY_PORT", "19094"))
PROXY_UPSTREAM = os.environ.get("KAFKA_PROXY_UPSTREAM", "127.0.0.1:9094")
{%- endif %}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RESULTS:
        terminalreporter.section("faults: messages sent, processed, duplicated and lost")
        for line in table(RESULTS):
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.nodeid.split("::")[0]:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker_url() -> str:
    """The real broker; a test that needs it fails, loudly, when it is not there."""
    url = os.environ.get("BROKER_URL", DEFAULT_BROKER_URL)
    try:
        Probe(url).check()
    except Exception as error:
        address = Settings(broker_url=url).broker_address
        pytest.fail(f"the broker at {address} is unreachable ({error!r}): {START_HINT}", pytrace=False)
    return url


@pytest.fixture
def probe(broker_url: str) -> Probe:
    return Probe(broker_url)


@pytest.fixture
def settings(broker_url: str, probe: Probe) -> Iterator[Settings]:
    """Settings for one test: its own queue, few retries, short timeouts."""
    settings = Settings(
        broker_url=broker_url,
        queue_name=f"test-{uuid.uuid4().hex[:12]}",
        max_retries=2,
        prefetch_count=10,
        shutdown_timeout_seconds=5,
{%- if cookiecutter.broker == "rabbitmq" %}
        heartbeat_seconds=10,
{%- elif cookiecutter.broker == "redis" %}
        claim_idle_seconds=1,
{%- endif %}
    )
    yield settings
    for queue in (settings.queue_name, settings.dead_letter_queue):
        probe.delete(queue)


@pytest.fixture
def proxy(broker_url: str) -> Iterator[TcpProxy]:
    """A proxy to the broker, down until the test brings it up."""
{%- if cookiecutter.broker == "kafka" %}
    host, _, port = PROXY_UPSTREAM.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as error:
        pytest.fail(
            f"no Kafka listener for the fault tests' proxy: {PROXY_UPSTREAM} is unreachable ({error!r}); "
{%- if cookiecutter.use_docker == "yes" %}
            "run `docker compose up -d kafka` (its FAULTS listener), or "
{%- endif %}
            "set KAFKA_PROXY_UPSTREAM to a listener that advertises 127.0.0.1:$KAFKA_PROXY_PORT",
            pytrace=False,
        )
    proxy = TcpProxy(host, int(port), port=PROXY_PORT)
{%- else %}
    parts = urlsplit(broker_url)
    proxy = TcpProxy(parts.hostname or "localhost", parts.port or BROKER_SCHEMES[parts.scheme])
{%- endif %}
    yield proxy
    proxy.down()


def via(proxy: TcpProxy, broker_url: str) -> str:
    """The broker URL with its address replaced by the proxy's."""
    parts = urlsplit(broker_url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))
