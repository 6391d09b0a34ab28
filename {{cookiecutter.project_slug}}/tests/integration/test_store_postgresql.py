"""The PostgreSQL task store against the real database at TASK_STORE_URL: what it keeps and for how
long, and that its races (schema, idempotency keys, expiry) are settled under concurrency. What every
store promises, and how it fails, is test_task_store.py's."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import psycopg
import pytest
from psycopg import sql

from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.store import NewRecord, StoredRecord, StoreUnavailable, TaskStore, Update
from {{ cookiecutter.project_slug }}.store.postgresql import EXPIRY_LOCK

from .stores import TTL_SECONDS, in_parallel, new_key, new_record, race_for_keys, remove_expired, run, through, write
from .tcp_proxy import TcpProxy


@pytest.fixture
def schema_settings(task_store_url: str) -> Iterator[Settings]:
    """A schema of the test's own, first on the search_path, dropped after it: for what must start from
    no table at all, or count every record of the table."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(task_store_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    parts = urlsplit(task_store_url)
    query = urlencode([*parse_qsl(parts.query), ("options", f"-c search_path={schema}")], quote_via=quote)
    url = parts._replace(query=query).geturl()
    yield Settings(task_store_url=url, task_record_ttl_seconds=TTL_SECONDS, max_delay_seconds=0)
    with psycopg.connect(task_store_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def peek(task_store_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of our own, to look at what the store wrote."""
    with psycopg.connect(task_store_url, autocommit=True) as conn:
        yield conn


def aged(record: NewRecord) -> Update:
    """An update that leaves `record` last changed twice the TTL ago."""
    return Update(record.id, "running", 1, time.time() - 2 * TTL_SECONDS)


def rows(conn: psycopg.Connection[Any], *task_ids: str, table: str = "task_records") -> dict[str, Any]:
    """The table's rows of `task_ids`, by id: (idempotency_key, status), whether live or expired."""
    query = sql.SQL("SELECT id, idempotency_key, status FROM {} WHERE id = ANY(%s)").format(sql.Identifier(table))
    return {task_id: (key, status) for task_id, key, status in conn.execute(query, (list(task_ids),))}


def test_concurrent_starts_on_an_empty_database_create_the_schema_once(schema_settings: Settings) -> None:
    contenders = 8
    start = threading.Barrier(contenders)

    async def first_call(store: TaskStore, n: int) -> None:
        start.wait(timeout=10)
        await store.ping()  # each store's first call creates the schema, all at the same moment

    in_parallel(contenders, schema_settings, first_call)
    run(schema_settings, lambda store: store.ping())  # and a store that finds it made uses it as it is
    with psycopg.connect(schema_settings.task_store_url, autocommit=True) as conn:
        columns: dict[str, str] = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = 'task_records'"
            ).fetchall()
        )
        indexes: dict[str, str] = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
                " AND tablename = 'task_records'"
            ).fetchall()
        )
    assert columns == {
        "id": "text",
        "type": "text",
        "status": "text",
        "attempts": "integer",
        "created_at": "timestamp with time zone",
        "updated_at": "timestamp with time zone",
        "next_attempt_at": "timestamp with time zone",
        "error": "text",
        "result": "jsonb",
        "idempotency_key": "text",
        "request_hash": "text",
        "accepted": "boolean",
    }
    assert "UNIQUE" in indexes["task_records_idempotency_key"]
    assert "WHERE (idempotency_key IS NOT NULL)" in indexes["task_records_idempotency_key"]
    assert "(updated_at)" in indexes["task_records_updated_at"]


def test_a_table_dropped_under_a_running_store_is_created_again(schema_settings: Settings) -> None:
    record = new_record()

    async def scenario(store: TaskStore) -> StoredRecord | None:
        await store.ping()
        with psycopg.connect(schema_settings.task_store_url, autocommit=True) as conn:
            conn.execute("DROP TABLE task_records")
        with pytest.raises(StoreUnavailable, match="UndefinedTable"):
            await store.create(record)
        assert await store.create(record) is None
        return await store.get(record.id)

    stored = run(schema_settings, scenario)
    assert stored is not None
    assert stored.id == record.id


