"""Integration fixtures: the real broker at BROKER_URL, a fresh queue per test, cleaned up after."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from {{ cookiecutter.project_slug }}.settings import DEFAULT_BROKER_URL, Settings

from .probes import START_HINT, TEST_SETTINGS, Probe, make_proxy, waiting_places
from .tally import RESULTS, table
from .tcp_proxy import TcpProxy

__all__ = ["Probe"]


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
        retry_delay_seconds=0.1,  # retries come back soon: 0.1, then 0.2 s
        prefetch_count=10,
        shutdown_timeout_seconds=5,
    ).model_copy(update=TEST_SETTINGS)
    yield settings
    probe.delete(settings.queue_name, settings.dead_letter_queue, *waiting_places(settings))


@pytest.fixture
def proxy(broker_url: str) -> Iterator[TcpProxy]:
    """A proxy to the broker, down until the test brings it up."""
    proxy = make_proxy(broker_url)
    yield proxy
    proxy.down()
