"""The PostgreSQL task store against the real database at TASK_STORE_URL: what it keeps and for how
long, that its races (schema, idempotency keys, expiry) are settled under concurrency, and how it fails."""
{%- set is_async = cookiecutter.consumer == "async" %}

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import psycopg
import pytest
from psycopg import sql

from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.store import NewRecord, StoredRecord, StoreUnavailable, TaskStore, Update
from {{ cookiecutter.project_slug }}.store.base import STORE_TIMEOUT_SECONDS
from {{ cookiecutter.project_slug }}.store.postgresql import EXPIRY_LOCK, open_store

from .tcp_proxy import TcpProxy

T = TypeVar("T")
TTL_SECONDS = 60.0  # the least the settings allow: a record aged by twice that has expired
DOWN_WITHIN_SECONDS = 2.0


@pytest.fixture
def store_settings(task_store_url: str) -> Settings:
    """The shared table (its name is fixed): each test's records have ids and keys of their own."""
    return Settings(task_store_url=task_store_url, task_record_ttl_seconds=TTL_SECONDS)


@pytest.fixture
def schema_settings(task_store_url: str) -> Iterator[Settings]:
    """A schema of the test's own, first on the search_path, dropped after it: for what must start from
    no table at all, or count every record of the table."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(task_store_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    parts = urlsplit(task_store_url)
    query = urlencode([*parse_qsl(parts.query), ("options", f"-c search_path={schema}")], quote_via=quote)
    yield Settings(task_store_url=parts._replace(query=query).geturl(), task_record_ttl_seconds=TTL_SECONDS)
    with psycopg.connect(task_store_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def peek(task_store_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of our own, to look at what the store wrote."""
    with psycopg.connect(task_store_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def store_proxy(task_store_url: str) -> Iterator[TcpProxy]:
    parts = urlsplit(task_store_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    proxy.up()
    yield proxy
    proxy.down()


def through(proxy: TcpProxy, settings: Settings) -> Settings:
    """The same settings, with the database reached through `proxy`."""
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
    """Microseconds, as timestamptz keeps them, so that a time reads back equal."""
    return round(time.time(), 6)


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


def aged(record: NewRecord) -> Update:
    """An update that leaves `record` last changed twice the TTL ago."""
    return Update(record.id, "running", 1, time.time() - 2 * TTL_SECONDS)


def rows(conn: psycopg.Connection[Any], *task_ids: str, table: str = "task_records") -> dict[str, Any]:
    """The table's rows of `task_ids`, by id: (idempotency_key, status), whether live or expired."""
    query = sql.SQL("SELECT id, idempotency_key, status FROM {} WHERE id = ANY(%s)").format(sql.Identifier(table))
    return {task_id: (key, status) for task_id, key, status in conn.execute(query, (list(task_ids),))}


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


def test_a_second_create_with_the_same_key_returns_the_holder_and_writes_nothing(
    store_settings: Settings, peek: psycopg.Connection[Any]
) -> None:
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
    assert rows(peek, first.id, second.id) == {first.id: (key, "queued")}


def test_concurrent_creates_with_one_key_have_exactly_one_winner(
    store_settings: Settings, peek: psycopg.Connection[Any]
) -> None:
    rounds, contenders = 5, 8
    keys = [new_key() for _ in range(rounds)]
    records = [[new_record(key) for key in keys] for _ in range(contenders)]  # each contender's, round by round
    start = threading.Barrier(contenders)

    async def contend(store: TaskStore, n: int) -> list[StoredRecord | None]:
        await store.ping()  # connected (and the schema looked at) before the first round
        replies = []
        for record in records[n]:
            start.wait(timeout=10)
            replies.append(await store.create(record))
        return replies

    replies = in_parallel(contenders, store_settings, contend)
    winners = []
    for n in range(rounds):
        outcomes = [(mine[n].id, theirs[n]) for mine, theirs in zip(records, replies, strict=True)]
        [winner] = [task_id for task_id, reply in outcomes if reply is None]
        assert {reply.id for _, reply in outcomes if reply is not None} == {winner}
        winners.append(winner)
    everyone = [record.id for mine in records for record in mine]
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


def test_forget_removes_the_record_and_frees_its_key(store_settings: Settings, peek: psycopg.Connection[Any]) -> None:
    key = new_key()
    forgotten, next_one = new_record(key), new_record(key)

    async def scenario(store: TaskStore) -> tuple[StoredRecord | None, StoredRecord | None]:
        assert await store.create(forgotten) is None
        await store.forget(forgotten.id, key)
        return await store.get(forgotten.id), await store.create(next_one)

    assert run(store_settings, scenario) == (None, None)  # gone, and the key was free for the next
    assert rows(peek, forgotten.id, next_one.id) == {next_one.id: (key, "queued")}


def test_accepted_marks_a_record_and_never_creates_one(store_settings: Settings, peek: psycopg.Connection[Any]) -> None:
    record, missing = new_record(new_key()), str(uuid.uuid4())

    async def scenario(store: TaskStore) -> StoredRecord | None:
        assert await store.create(record) is None
        await store.accepted(record.id)
        await store.accepted(missing)
        return await store.get(record.id)

    stored = run(store_settings, scenario)
    assert stored is not None
    assert stored.accepted
    assert rows(peek, missing) == {}


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


def test_write_never_creates_a_record_that_is_gone(store_settings: Settings, peek: psycopg.Connection[Any]) -> None:
    record, missing = new_record(), str(uuid.uuid4())
    gone = Update(missing, "succeeded", 1, time.time(), result="{}")

    async def scenario(store: TaskStore) -> StoredRecord | None:
        assert await store.create(record) is None
        await write(store, [gone, Update(record.id, "running", 1, time.time())])
        return await store.get(record.id)

    stored = run(store_settings, scenario)
    assert stored is not None
    assert stored.status == "running"  # the batch went on past the missing record
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


def test_a_database_that_is_down_fails_every_call_quickly_but_not_the_start(store_settings: Settings) -> None:
    settings = store_settings.model_copy(update={"task_store_url": "postgresql://user:secret@127.0.0.1:1/test"})
    record = new_record(new_key())
    calls: dict[str, Callable[[TaskStore], Awaitable[object]]] = {
        "create": lambda store: store.create(record),
        "get": lambda store: store.get(record.id),
        "accepted": lambda store: store.accepted(record.id),
        "forget": lambda store: store.forget(record.id, record.idempotency_key),
        "ping": lambda store: store.ping(),
        "write": lambda store: write(store, [Update(record.id, "running", 1, time.time())]),
        "remove_expired": remove_expired,
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
        store = open_store(settings)
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


def test_a_silent_database_fails_within_the_timeout_and_the_next_connection_serves(
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
    assert stored is not None, "no new connection served within 10 s"
    assert stored.id == record.id


def test_dropped_connections_are_replaced_at_once(store_settings: Settings, store_proxy: TcpProxy) -> None:
    records = [new_record() for _ in range(4)]

    async def scenario(store: TaskStore) -> tuple[StoredRecord | None, float]:
        await asyncio.gather(*(store.create(record) for record in records))  # a few connections in the pool
        store_proxy.cut()  # every one of them reset, as a restarted database or load balancer would
        started = time.monotonic()
        return await store.get(records[0].id), time.monotonic() - started

    stored, seconds = run(through(store_proxy, store_settings), scenario)
    assert stored is not None
    assert stored.id == records[0].id
    assert seconds < STORE_TIMEOUT_SECONDS / 2  # no waiting: the dead are skipped, a new one made


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
