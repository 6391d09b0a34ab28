"""Task records in PostgreSQL: one table that every process shares, its races settled by the database."""
{%- set is_async = cookiecutter.consumer == "async" %}

from __future__ import annotations

import asyncio
import contextlib
{%- if not is_async %}
import functools
{%- endif %}
import logging
import os
import time
{%- if is_async %}
from collections.abc import Awaitable, Callable, Iterator, Sequence
{%- else %}
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
{%- endif %}
from typing import TYPE_CHECKING, Any, TypeVar, cast

import psycopg
from psycopg.conninfo import conninfo_to_dict
{%- if is_async %}
from psycopg_pool import AsyncConnectionPool
{%- else %}
from psycopg_pool import ConnectionPool
{%- endif %}

from .base import STORE_TIMEOUT_SECONDS, NewRecord, Status, StoredRecord, StoreUnavailable, TaskStore, Update

if TYPE_CHECKING:
    from psycopg.rows import TupleRow

    from ..settings import Settings
{%- if is_async %}

    Connection = psycopg.AsyncConnection[TupleRow]
{%- else %}

    Connection = psycopg.Connection[TupleRow]
{%- endif %}

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_LOCK = 0x7461736B5F736368  # b"task_sch": one process at a time creates the schema
EXPIRY_LOCK = 0x7461736B5F657870  # b"task_exp": one worker at a time removes expired records
EXPIRY_BATCH = 5_000  # records one DELETE removes (some 10 ms): well within the statement timeout
EXPIRY_BUDGET_SECONDS = 2.0  # remove_expired stops after a batch that ends later, and leaves the rest for next time
CREATE_ATTEMPTS = 3  # a key whose holder vanishes (forgotten) between our insert and our look is tried again

POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
# Every connection: a statement ends within STORE_TIMEOUT_SECONDS, a transaction left open is ended by the
# server, and a link that goes dead is noticed by the kernel (not 15 minutes of TCP retries) even while a
# blocking call waits on it. psycopg makes a connect_timeout under 2 s 2 s: callers wait no longer than
# the pool's timeout anyway.
CONNECT_TIMEOUT_SECONDS = 2
STATEMENT_TIMEOUT_MS = round(STORE_TIMEOUT_SECONDS * 1000)
SERVER_OPTIONS = f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c idle_in_transaction_session_timeout=10000"
TCP_OPTIONS = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 2, "keepalives_count": 3}
TCP_USER_TIMEOUT_MS = 10_000

# The schema, created by the first call that reaches the database (which may be down at start-up), under
# an advisory lock: concurrent CREATE ... IF NOT EXISTS of one table can fail. Where it all exists already
# nothing is created, so a role without the CREATE privilege works with a schema made by someone else.
SCHEMA_EXISTS = (
    "SELECT to_regclass('task_records_idempotency_key') IS NOT NULL"
    " AND to_regclass('task_records_updated_at') IS NOT NULL"
)
SCHEMA = (
    f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})",
    """CREATE TABLE IF NOT EXISTS task_records (
    id text PRIMARY KEY,
    type text NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    next_attempt_at timestamptz,
    error text,
    result jsonb,
    idempotency_key text,
    request_hash text,
    accepted boolean NOT NULL DEFAULT false
)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS task_records_idempotency_key ON task_records (idempotency_key)"
    " WHERE idempotency_key IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS task_records_updated_at ON task_records (updated_at)",
)

# A record lives TASK_RECORD_TTL_SECONDS after its last change (by the database's clock); an older one
# is not served, nor updated, even before remove_expired deletes it.
EXPIRED = "updated_at < now() - make_interval(secs => %(ttl)s)"
LIVE = "updated_at >= now() - make_interval(secs => %(ttl)s)"
# StoredRecord's fields, in its order; times as Unix seconds, the result as JSON text.
COLUMNS = (
    "id, type, status, attempts, extract(epoch FROM created_at)::float8, extract(epoch FROM updated_at)::float8,"
    " extract(epoch FROM next_attempt_at)::float8, error, result::text, request_hash, accepted"
)
GET = f"SELECT {COLUMNS} FROM task_records WHERE id = %(id)s AND {LIVE}"
HOLDER = f"SELECT {COLUMNS} FROM task_records WHERE idempotency_key = %(key)s"
INSERT = """INSERT INTO task_records
    (id, type, status, attempts, created_at, updated_at, next_attempt_at, idempotency_key, request_hash)
