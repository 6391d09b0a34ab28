"""The Redis task store against the real Redis at TASK_STORE_URL: what it keeps, under which keys and
for how long, that its check-then-write steps hold under concurrency, and how it fails."""
{%- set is_async = cookiecutter.consumer == "async" %}

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar
from urllib.parse import urlsplit

import pytest
import redis

from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.store import NewRecord, StoredRecord, StoreUnavailable, TaskStore, Update
from {{ cookiecutter.project_slug }}.store.redis import open_store

from .tcp_proxy import TcpProxy

T = TypeVar("T")
TTL_SECONDS = 3600.0
CREATED_AT = 1_700_000_000.123456  # a time that text must carry to the last digit
DOWN_WITHIN_SECONDS = 2.0


@pytest.fixture
def store_settings(task_store_url: str) -> Iterator[Settings]:
    """Settings for one test: its own queue name, so its own keys, deleted after it."""
    settings = Settings(
        task_store_url=task_store_url,
        queue_name=f"test-{uuid.uuid4().hex[:12]}",
        task_record_ttl_seconds=TTL_SECONDS,
    )
    yield settings
    with redis.Redis.from_url(task_store_url) as client:
        keys = list(client.scan_iter(match=f"{settings.queue_name}.*"))
        if keys:
            client.delete(*keys)


@pytest.fixture
def peek(task_store_url: str) -> Iterator[redis.Redis]:
    """A client of our own, to look at what the store wrote."""
    with redis.Redis.from_url(task_store_url, decode_responses=True) as client:
        yield client


