"""Integration fixtures: the real broker at BROKER_URL, a fresh queue per test, cleaned up after."""

from __future__ import annotations

{% if cookiecutter.task_store != "none" -%}
import asyncio
{% endif -%}
import os
import uuid
from collections.abc import Iterator

import pytest

from {{ cookiecutter.project_slug }}.settings import DEFAULT_BROKER_URL, Settings
{%- if cookiecutter.task_store != "none" %}
from {{ cookiecutter.project_slug }}.store import StoreUnavailable, TaskStore
from {{ cookiecutter.project_slug }}.store.factory import make_store
{%- endif %}

from .probes import START_HINT, TEST_SETTINGS, Probe, make_proxy, waiting_places
{%- if cookiecutter.task_store != "none" %}
from .stores import store_proxy, store_settings  # noqa: F401 (the task-store tests' fixtures: pytest finds them here)
{%- endif %}
{%- if cookiecutter.task_store == "none" %}
from .tally import RESULTS, table
{%- else %}
from .tally import RECORDS_OF, RESULTS, table
{%- endif %}
from .tcp_proxy import TcpProxy

__all__ = ["Probe"]
{%- if cookiecutter.task_store != "none" %}

TEST_RECORD_TTL_SECONDS = 3600  # the tests' records do not outstay them for a week
{%- endif %}
{%- if cookiecutter.task_store == "redis" and cookiecutter.use_docker == "yes" %}

STORE_HINT = (
    'set TASK_STORE_URL, or start Redis: `redis-server --daemonize yes --save ""` (or `docker compose up redis`)'
)
{%- elif cookiecutter.task_store == "redis" %}

STORE_HINT = 'set TASK_STORE_URL, or start Redis: `redis-server --daemonize yes --save ""`'
{%- elif cookiecutter.task_store == "postgresql" and cookiecutter.use_docker == "yes" %}

STORE_HINT = "set TASK_STORE_URL=postgresql://user@host:5432/db, or start PostgreSQL (docker compose up postgres)"
{%- elif cookiecutter.task_store == "postgresql" %}

STORE_HINT = (
    "set TASK_STORE_URL=postgresql://user@host:5432/db, or install PostgreSQL: sudo apt-get install -y postgresql"
)
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

{%- if cookiecutter.task_store == "none" %}


@pytest.fixture
def settings(broker_url: str, probe: Probe) -> Iterator[Settings]:
    """Settings for one test: its own queue, few retries, short timeouts."""
    settings = Settings(
        broker_url=broker_url,
{%- else %}


@pytest.fixture
def settings(broker_url: str, probe: Probe, task_store_url: str) -> Iterator[Settings]:
    """Settings for one test: its own queue, few retries, short timeouts, its records kept an hour."""
    settings = Settings(
        broker_url=broker_url,
        task_store_url=task_store_url,
        task_record_ttl_seconds=TEST_RECORD_TTL_SECONDS,
        max_delay_seconds=TEST_RECORD_TTL_SECONDS / 2,
{%- endif %}
        queue_name=f"test-{uuid.uuid4().hex[:12]}",
        max_retries=2,
        retry_delay_seconds=0.1,  # retries come back soon: 0.1, then 0.2 s
        prefetch_count=10,
        shutdown_timeout_seconds=5,
    ).model_copy(update=TEST_SETTINGS)
{%- if cookiecutter.task_store == "none" %}
    yield settings
{%- else %}
    RECORDS_OF[:] = [settings]
    yield settings
    RECORDS_OF.clear()
{%- endif %}
    probe.delete(settings.queue_name, settings.dead_letter_queue, *waiting_places(settings))
{%- if cookiecutter.task_store != "none" %}


@pytest.fixture(scope="session")
def task_store_url() -> str:
    """The real task store at TASK_STORE_URL; a test that needs it fails, loudly, when it is not there."""
    settings = Settings()
    try:
        asyncio.run(ping(make_store(settings)))
    except StoreUnavailable as error:
        where = settings.task_store_address
        pytest.fail(f"the task store at {where} is unreachable ({error}): {STORE_HINT}", pytrace=False)
    return settings.task_store_url


async def ping(store: TaskStore) -> None:
    await store.start()
    try:
        await store.ping()
    finally:
        await store.close()
{%- endif %}


@pytest.fixture
def proxy(broker_url: str) -> Iterator[TcpProxy]:
    """A proxy to the broker, down until the test brings it up."""
    proxy = make_proxy(broker_url)
    yield proxy
    proxy.down()