def test_a_second_create_with_the_same_key_leaves_the_row_of_the_holder_alone(
    store_settings: Settings, peek: psycopg.Connection[Any]
) -> None:
    key = new_key()
    first, second = new_record(key), new_record(key, task_type="other")

    async def scenario(store: TaskStore) -> StoredRecord | None:
        assert await store.create(first) is None
        await store.accepted(first.id)
        return await store.create(second)

    assert run(store_settings, scenario) is not None
    assert rows(peek, first.id, second.id) == {first.id: (key, "queued")}


def test_concurrent_creates_with_one_key_have_exactly_one_winner(
    store_settings: Settings, peek: psycopg.Connection[Any]
) -> None:
    keys, winners, everyone = race_for_keys(store_settings)
    assert rows(peek, *everyone) == {winner: (key, "queued") for winner, key in zip(winners, keys, strict=True)}


def test_concurrent_creates_with_one_key_in_one_store_have_exactly_one_winner(store_settings: Settings) -> None:
    key = new_key()
    records = [new_record(key) for _ in range(8)]

    async def scenario(store: TaskStore) -> list[StoredRecord | None]:
        return await asyncio.gather(*(store.create(record) for record in records))

    replies = run(store_settings, scenario)
    [winner] = [record.id for record, reply in zip(records, replies, strict=True) if reply is None]
    assert {reply.id for reply in replies if reply is not None} == {winner}


def test_an_expired_holder_gives_its_key_up(store_settings: Settings, peek: psycopg.Connection[Any]) -> None:
    key = new_key()
    old, new = new_record(key), new_record(key)

    async def scenario(store: TaskStore) -> tuple[StoredRecord | None, StoredRecord | None]:
        assert await store.create(old) is None
        await write(store, [aged(old)])
        return await store.create(new), await store.get(new.id)

    taken_over, stored = run(store_settings, scenario)
    assert taken_over is None
    assert stored is not None
    assert rows(peek, old.id, new.id) == {new.id: (key, "queued")}


def test_forget_deletes_the_row_and_the_key_goes_to_the_next(
    store_settings: Settings, peek: psycopg.Connection[Any]
) -> None:
    key = new_key()
    forgotten, next_one = new_record(key), new_record(key)

    async def scenario(store: TaskStore) -> StoredRecord | None:
        assert await store.create(forgotten) is None
        await store.forget(forgotten.id, key)
        return await store.create(next_one)

    assert run(store_settings, scenario) is None
    assert rows(peek, forgotten.id, next_one.id) == {next_one.id: (key, "queued")}


def test_accepted_and_write_leave_no_row_for_a_missing_record(
    store_settings: Settings, peek: psycopg.Connection[Any]
) -> None:
    record, missing = new_record(), str(uuid.uuid4())
    updates = [Update(missing, "succeeded", 1, time.time(), result="{}"), Update(record.id, "running", 1, time.time())]

    async def scenario(store: TaskStore) -> None:
        assert await store.create(record) is None
        await store.accepted(missing)
        await write(store, updates)

    run(store_settings, scenario)
    assert rows(peek, missing) == {}


def test_a_result_reads_back_as_the_same_json(store_settings: Settings) -> None:
    record = new_record()
    result = json.dumps({"caption": 'a "quoted"\nline, café ✓', "sizes": [1, 2.5, None], "big": 2**70, "ok": True})

    async def scenario(store: TaskStore) -> StoredRecord | None:
        assert await store.create(record) is None
        await write(store, [Update(record.id, "succeeded", 1, time.time(), result=result)])
        return await store.get(record.id)

    stored = run(store_settings, scenario)
    assert stored is not None
    assert stored.result is not None
    assert json.loads(stored.result) == json.loads(result)  # jsonb keeps the value, not the spacing


