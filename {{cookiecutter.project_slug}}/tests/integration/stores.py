"""What the task-store tests share: the protocol's and each store's tests need the same stores, records and faults."""
{%- set is_async = cookiecutter.consumer == "async" %}

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar
from urllib.parse import urlsplit

import pytest
{%- if cookiecutter.task_store == "redis" %}
import redis
{%- endif %}

from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.store import NewRecord, StoredRecord, TaskStore, Update
from {{ cookiecutter.project_slug }}.store.factory import make_store

from .helpers import via
from .tcp_proxy import TcpProxy

T = TypeVar("T")
{%- if cookiecutter.task_store == "redis" %}
TTL_SECONDS = 3600.0  # long enough that a key's TTL, read back, tells whether the last change set it
DEFAULT_PORT = 6379  # where TASK_STORE_URL names none
{%- else %}
TTL_SECONDS = 60.0  # the least the settings allow: a record aged by twice that has expired
DEFAULT_PORT = 5432  # where TASK_STORE_URL names none
{%- endif %}
DOWN_WITHIN_SECONDS = 2.0  # how soon a call fails when the store is down or silent


@pytest.fixture
{%- if cookiecutter.task_store == "redis" %}
def store_settings(task_store_url: str) -> Iterator[Settings]:
    """Settings for one test: its own queue name, so its own keys, deleted after it."""
    settings = Settings(
        task_store_url=task_store_url,
        queue_name=f"test-{uuid.uuid4().hex[:12]}",
        task_record_ttl_seconds=TTL_SECONDS,
        max_delay_seconds=0,
    )
    yield settings
    with redis.Redis.from_url(task_store_url) as client:
        keys = list(client.scan_iter(match=f"{settings.queue_name}.*"))
        if keys:
            client.delete(*keys)
{%- else %}
def store_settings(task_store_url: str) -> Settings:
    """The shared table (its name is fixed): each test's records have ids and keys of their own."""
    return Settings(task_store_url=task_store_url, task_record_ttl_seconds=TTL_SECONDS, max_delay_seconds=0)
{%- endif %}


@pytest.fixture
def store_proxy(task_store_url: str) -> Iterator[TcpProxy]:
    """A proxy to the task store, up: the test cuts, freezes or takes down its connections."""
    parts = urlsplit(task_store_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORT)
    proxy.up()
    yield proxy
    proxy.down()


def through(proxy: TcpProxy, settings: Settings) -> Settings:
    """The same settings, with the store reached through `proxy`."""
    return settings.model_copy(update={"task_store_url": via(proxy, settings.task_store_url)})


def run(settings: Settings, scenario: Callable[[TaskStore], Awaitable[T]]) -> T:
    """A fresh store for one scenario, in an event loop of its own, closed after it."""

    async def main() -> T:
        store = make_store(settings)
        await store.start()
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(main())


def in_parallel(count: int, settings: Settings, scenario: Callable[[TaskStore, int], Awaitable[T]]) -> list[T]:
    """`scenario` in `count` threads at once, each with a store (and a pool, and an event loop) of its own,
    as so many processes; scenario's second argument is the thread's number."""

    def one(n: int) -> T:
        return run(settings, lambda store: scenario(store, n))

    with ThreadPoolExecutor(count) as executor:
        return list(executor.map(one, range(count), timeout=60))
{%- if is_async %}


async def write(store: TaskStore, updates: Sequence[Update]) -> None:
    await store.write(updates)


async def remove_expired(store: TaskStore) -> int:
    return await store.remove_expired()
{%- else %}


async def write(store: TaskStore, updates: Sequence[Update]) -> None:
    store.write(updates)  # the record writer calls it from a thread of its own; blocking here is harmless


async def remove_expired(store: TaskStore) -> int:
    return store.remove_expired()
{%- endif %}


def now() -> float:
    """This second, to the microsecond, as timestamptz keeps it: a time that text must carry to the last digit."""
    return int(time.time()) + 0.123456


def new_record(idempotency_key: str | None = None, task_type: str = "resize") -> NewRecord:
    return NewRecord(
        id=str(uuid.uuid4()),
        type=task_type,
        status="queued",
        created_at=now(),
        idempotency_key=idempotency_key,
        request_hash="sha256:0123" if idempotency_key is not None else None,
    )


def new_key() -> str:
    return f"order-{uuid.uuid4()}"


def race_for_keys(settings: Settings, rounds: int = 5, contenders: int = 8) -> tuple[list[str], list[str], list[str]]:
    """`contenders` stores, each in a thread of its own, create a record with one key at the same moment, a key a
    round: one create of each round wins, every other returns the winner. The keys, their winners, every id tried."""
    keys = [new_key() for _ in range(rounds)]
    records = [[new_record(key) for key in keys] for _ in range(contenders)]  # each contender's, round by round
    start = threading.Barrier(contenders)

    async def contend(store: TaskStore, n: int) -> list[StoredRecord | None]:
        await store.ping()  # connected (and any schema looked at) before the first round, so the creates meet
        replies = []
        for record in records[n]:
            start.wait(timeout=10)
            replies.append(await store.create(record))
        return replies

    replies = in_parallel(contenders, settings, contend)
    winners = []
    for n in range(rounds):
        outcomes = [(mine[n].id, theirs[n]) for mine, theirs in zip(records, replies, strict=True)]
        [winner] = [task_id for task_id, reply in outcomes if reply is None]
        assert {reply.id for _, reply in outcomes if reply is not None} == {winner}
        winners.append(winner)
    return keys, winners, [record.id for mine in records for record in mine]