VALUES (
    %(id)s, %(type)s, %(status)s, 0, to_timestamp(%(created_at)s::float8), to_timestamp(%(created_at)s::float8),
    to_timestamp(%(next_attempt_at)s::float8), %(key)s, %(request_hash)s
)"""
# The key's holder that has expired gives the key up; a live one (committed, or being inserted by a
# concurrent transaction, which this insert then waits for) keeps it, and nothing is inserted.
FREE_KEY = f"DELETE FROM task_records WHERE idempotency_key = %(key)s AND {EXPIRED}"
INSERT_KEYED = f"{INSERT} ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id"
ACCEPTED = "UPDATE task_records SET accepted = true WHERE id = %(id)s"
FORGET = "DELETE FROM task_records WHERE id = %(id)s"  # the key lives in the row: it goes with it
PING = "SELECT 1"
WRITE = f"""UPDATE task_records SET
    status = %(status)s, attempts = %(attempts)s, updated_at = to_timestamp(%(updated_at)s::float8),
    next_attempt_at = to_timestamp(%(next_attempt_at)s::float8), error = %(error)s, result = %(result)s::jsonb
WHERE id = %(id)s AND {LIVE}"""
TRY_EXPIRY_LOCK = f"SELECT pg_try_advisory_xact_lock({EXPIRY_LOCK})"
# By ctid, found through the updated_at index; a record changed meanwhile has another ctid, and is kept.
REMOVE_EXPIRED = (
    f"DELETE FROM task_records WHERE ctid = ANY(ARRAY(SELECT ctid FROM task_records WHERE {EXPIRED}"
    f" LIMIT {EXPIRY_BATCH})) AND {EXPIRED}"
)


def connection_options(settings: Settings) -> dict[str, Any]:
    """Our connection parameters, over the URL's; server options (a search_path, say) are kept, ours added."""
    given = conninfo_to_dict(settings.task_store_url).get("options") or os.environ.get("PGOPTIONS", "")
    return {
        "autocommit": True,  # one statement, one round trip; transactions where they are needed
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "options": f"{given} {SERVER_OPTIONS}".strip(),
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        **TCP_OPTIONS,
    }


def record_params(record: NewRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "type": record.type,
        "status": record.status,
        "created_at": record.created_at,
        "next_attempt_at": record.next_attempt_at,
        "key": record.idempotency_key,
        "request_hash": record.request_hash,
    }


def text(value: str) -> str:
    """`value` as a text column takes it: without NUL, and without lone surrogates (which an exception's
    message may carry, from a file name, say), each replaced by what stands for it."""
    return value.encode("utf-8", "backslashreplace").decode().replace("\x00", "\ufffd")


def update_params(update: Update, ttl: float) -> dict[str, Any]:
    return {
        "id": update.id,
        "status": update.status,
        "attempts": update.attempts,
        "updated_at": update.updated_at,
        "next_attempt_at": update.next_attempt_at,
        "error": None if update.error is None else text(update.error),
        "result": update.result,
        "ttl": ttl,
    }


def record_of(row: tuple[Any, ...] | None) -> StoredRecord | None:
    if row is None:
        return None
    task_id, type_, status, attempts, created, updated, due, error, result, request_hash, accepted = row
    return StoredRecord(
        id=task_id,
        type=type_,
        status=cast("Status", status),
        attempts=attempts,
        created_at=created,
        updated_at=updated,
        next_attempt_at=due,
        error=error,
        result=result,
        request_hash=request_hash,
        accepted=accepted,
    )