@pytest.fixture
def store_proxy(task_store_url: str) -> Iterator[TcpProxy]:
    parts = urlsplit(task_store_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    proxy.up()
    yield proxy
    proxy.down()


def through(proxy: TcpProxy, settings: Settings) -> Settings:
    """The same settings, with the store reached through `proxy`."""
    parts = urlsplit(settings.task_store_url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
    return settings.model_copy(update={"task_store_url": parts._replace(netloc=netloc).geturl()})


def run(settings: Settings, scenario: Callable[[TaskStore], Awaitable[T]]) -> T:
    """A fresh store for one scenario, in an event loop of its own, closed after it."""

    async def main() -> T:
        store = open_store(settings)
        await store.start()
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(main())
{%- if is_async %}


async def write(store: TaskStore, updates: Sequence[Update]) -> None:
    await store.write(updates)
{%- else %}


async def write(store: TaskStore, updates: Sequence[Update]) -> None:
    store.write(updates)  # the record writer calls it from a thread of its own; blocking here is harmless
{%- endif %}


def new_record(idempotency_key: str | None = None, task_type: str = "resize") -> NewRecord:
    return NewRecord(
        id=uuid.uuid4().hex,
        type=task_type,
        status="queued",
        created_at=CREATED_AT,
        idempotency_key=idempotency_key,
        request_hash="sha256:0123" if idempotency_key is not None else None,
    )


def record_key(settings: Settings, task_id: str) -> str:
    return f"{settings.queue_name}.task.{task_id}"


def idempotency_key(settings: Settings, key: str) -> str:
    return f"{settings.queue_name}.idempotency.{key}"


def test_a_record_reads_back_with_every_field(store_settings: Settings) -> None:
    record = NewRecord(
        id=uuid.uuid4().hex,
        type="resize",
        status="scheduled",
        created_at=CREATED_AT,
        next_attempt_at=CREATED_AT + 60.5,
        idempotency_key="order-1",
        request_hash="sha256:0123",
    )

    async def scenario(store: TaskStore) -> tuple[StoredRecord | None, StoredRecord | None, StoredRecord | None]:
        return await store.create(record), await store.get(record.id), await store.get("no-such-task")

    created, stored, unknown = run(store_settings, scenario)
    assert created is None
    assert stored == StoredRecord(
        id=record.id,
        type="resize",
        status="scheduled",
        attempts=0,
        created_at=CREATED_AT,
        updated_at=CREATED_AT,
        next_attempt_at=CREATED_AT + 60.5,
        request_hash="sha256:0123",
        accepted=False,
    )
    assert unknown is None


def test_records_and_keys_are_named_after_the_queue_and_carry_the_ttl(
    store_settings: Settings, peek: redis.Redis
) -> None:
    record = new_record("order-1")
    assert run(store_settings, lambda store: store.create(record)) is None
    names = {record_key(store_settings, record.id), idempotency_key(store_settings, "order-1")}
    assert set(peek.scan_iter(match=f"{store_settings.queue_name}*")) == names
    assert peek.get(idempotency_key(store_settings, "order-1")) == record.id
    for name in names:
        assert TTL_SECONDS * 1000 - 60_000 < peek.pttl(name) <= TTL_SECONDS * 1000


def test_a_second_create_with_the_same_key_returns_the_holder_and_writes_nothing(
    store_settings: Settings, peek: redis.Redis
) -> None:
    first, second = new_record("order-1"), new_record("order-1", task_type="other")

    async def scenario(store: TaskStore) -> tuple[StoredRecord | None, StoredRecord | None, StoredRecord | None]:
        assert await store.create(first) is None
        await store.accepted(first.id)
        return await store.create(second), await store.get(first.id), await store.get(second.id)

    holder, first_stored, second_stored = run(store_settings, scenario)
    assert holder is not None
    assert holder == first_stored
    assert (holder.id, holder.type, holder.request_hash, holder.accepted) == (first.id, "resize", "sha256:0123", True)
    assert second_stored is None
    assert peek.get(idempotency_key(store_settings, "order-1")) == first.id


def test_concurrent_creates_with_one_key_have_exactly_one_winner(store_settings: Settings, peek: redis.Redis) -> None:
    rounds, contenders = 5, 8
    keys = [f"order-{n}" for n in range(rounds)]
    records = [[new_record(key) for key in keys] for _ in range(contenders)]  # each contender's, round by round
    start = threading.Barrier(contenders)

    async def contend(store: TaskStore, mine: list[NewRecord]) -> list[StoredRecord | None]:
        await store.ping()  # connected before the first round, so that the creates meet at Redis
        replies = []
        for record in mine:
            start.wait(timeout=10)
            replies.append(await store.create(record))
        return replies

    def contender(mine: list[NewRecord]) -> list[StoredRecord | None]:
        return run(store_settings, lambda store: contend(store, mine))

    with ThreadPoolExecutor(contenders) as executor:
        replies = list(executor.map(contender, records))
    winners = []
    for n, key in enumerate(keys):
        outcomes = [(mine[n].id, theirs[n]) for mine, theirs in zip(records, replies, strict=True)]
        [winner] = [task_id for task_id, reply in outcomes if reply is None]
        assert {reply.id for _, reply in outcomes if reply is not None} == {winner}
        assert peek.get(idempotency_key(store_settings, key)) == winner
        winners.append(winner)
    stored = {name.rpartition(".")[2] for name in peek.scan_iter(match=record_key(store_settings, "*"))}
    assert stored == set(winners)  # the losers wrote nothing


def test_a_key_whose_record_is_gone_is_taken_over(store_settings: Settings, peek: redis.Redis) -> None:
    gone, taking_over = new_record("order-1"), new_record("order-1")
    assert run(store_settings, lambda store: store.create(gone)) is None
    peek.delete(record_key(store_settings, gone.id))
    assert run(store_settings, lambda store: store.create(taking_over)) is None
    assert peek.get(idempotency_key(store_settings, "order-1")) == taking_over.id
    assert peek.exists(record_key(store_settings, taking_over.id)) == 1


def test_forget_removes_the_record_and_frees_its_key(store_settings: Settings, peek: redis.Redis) -> None:
    forgotten, next_one = new_record("order-1"), new_record("order-1")

    async def scenario(store: TaskStore) -> tuple[StoredRecord | None, StoredRecord | None]:
        assert await store.create(forgotten) is None
        await store.forget(forgotten.id, "order-1")
        return await store.get(forgotten.id), await store.create(next_one)

    assert run(store_settings, scenario) == (None, None)  # gone, and the key was free for the next
    assert peek.get(idempotency_key(store_settings, "order-1")) == next_one.id
    assert peek.exists(record_key(store_settings, forgotten.id)) == 0


def test_forget_leaves_a_key_that_another_task_holds(store_settings: Settings, peek: redis.Redis) -> None:
    holder, other = new_record("order-1"), new_record()

    async def scenario(store: TaskStore) -> tuple[StoredRecord | None, StoredRecord | None]:
        assert await store.create(holder) is None
        assert await store.create(other) is None
        await store.forget(other.id, "order-1")
        return await store.get(other.id), await store.get(holder.id)

    other_stored, holder_stored = run(store_settings, scenario)
    assert other_stored is None
    assert holder_stored is not None
    assert holder_stored.id == holder.id
    assert peek.get(idempotency_key(store_settings, "order-1")) == holder.id


def test_accepted_marks_a_record_and_never_creates_one(store_settings: Settings, peek: redis.Redis) -> None:
    record = new_record("order-1")

    async def scenario(store: TaskStore) -> StoredRecord | None:
        assert await store.create(record) is None
        await store.accepted(record.id)
        await store.accepted("no-such-task")
        return await store.get(record.id)

    stored = run(store_settings, scenario)
    assert stored is not None
    assert stored.accepted
    assert peek.exists(record_key(store_settings, "no-such-task")) == 0


def test_write_updates_a_record_in_order_and_clears_absent_fields(store_settings: Settings, peek: redis.Redis) -> None:
    record = new_record("order-1")
    failing = Update(record.id, "retrying", 1, CREATED_AT + 1, next_attempt_at=CREATED_AT + 3, error="boom")
    running = Update(record.id, "running", 2, CREATED_AT + 3)
    succeeded = Update(record.id, "succeeded", 2, CREATED_AT + 4.25, result='{"width": 640}')

    async def scenario(store: TaskStore) -> tuple[StoredRecord | None, StoredRecord | None]:
        assert await store.create(record) is None
        await store.accepted(record.id)
        await write(store, [failing])
        after_failing = await store.get(record.id)
        await write(store, [running, succeeded])  # applied in order: the last one stands
        return after_failing, await store.get(record.id)

    after_failing, after_success = run(store_settings, scenario)
    assert after_failing is not None
    assert (after_failing.status, after_failing.attempts, after_failing.error) == ("retrying", 1, "boom")
    assert after_failing.next_attempt_at == CREATED_AT + 3
    assert after_success == StoredRecord(
        id=record.id,
        type="resize",
        status="succeeded",
        attempts=2,
        created_at=CREATED_AT,
        updated_at=CREATED_AT + 4.25,
        result='{"width": 640}',
        request_hash="sha256:0123",
        accepted=True,
    )
    fields = set(peek.hkeys(record_key(store_settings, record.id)))
    assert not fields & {"error", "next_attempt_at"}  # an absent field is an absent hash field


def test_write_never_creates_a_record_that_is_gone(store_settings: Settings, peek: redis.Redis) -> None:
    record = new_record()
    gone = Update("no-such-task", "succeeded", 1, CREATED_AT + 1, result="{}")

    async def scenario(store: TaskStore) -> StoredRecord | None:
        assert await store.create(record) is None
        await write(store, [gone, Update(record.id, "running", 1, CREATED_AT + 1)])
        return await store.get(record.id)

    stored = run(store_settings, scenario)
    assert stored is not None
    assert stored.status == "running"  # the batch went on past the missing record
    assert peek.exists(record_key(store_settings, "no-such-task")) == 0


def test_write_counts_the_ttl_from_the_last_change(store_settings: Settings, peek: redis.Redis) -> None:
    record = new_record("order-1")
    names = [record_key(store_settings, record.id), idempotency_key(store_settings, "order-1")]
    assert run(store_settings, lambda store: store.create(record)) is None
    for name in names:
        peek.pexpire(name, 10_000)  # as if most of the TTL had passed
    run(store_settings, lambda store: write(store, [Update(record.id, "running", 1, CREATED_AT + 1)]))
    for name in names:
        assert peek.pttl(name) > TTL_SECONDS * 1000 - 60_000


def test_a_result_keeps_its_json_text_exactly(store_settings: Settings) -> None:
    record = new_record()
    result = json.dumps({"caption": 'a "quoted"\nline, café ✓', "sizes": [1, 2.5, None], "nested": {"ok": True}})

    async def scenario(store: TaskStore) -> StoredRecord | None:
        assert await store.create(record) is None
        await write(store, [Update(record.id, "succeeded", 1, CREATED_AT + 1, result=result)])
        return await store.get(record.id)

    stored = run(store_settings, scenario)
    assert stored is not None
    assert stored.result == result
    assert json.loads(stored.result)["caption"] == 'a "quoted"\nline, café ✓'


def test_remove_expired_leaves_the_work_to_redis(store_settings: Settings) -> None:
    async def scenario(store: TaskStore) -> int:
{%- if is_async %}
        return await store.remove_expired()
{%- else %}
        return store.remove_expired()
{%- endif %}

    assert run(store_settings, scenario) == 0


def test_a_redis_that_is_down_fails_every_call_quickly_but_not_the_start(store_settings: Settings) -> None:
    settings = store_settings.model_copy(update={"task_store_url": "redis://user:secret@127.0.0.1:1/0"})
    record = new_record("order-1")
    calls: dict[str, Callable[[TaskStore], Awaitable[object]]] = {
        "create": lambda store: store.create(record),
        "get": lambda store: store.get(record.id),
        "accepted": lambda store: store.accepted(record.id),
        "forget": lambda store: store.forget(record.id, "order-1"),
        "ping": lambda store: store.ping(),
        "write": lambda store: write(store, [Update(record.id, "running", 1, CREATED_AT + 1)]),
    }

    async def scenario(store: TaskStore) -> dict[str, tuple[float, str]]:
        failures: dict[str, tuple[float, str]] = {}
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as failure:
                await call(store)
            failures[name] = (time.monotonic() - started, str(failure.value))
        return failures

    failures = run(settings, scenario)  # run() starts the store first: that must not fail
    assert failures.keys() == calls.keys()
    for name, (seconds, message) in failures.items():
        assert seconds < DOWN_WITHIN_SECONDS, name
        assert "127.0.0.1:1" in message
        assert "secret" not in message


def test_a_silent_redis_fails_within_the_timeout_and_the_next_connection_serves(
    store_settings: Settings, store_proxy: TcpProxy
) -> None:
    record = new_record()

    async def scenario(store: TaskStore) -> tuple[float, StoredRecord | None]:
        assert await store.create(record) is None
        store_proxy.freeze()  # the open connection goes silent; new ones pass
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.get(record.id)
        seconds = time.monotonic() - started
        return seconds, await store.get(record.id)

    seconds, stored = run(through(store_proxy, store_settings), scenario)
    assert seconds < DOWN_WITHIN_SECONDS  # no endless retries
    assert stored is not None
    assert stored.id == record.id


def test_a_dropped_connection_is_replaced_at_once(store_settings: Settings, store_proxy: TcpProxy) -> None:
    record = new_record()

    async def scenario(store: TaskStore) -> StoredRecord | None:
        assert await store.create(record) is None
        store_proxy.cut()  # as a restarted Redis or load balancer would
        return await store.get(record.id)

    stored = run(through(store_proxy, store_settings), scenario)
    assert stored is not None
    assert stored.id == record.id
