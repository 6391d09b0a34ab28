"""The TaskStore protocol's promises, against the store this project was made with, at TASK_STORE_URL: what a
record reads back as, what an idempotency key and the worker's writes do to it, and how the store fails. What
the store keeps where, and how it expires, is for its own tests (test_store_{{ cookiecutter.task_store }}.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import pytest

from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.store import NewRecord, StoredRecord, StoreUnavailable, TaskStore, Update
from {{ cookiecutter.project_slug }}.store.base import STORE_TIMEOUT_SECONDS
from {{ cookiecutter.project_slug }}.store.factory import make_store
{%- if cookiecutter.task_store == "postgresql" %}

from .stores import DOWN_WITHIN_SECONDS, new_key, new_record, now, remove_expired, run, through, write
{%- else %}

from .stores import DOWN_WITHIN_SECONDS, new_key, new_record, now, run, through, write
{%- endif %}
from .tcp_proxy import TcpProxy


def test_a_record_reads_back_with_every_field(store_settings: Settings) -> None:
    created_at = now()
    record = NewRecord(
        id=str(uuid.uuid4()),
        type="resize",
        status="scheduled",
        created_at=created_at,
        next_attempt_at=created_at + 60.5,
        idempotency_key=new_key(),
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
        created_at=created_at,
        updated_at=created_at,
        next_attempt_at=created_at + 60.5,
        request_hash="sha256:0123",
        accepted=False,
    )
    assert unknown is None


def test_a_second_create_with_the_same_key_returns_the_holder_and_writes_nothing(store_settings: Settings) -> None:
    key = new_key()
    first, second = new_record(key), new_record(key, task_type="other")

    async def scenario(store: TaskStore) -> tuple[StoredRecord | None, StoredRecord | None, StoredRecord | None]:
        assert await store.create(first) is None
        await store.accepted(first.id)
        return await store.create(second), await store.get(first.id), await store.get(second.id)

    holder, first_stored, second_stored = run(store_settings, scenario)
    assert holder is not None
    assert holder == first_stored
    assert (holder.id, holder.type, holder.request_hash, holder.accepted) == (first.id, "resize", "sha256:0123", True)
    assert second_stored is None


def test_forget_removes_the_record_and_frees_its_key(store_settings: Settings) -> None:
    key = new_key()
    forgotten, next_one = new_record(key), new_record(key)

    async def scenario(store: TaskStore) -> tuple[StoredRecord | None, StoredRecord | None]:
        assert await store.create(forgotten) is None
        await store.forget(forgotten.id, key)
        return await store.get(forgotten.id), await store.create(next_one)

    assert run(store_settings, scenario) == (None, None)  # gone, and the key was free for the next


def test_accepted_marks_a_record_and_never_creates_one(store_settings: Settings) -> None:
    record, missing = new_record(new_key()), str(uuid.uuid4())

    async def scenario(store: TaskStore) -> tuple[StoredRecord | None, StoredRecord | None]:
        assert await store.create(record) is None
        await store.accepted(record.id)
        await store.accepted(missing)
        return await store.get(record.id), await store.get(missing)

    stored, not_created = run(store_settings, scenario)
    assert stored is not None
    assert stored.accepted
    assert not_created is None


def test_write_updates_a_record_in_order_and_clears_absent_fields(store_settings: Settings) -> None:
    record = new_record(new_key())
    start = record.created_at
    failing = Update(record.id, "retrying", 1, start + 1, next_attempt_at=start + 3, error="boom")
    running = Update(record.id, "running", 2, start + 3)
    succeeded = Update(record.id, "succeeded", 2, start + 4.25, result='{"width": 640}')

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
    assert after_failing.next_attempt_at == start + 3
    assert after_failing.updated_at == start + 1
    assert after_success == StoredRecord(
        id=record.id,
        type="resize",
        status="succeeded",
        attempts=2,
        created_at=start,
        updated_at=start + 4.25,
        result='{"width": 640}',
        request_hash="sha256:0123",
        accepted=True,
    )


def test_write_never_creates_a_record_that_is_gone(store_settings: Settings) -> None:
    record, missing = new_record(), str(uuid.uuid4())
    gone = Update(missing, "succeeded", 1, time.time(), result="{}")

    async def scenario(store: TaskStore) -> tuple[StoredRecord | None, StoredRecord | None]:
        assert await store.create(record) is None
        await write(store, [gone, Update(record.id, "running", 1, time.time())])
        return await store.get(record.id), await store.get(missing)

    stored, not_created = run(store_settings, scenario)
    assert stored is not None
    assert stored.status == "running"  # the batch went on past the missing record
    assert not_created is None


def test_a_store_that_is_down_fails_every_call_quickly_but_not_the_start(store_settings: Settings) -> None:
    nothing_there = urlsplit(store_settings.task_store_url)._replace(netloc="user:secret@127.0.0.1:1")
    settings = store_settings.model_copy(update={"task_store_url": urlunsplit(nothing_there)})
    record = new_record(new_key())
    calls: dict[str, Callable[[TaskStore], Awaitable[object]]] = {
        "create": lambda store: store.create(record),
        "get": lambda store: store.get(record.id),
        "accepted": lambda store: store.accepted(record.id),
        "forget": lambda store: store.forget(record.id, record.idempotency_key),
        "ping": lambda store: store.ping(),
        "write": lambda store: write(store, [Update(record.id, "running", 1, time.time())]),
{%- if cookiecutter.task_store == "postgresql" %}
        "remove_expired": remove_expired,
{%- endif %}
    }

    async def scenario(store: TaskStore) -> dict[str, tuple[float, str]]:
        failures: dict[str, tuple[float, str]] = {}
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as failure:
                await call(store)
            failures[name] = (time.monotonic() - started, str(failure.value))
        return failures

    async def start_and_close() -> float:
        store = make_store(settings)
        started = time.monotonic()
        await store.start()  # with nothing listening: no wait, no error
        seconds = time.monotonic() - started
        await store.close()
        return seconds

    assert asyncio.run(start_and_close()) < 0.5
    failures = run(settings, scenario)
    assert failures.keys() == calls.keys()
    for name, (seconds, message) in failures.items():
        assert seconds < DOWN_WITHIN_SECONDS, name
        assert "127.0.0.1:1" in message
        assert "secret" not in message


def test_a_silent_store_fails_within_the_timeout_and_the_next_connection_serves(
    store_settings: Settings, store_proxy: TcpProxy
) -> None:
    record = new_record()

    async def scenario(store: TaskStore) -> tuple[list[float], StoredRecord | None]:
        assert await store.create(record) is None
        store_proxy.freeze()  # the open connections go silent (one may be half-way through its handshake)
        failures: list[float] = []
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    return failures, await store.get(record.id)  # on a new connection, in the end
                except StoreUnavailable:
                    failures.append(time.monotonic() - started)
            return failures, None
        finally:
            store_proxy.cut()  # ends the calls left waiting on the silent connections

    failures, stored = run(through(store_proxy, store_settings), scenario)
    assert failures, "a call on a silent connection did not fail"
    assert max(failures) < DOWN_WITHIN_SECONDS
{%- if cookiecutter.task_store == "redis" %}
    assert len(failures) == 1  # its one connection went silent: the very next call served
{%- endif %}
    assert stored is not None, "no new connection served within 10 s"
    assert stored.id == record.id


def test_dropped_connections_are_replaced_at_once(store_settings: Settings, store_proxy: TcpProxy) -> None:
    records = [new_record() for _ in range(4)]

    async def scenario(store: TaskStore) -> tuple[StoredRecord | None, float]:
        await asyncio.gather(*(store.create(record) for record in records))  # a few connections in use
        store_proxy.cut()  # every one of them reset, as a restarted store or load balancer would
        started = time.monotonic()
        return await store.get(records[0].id), time.monotonic() - started

    stored, seconds = run(through(store_proxy, store_settings), scenario)
    assert stored is not None
    assert stored.id == records[0].id
    assert seconds < STORE_TIMEOUT_SECONDS / 2  # no waiting: the dead are skipped, a new one made