def refused(params: dict[str, Any], error: Exception) -> dict[str, Any]:
    """An update the database refused (its result not JSON that jsonb takes: NaN, or \\u0000): its state without it."""
    reason = str(error).partition("\n")[0]
    logger.warning("task %s: its result is not kept, PostgreSQL refused it: %s", params["id"], reason)
    return {**params, "result": None}
{%- if is_async %}


async def alive(conn: Connection) -> bool:
    """False for a connection that died in the pool (the server restarted, a link was reset): it fails
    at once, and the pool replaces it. (The pool's own check backs off for a second after two of them.)"""
    try:
        await conn.execute("")
    except psycopg.OperationalError:
        return False
    return True


async def create_schema(conn: Connection) -> None:
    cursor = await conn.execute(SCHEMA_EXISTS)
    if (await cursor.fetchone()) == (True,):
        return
    async with conn.transaction():
        for statement in SCHEMA:
            await conn.execute(statement)


async def create_on(conn: Connection, record: NewRecord, ttl: float) -> StoredRecord | None:
    params = {**record_params(record), "ttl": ttl}
    if record.idempotency_key is None:
        await conn.execute(INSERT, params)
        return None
    async with conn.transaction():
        await conn.execute(FREE_KEY, params)
        for _ in range(CREATE_ATTEMPTS):
            cursor = await conn.execute(INSERT_KEYED, params)
            if await cursor.fetchone() is not None:
                return None
            cursor = await conn.execute(HOLDER, params)
            holder = record_of(await cursor.fetchone())
            if holder is not None:
                return holder
    raise StoreUnavailable(f"the idempotency key changed hands {CREATE_ATTEMPTS} times: try again")


async def get_on(conn: Connection, task_id: str, ttl: float) -> StoredRecord | None:
    cursor = await conn.execute(GET, {"id": task_id, "ttl": ttl})
    return record_of(await cursor.fetchone())


async def execute_on(conn: Connection, statement: str, params: dict[str, Any]) -> None:
    await conn.execute(statement, params)


async def write_on(conn: Connection, updates: Sequence[Update], ttl: float) -> None:
    """All in one transaction and one round trip (executemany pipelines); should the database refuse
    one of them, each on its own, so that one bad result does not sink the others."""
    batch = [update_params(update, ttl) for update in updates]
    try:
        async with conn.transaction():
            await conn.cursor().executemany(WRITE, batch)
    except (psycopg.DataError, UnicodeEncodeError):
        for params in batch:
            try:
                await conn.execute(WRITE, params)
            except (psycopg.DataError, UnicodeEncodeError) as error:
                await conn.execute(WRITE, refused(params, error))


async def remove_batch_on(conn: Connection, ttl: float) -> int | None:
    """How many expired records one batch removed; None when another worker holds the lock."""
    async with conn.transaction():
        cursor = await conn.execute(TRY_EXPIRY_LOCK)
        if (await cursor.fetchone()) != (True,):
            return None
        cursor = await conn.execute(REMOVE_EXPIRED, {"ttl": ttl})
        return cursor.rowcount
{%- else %}


def alive(conn: Connection) -> bool:
    """False for a connection that died in the pool (the server restarted, a link was reset): it fails
    at once, and the pool replaces it. (The pool's own check backs off for a second after two of them.)"""
    try:
        conn.execute("")
    except psycopg.OperationalError:
        return False
    return True


def create_schema(conn: Connection) -> None:
    if conn.execute(SCHEMA_EXISTS).fetchone() == (True,):
        return
    with conn.transaction():
        for statement in SCHEMA:
            conn.execute(statement)


def create_on(conn: Connection, record: NewRecord, ttl: float) -> StoredRecord | None:
    params = {**record_params(record), "ttl": ttl}
    if record.idempotency_key is None:
        conn.execute(INSERT, params)
        return None
    with conn.transaction():
        conn.execute(FREE_KEY, params)
        for _ in range(CREATE_ATTEMPTS):
            if conn.execute(INSERT_KEYED, params).fetchone() is not None:
                return None
            holder = record_of(conn.execute(HOLDER, params).fetchone())
            if holder is not None:
                return holder
    raise StoreUnavailable(f"the idempotency key changed hands {CREATE_ATTEMPTS} times: try again")