def test_an_update_the_database_refuses_loses_its_result_and_sinks_no_other(store_settings: Settings) -> None:
    """NaN is no JSON, and jsonb holds no \\u0000; nor does text hold NUL or lone surrogates."""
    refused, other = new_record(), new_record()
    updates = [
        Update(refused.id, "succeeded", 1, time.time(), result='{"score": NaN}', error="a\x00b \udcff"),
        Update(other.id, "succeeded", 1, time.time(), result='{"name": "x\\u0000y"}'),
    ]

    async def scenario(store: TaskStore) -> list[StoredRecord | None]:
        assert await store.create(refused) is None
        assert await store.create(other) is None
        await write(store, updates)
        return [await store.get(refused.id), await store.get(other.id)]

    stored = run(store_settings, scenario)
    assert [(record.status, record.result) if record else None for record in stored] == [("succeeded", None)] * 2
    assert stored[0] is not None
    assert stored[0].error == "a\ufffdb \\udcff"


def test_an_expired_record_is_not_served_nor_brought_back(
    store_settings: Settings, peek: psycopg.Connection[Any]
) -> None:
    record = new_record(new_key())

    async def scenario(store: TaskStore) -> tuple[StoredRecord | None, StoredRecord | None]:
        assert await store.create(record) is None
        await write(store, [aged(record)])
        expired = await store.get(record.id)
        await write(store, [Update(record.id, "succeeded", 2, time.time())])  # too late: it stays expired
        return expired, await store.get(record.id)

    assert run(store_settings, scenario) == (None, None)
    assert rows(peek, record.id) == {record.id: (record.idempotency_key, "running")}  # there, until removed


def test_remove_expired_deletes_the_expired_records_only(schema_settings: Settings) -> None:
    expired, live = [new_record(new_key()) for _ in range(3)], new_record(new_key())

    async def scenario(store: TaskStore) -> tuple[int, int, list[StoredRecord | None]]:
        for record in [*expired, live]:
            assert await store.create(record) is None
        await write(store, [aged(record) for record in expired])
        removed, again = await remove_expired(store), await remove_expired(store)
        return removed, again, [await store.get(record.id) for record in [*expired, live]]

    removed, again, stored = run(schema_settings, scenario)
    assert (removed, again) == (3, 0)
    assert [record.id if record else None for record in stored] == [None, None, None, live.id]
    with psycopg.connect(schema_settings.task_store_url, autocommit=True) as conn:
        assert rows(conn, *(record.id for record in [*expired, live])).keys() == {live.id}


def test_remove_expired_leaves_the_work_to_the_worker_holding_the_lock(schema_settings: Settings) -> None:
    record = new_record()

    async def scenario(store: TaskStore) -> tuple[int, int]:
        assert await store.create(record) is None
        await write(store, [aged(record)])
        with psycopg.connect(schema_settings.task_store_url) as other_worker, other_worker.transaction():
            other_worker.execute("SELECT pg_advisory_xact_lock(%s)", (EXPIRY_LOCK,))
            while_held = await remove_expired(store)
        return while_held, await remove_expired(store)

    assert run(schema_settings, scenario) == (0, 1)


def test_concurrent_remove_expired_calls_delete_each_record_once(schema_settings: Settings) -> None:
    records, workers = [new_record() for _ in range(50)], 4
    start = threading.Barrier(workers)

    async def prepare(store: TaskStore) -> None:
        for record in records:
            assert await store.create(record) is None
        await write(store, [aged(record) for record in records])

    async def expire(store: TaskStore, n: int) -> int:
        await store.ping()
        start.wait(timeout=10)
        return await remove_expired(store)

    run(schema_settings, prepare)
    removed = in_parallel(workers, schema_settings, expire)
    assert sorted(removed) == [0] * (workers - 1) + [len(records)]  # one batch: whoever took the lock did it all


def test_the_store_serves_again_soon_after_an_outage(store_settings: Settings, store_proxy: TcpProxy) -> None:
    record = new_record()

    async def answers(store: TaskStore) -> bool:
        try:
            return await store.get(record.id) is not None
        except StoreUnavailable:
            return False

    async def scenario(store: TaskStore) -> float:
        assert await store.create(record) is None
        store_proxy.down()
        for _ in range(3):  # long enough for the pool to back off between its attempts
            assert not await answers(store)
        store_proxy.up()
        back = time.monotonic()
        deadline = back + 10
        while not await answers(store):
            assert time.monotonic() < deadline, "the store did not serve again within 10 s"
            await asyncio.sleep(0.05)
        return time.monotonic() - back

    assert run(through(store_proxy, store_settings), scenario) < 10
