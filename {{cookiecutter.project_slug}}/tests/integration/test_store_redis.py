"""The Redis task store against the real Redis at TASK_STORE_URL: what it keeps, under which keys and
for how long, and that its check-then-write steps hold under concurrency. What every store promises,
and how it fails, is test_task_store.py's."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.store import StoredRecord, TaskStore, Update

from .stores import TTL_SECONDS, new_key, new_record, race_for_keys, remove_expired, run, write


@pytest.fixture
def peek(task_store_url: str) -> Iterator[redis.Redis]:
    """A client of our own, to look at what the store wrote."""
    with redis.Redis.from_url(task_store_url, decode_responses=True) as client:
        yield client


def record_key(settings: Settings, task_id: str) -> str:
    return f"{settings.queue_name}.task.{task_id}"


def idempotency_key(settings: Settings, key: str) -> str:
    return f"{settings.queue_name}.idempotency.{key}"


def test_records_and_keys_are_named_after_the_queue_and_carry_the_ttl(
    store_settings: Settings, peek: redis.Redis
) -> None:
    key = new_key()
    record = new_record(key)
    assert run(store_settings, lambda store: store.create(record)) is None
    names = {record_key(store_settings, record.id), idempotency_key(store_settings, key)}
    assert set(peek.scan_iter(match=f"{store_settings.queue_name}*")) == names
    assert peek.get(idempotency_key(store_settings, key)) == record.id
    for name in names:
        assert TTL_SECONDS * 1000 - 60_000 < peek.pttl(name) <= TTL_SECONDS * 1000


def test_a_second_create_with_the_same_key_leaves_the_key_to_the_holder(
    store_settings: Settings, peek: redis.Redis
) -> None:
    key = new_key()
    first, second = new_record(key), new_record(key, task_type="other")

    async def scenario(store: TaskStore) -> StoredRecord | None:
        assert await store.create(first) is None
        await store.accepted(first.id)
        return await store.create(second)

    assert run(store_settings, scenario) is not None
    assert peek.get(idempotency_key(store_settings, key)) == first.id
    assert peek.exists(record_key(store_settings, second.id)) == 0


def test_concurrent_creates_with_one_key_have_exactly_one_winner(store_settings: Settings, peek: redis.Redis) -> None:
    keys, winners, _ = race_for_keys(store_settings)
    for key, winner in zip(keys, winners, strict=True):
        assert peek.get(idempotency_key(store_settings, key)) == winner
    stored = {name.rpartition(".")[2] for name in peek.scan_iter(match=record_key(store_settings, "*"))}
    assert stored == set(winners)  # the losers wrote nothing


def test_a_key_whose_record_is_gone_is_taken_over(store_settings: Settings, peek: redis.Redis) -> None:
    key = new_key()
    gone, taking_over = new_record(key), new_record(key)
    assert run(store_settings, lambda store: store.create(gone)) is None
    peek.delete(record_key(store_settings, gone.id))
    assert run(store_settings, lambda store: store.create(taking_over)) is None
    assert peek.get(idempotency_key(store_settings, key)) == taking_over.id
    assert peek.exists(record_key(store_settings, taking_over.id)) == 1


def test_forget_deletes_the_hash_and_the_key_goes_to_the_next(store_settings: Settings, peek: redis.Redis) -> None:
    key = new_key()
    forgotten, next_one = new_record(key), new_record(key)

    async def scenario(store: TaskStore) -> StoredRecord | None:
        assert await store.create(forgotten) is None
        await store.forget(forgotten.id, key)
        return await store.create(next_one)

    assert run(store_settings, scenario) is None
    assert peek.get(idempotency_key(store_settings, key)) == next_one.id
    assert peek.exists(record_key(store_settings, forgotten.id)) == 0


def test_forget_leaves_a_key_that_another_task_holds(store_settings: Settings, peek: redis.Redis) -> None:
    key = new_key()
    holder, other = new_record(key), new_record()

    async def scenario(store: TaskStore) -> tuple[StoredRecord | None, StoredRecord | None]:
        assert await store.create(holder) is None
        assert await store.create(other) is None
        await store.forget(other.id, key)
        return await store.get(other.id), await store.get(holder.id)

    other_stored, holder_stored = run(store_settings, scenario)
    assert other_stored is None
    assert holder_stored is not None
    assert holder_stored.id == holder.id
    assert peek.get(idempotency_key(store_settings, key)) == holder.id


def test_accepted_and_write_leave_no_hash_for_a_missing_record(store_settings: Settings, peek: redis.Redis) -> None:
    record, missing = new_record(), str(uuid.uuid4())
    updates = [Update(missing, "succeeded", 1, time.time(), result="{}"), Update(record.id, "running", 1, time.time())]

    async def scenario(store: TaskStore) -> None:
        assert await store.create(record) is None
        await store.accepted(missing)
        await write(store, updates)

    run(store_settings, scenario)
    assert peek.exists(record_key(store_settings, missing)) == 0


def test_a_cleared_field_is_an_absent_hash_field(store_settings: Settings, peek: redis.Redis) -> None:
    record = new_record()
    start, name = record.created_at, record_key(store_settings, record.id)
    failing = Update(record.id, "retrying", 1, start + 1, next_attempt_at=start + 3, error="boom")
    running = Update(record.id, "running", 2, start + 3)
    succeeded = Update(record.id, "succeeded", 2, start + 4.25, result='{"width": 640}')
    assert run(store_settings, lambda store: store.create(record)) is None
    run(store_settings, lambda store: write(store, [failing]))
    assert {"error", "next_attempt_at"} <= set(peek.hkeys(name))
    run(store_settings, lambda store: write(store, [running, succeeded]))
    assert not set(peek.hkeys(name)) & {"error", "next_attempt_at"}


def test_write_counts_the_ttl_from_the_last_change(store_settings: Settings, peek: redis.Redis) -> None:
    key = new_key()
    record = new_record(key)
    names = [record_key(store_settings, record.id), idempotency_key(store_settings, key)]
    assert run(store_settings, lambda store: store.create(record)) is None
    for name in names:
        peek.pexpire(name, 10_000)  # as if most of the TTL had passed
    run(store_settings, lambda store: write(store, [Update(record.id, "running", 1, record.created_at + 1)]))
    for name in names:
        assert peek.pttl(name) > TTL_SECONDS * 1000 - 60_000


def test_a_result_keeps_its_json_text_exactly(store_settings: Settings) -> None:
    record = new_record()
    result = json.dumps({"caption": 'a "quoted"\nline, café ✓', "sizes": [1, 2.5, None], "nested": {"ok": True}})

    async def scenario(store: TaskStore) -> StoredRecord | None:
        assert await store.create(record) is None
        await write(store, [Update(record.id, "succeeded", 1, record.created_at + 1, result=result)])
        return await store.get(record.id)

    stored = run(store_settings, scenario)
    assert stored is not None
    assert stored.result == result
    assert json.loads(stored.result)["caption"] == 'a "quoted"\nline, café ✓'


def test_remove_expired_leaves_the_work_to_redis(store_settings: Settings) -> None:
    assert run(store_settings, remove_expired) == 0