def get_on(conn: Connection, task_id: str, ttl: float) -> StoredRecord | None:
    return record_of(conn.execute(GET, {"id": task_id, "ttl": ttl}).fetchone())


def execute_on(conn: Connection, statement: str, params: dict[str, Any]) -> None:
    conn.execute(statement, params)


def write_on(conn: Connection, updates: Sequence[Update], ttl: float) -> None:
    """All in one transaction and one round trip (executemany pipelines); should the database refuse
    one of them, each on its own, so that one bad result does not sink the others."""
    batch = [update_params(update, ttl) for update in updates]
    try:
        with conn.transaction():
            conn.cursor().executemany(WRITE, batch)
    except (psycopg.DataError, UnicodeEncodeError):
        for params in batch:
            try:
                conn.execute(WRITE, params)
            except (psycopg.DataError, UnicodeEncodeError) as error:
                conn.execute(WRITE, refused(params, error))


def remove_batch_on(conn: Connection, ttl: float) -> int | None:
    """How many expired records one batch removed; None when another worker holds the lock."""
    with conn.transaction():
        if conn.execute(TRY_EXPIRY_LOCK).fetchone() != (True,):
            return None
        return conn.execute(REMOVE_EXPIRED, {"ttl": ttl}).rowcount
{%- endif %}


class PostgresStore:
    """The TaskStore protocol over a pool of connections, which connects in the background, and again
    after an outage. A call of the API's returns within STORE_TIMEOUT_SECONDS, whatever the database does."""

    def __init__(self, settings: Settings) -> None:
        self._address = settings.task_store_address
        self._ttl = settings.task_record_ttl_seconds
        self._schema_ready = False  # set by the first call that reaches the database
{%- if is_async %}
        self._left_behind: set[asyncio.Task[Any]] = set()
        self._pool = AsyncConnectionPool(
{%- else %}
        # The API's calls, each in a thread of the store's own (as many as connections): a silent
        # database holds these, not the event loop's default executor, which others share.
        self._executor = ThreadPoolExecutor(POOL_MAX_SIZE, thread_name_prefix="task-store")
        self._pool = ConnectionPool(
{%- endif %}
            settings.task_store_url,
            kwargs=connection_options(settings),
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            timeout=STORE_TIMEOUT_SECONDS,
            # Give up on a connection attempt after this, so that the next call tries again at once
            # rather than after a backoff grown during a long outage.
            reconnect_timeout=5 * STORE_TIMEOUT_SECONDS,
            name="task-store",
            open=False,
        )

    async def start(self) -> None:
        """Opens the pool without waiting for a connection: a database that is down fails no start."""
{%- if is_async %}
        await self._pool.open(wait=False)
{%- else %}
        self._pool.open(wait=False)
{%- endif %}

    async def create(self, record: NewRecord) -> StoredRecord | None:
        return await self._run(create_on, record, self._ttl)

    async def get(self, task_id: str) -> StoredRecord | None:
        return await self._run(get_on, task_id, self._ttl)

    async def accepted(self, task_id: str) -> None:
        await self._run(execute_on, ACCEPTED, {"id": task_id})

    async def forget(self, task_id: str, idempotency_key: str | None) -> None:
        await self._run(execute_on, FORGET, {"id": task_id})

    async def ping(self) -> None:
        await self._run(execute_on, PING, {})
{%- if is_async %}

    async def close(self) -> None:
        await self._pool.close()

    async def write(self, updates: Sequence[Update]) -> None:
        if updates:
            await self._run(write_on, updates, self._ttl)

    async def remove_expired(self) -> int:
        removed, deadline = 0, time.monotonic() + EXPIRY_BUDGET_SECONDS
        while (batch := await self._run(remove_batch_on, self._ttl)) is not None:
            removed += batch
            if batch < EXPIRY_BATCH or time.monotonic() > deadline:
                break
        return removed

    async def _run(self, operation: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`operation` on a connection of the pool. The caller waits STORE_TIMEOUT_SECONDS at most; an
        operation still going then (on a network gone silent, say) is cancelled, and ends on its own:
        psycopg may give a cancelled query seconds to finish."""
        task = asyncio.create_task(self._on_connection(operation, *args))
        try:
            return await asyncio.wait_for(asyncio.shield(task), STORE_TIMEOUT_SECONDS)
        except TimeoutError:
            raise StoreUnavailable(f"PostgreSQL at {self._address}: no answer in {STORE_TIMEOUT_SECONDS} s") from None
        finally:
            if not task.done():
                task.cancel()
                self._left_behind.add(task)  # kept, and its outcome taken, until it ends
                task.add_done_callback(self._left)

    def _left(self, task: asyncio.Task[Any]) -> None:
        self._left_behind.discard(task)
        if not task.cancelled():
            task.exception()

    async def _on_connection(self, operation: Callable[..., Awaitable[T]], *args: Any) -> T:
        with self._failures():
            for _ in range(POOL_MAX_SIZE + 1):  # past every connection that died in the pool, to a new one
                async with self._pool.connection() as conn:
                    if not await alive(conn):
                        continue
                    if not self._schema_ready:
                        await create_schema(conn)
                        self._schema_ready = True
                    return await operation(conn, *args)
        raise StoreUnavailable(f"PostgreSQL at {self._address}: every connection broken")
{%- else %}

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._pool.close)

    def write(self, updates: Sequence[Update]) -> None:
        if updates:
            self._on_connection(write_on, updates, self._ttl)

    def remove_expired(self) -> int:
        removed, deadline = 0, time.monotonic() + EXPIRY_BUDGET_SECONDS
        while (batch := self._on_connection(remove_batch_on, self._ttl)) is not None:
            removed += batch
            if batch < EXPIRY_BATCH or time.monotonic() > deadline:
                break
        return removed

    async def _run(self, operation: Callable[..., T], *args: Any) -> T:
        """`operation` on a connection of the pool, in a thread. The caller waits STORE_TIMEOUT_SECONDS at
        most; an operation still going then (on a network gone silent, say) ends on its own."""
        try:
            call = functools.partial(self._on_connection, operation, *args)
            running = asyncio.get_running_loop().run_in_executor(self._executor, call)
            return await asyncio.wait_for(running, STORE_TIMEOUT_SECONDS)
        except TimeoutError:
            raise StoreUnavailable(f"PostgreSQL at {self._address}: no answer in {STORE_TIMEOUT_SECONDS} s") from None

    def _on_connection(self, operation: Callable[..., T], *args: Any) -> T:
        with self._failures():
            for _ in range(POOL_MAX_SIZE + 1):  # past every connection that died in the pool, to a new one
                with self._pool.connection() as conn:
                    if not alive(conn):
                        continue
                    if not self._schema_ready:
                        create_schema(conn)
                        self._schema_ready = True
                    return operation(conn, *args)
        raise StoreUnavailable(f"PostgreSQL at {self._address}: every connection broken")
{%- endif %}

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        """Any failure of PostgreSQL, of the pool or of the network, as StoreUnavailable: where, and the
        first line of what went wrong (libpq's messages name no password)."""
        try:
            yield
        except (psycopg.Error, UnicodeEncodeError) as error:
            if isinstance(error, psycopg.errors.UndefinedTable):
                self._schema_ready = False  # dropped meanwhile: the next call creates it again
            reason = str(error).strip().partition("\n")[0]
            raise StoreUnavailable(f"PostgreSQL at {self._address} failed: {type(error).__name__}: {reason}") from error


def open_store(settings: Settings) -> TaskStore:
    return PostgresStore(settings)
