"""Task records in Redis, which expires them by itself; each check-then-write is one script, atomic."""
{%- set is_async = cookiecutter.consumer == "async" %}

from __future__ import annotations
{%- if is_async %}

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as ConnectionLost
from redis.exceptions import RedisError
{%- else %}

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as ConnectionLost
from redis.exceptions import RedisError
from redis.retry import Retry
{%- endif %}

from .base import STORE_TIMEOUT_SECONDS, NewRecord, Status, StoredRecord, StoreUnavailable, TaskStore, Update

if TYPE_CHECKING:
    from ..settings import Settings

T = TypeVar("T")
{%- if not is_async %}

API_THREADS = 16  # the API's store calls under way at once
{%- endif %}

# A record's hash holds StoredRecord's fields, as text (times in Unix seconds), an absent optional
# field being an absent hash field; and the idempotency key it was created with, to refresh it.
KEY_FIELD = "idempotency_key"  # WRITE_SCRIPT names it too

# KEYS: the record, then its idempotency key if it has one. ARGV: the TTL (ms), where the records are
# (the key prefix, to find the key's holder), the task id, then the record's fields and values.
# Returns nil when it wrote the record; else the fields of the live record that holds the key.
CREATE_SCRIPT = """
if KEYS[2] then
  local holder = redis.call('GET', KEYS[2])
  if holder then
    local fields = redis.call('HGETALL', ARGV[2] .. holder)
    if #fields > 0 then
      return fields
    end
  end
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[1])
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return false
"""
# KEYS: the record. ARGV: the TTL (ms), where the idempotency keys are (the key prefix), the task id,
# how many fields to set, those fields and their values, then the fields to delete. A record that
# is gone stays gone. Its idempotency key, while it still names this task, lives as long as it does.
WRITE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local last = 4 + 2 * tonumber(ARGV[4])
redis.call('HSET', KEYS[1], unpack(ARGV, 5, last))
if #ARGV > last then
  redis.call('HDEL', KEYS[1], unpack(ARGV, last + 1))
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local key = redis.call('HGET', KEYS[1], 'idempotency_key')
if key and redis.call('GET', ARGV[2] .. key) == ARGV[3] then
  redis.call('PEXPIRE', ARGV[2] .. key, ARGV[1])
end
return 1
"""
# KEYS: the record.
ACCEPTED_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'accepted', '1')
end
return 0
"""
# KEYS: the record, then its idempotency key if it has one. ARGV: the task id.
FORGET_SCRIPT = """
redis.call('DEL', KEYS[1])
if KEYS[2] and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 0
"""


def record_prefix(settings: Settings) -> str:
    """Named after the queue, apart from the broker's own keys and from other services' records."""
    return f"{settings.queue_name}.task."


def key_prefix(settings: Settings) -> str:
    return f"{settings.queue_name}.idempotency."


def text(value: float | str) -> str:
    return value if isinstance(value, str) else repr(value)  # repr: a float's every digit


def fields_of(reply: Any) -> dict[str, str]:
    """A hash as HGETALL gives it (a dict) or as a script returns it (a flat list), as text."""
    pairs = reply.items() if isinstance(reply, Mapping) else zip(reply[::2], reply[1::2], strict=True)
    return {
        (key.decode() if isinstance(key, bytes) else key): (value.decode() if isinstance(value, bytes) else value)
        for key, value in pairs
    }


def record_fields(record: NewRecord) -> list[str]:
    """A new record's hash, as the flat list HSET takes."""
    stored = StoredRecord.new(record)
    fields: dict[str, float | str | None] = {
        "id": stored.id,
        "type": stored.type,
        "status": stored.status,
        "attempts": str(stored.attempts),
        "created_at": stored.created_at,
        "updated_at": stored.updated_at,
        "next_attempt_at": stored.next_attempt_at,
        "request_hash": stored.request_hash,
        KEY_FIELD: record.idempotency_key,
    }
    return [part for field, value in fields.items() if value is not None for part in (field, text(value))]


def update_arguments(update: Update) -> list[str]:
    """WRITE_SCRIPT's arguments after the prefix and the id: how many to set, the pairs, what to delete."""
    optional: dict[str, float | str | None] = {
        "next_attempt_at": update.next_attempt_at,
        "error": update.error,
        "result": update.result,
    }
    present = {field: text(value) for field, value in optional.items() if value is not None}
    pairs = {
        "status": update.status,
        "attempts": str(update.attempts),
        "updated_at": text(update.updated_at),
        **present,
    }
    absent = [field for field, value in optional.items() if value is None]
    return [str(len(pairs)), *(part for pair in pairs.items() for part in pair), *absent]


def record_of(fields: Mapping[str, str]) -> StoredRecord:
    next_attempt_at = fields.get("next_attempt_at")
    return StoredRecord(
        id=fields["id"],
        type=fields["type"],
        status=cast("Status", fields["status"]),
        attempts=int(fields["attempts"]),
        created_at=float(fields["created_at"]),
        updated_at=float(fields["updated_at"]),
        next_attempt_at=float(next_attempt_at) if next_attempt_at is not None else None,
        error=fields.get("error"),
        result=fields.get("result"),
        request_hash=fields.get("request_hash"),
        accepted=fields.get("accepted") == "1",
    )


def make_client(settings: Settings) -> redis.Redis:
    """Connects on first use. One quick retry, for a connection Redis dropped while it sat in the pool;
    none after a timeout: a call fails within about STORE_TIMEOUT_SECONDS."""
    return redis.Redis.from_url(
        settings.task_store_url,
        socket_timeout=STORE_TIMEOUT_SECONDS,
        socket_connect_timeout=STORE_TIMEOUT_SECONDS,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionLost,)),
        client_name="task-store",
    )


class RedisStore:
    """The TaskStore protocol over one hash per record and one string per idempotency key, each
    with the TTL. Its scripts find a record by the id a key holds: a single Redis, not a cluster."""

    def __init__(self, settings: Settings) -> None:
        self._address = settings.task_store_address
        self._records = record_prefix(settings)
        self._keys = key_prefix(settings)
        self._ttl_ms = str(max(1, round(settings.task_record_ttl_seconds * 1000)))
        self._client = make_client(settings)
{%- if not is_async %}
        # The API's calls, each in a thread of the store's own: a silent Redis holds these, not the
        # event loop's default executor, which others share.
        self._executor = ThreadPoolExecutor(API_THREADS, thread_name_prefix="task-store")
{%- endif %}

    async def start(self) -> None:
        """Nothing to do: the client connects on first use, so a Redis that is down fails no start."""

    async def create(self, record: NewRecord) -> StoredRecord | None:
        keys = [self._records + record.id]
        if record.idempotency_key is not None:
            keys.append(self._keys + record.idempotency_key)
        arguments = [self._ttl_ms, self._records, record.id, *record_fields(record)]
        reply = await self._run(self._client.eval, CREATE_SCRIPT, len(keys), *keys, *arguments)
        return None if reply is None else record_of(fields_of(reply))

    async def get(self, task_id: str) -> StoredRecord | None:
        fields = fields_of(await self._run(self._client.hgetall, self._records + task_id))
        return record_of(fields) if fields else None

    async def accepted(self, task_id: str) -> None:
        await self._run(self._client.eval, ACCEPTED_SCRIPT, 1, self._records + task_id)

    async def forget(self, task_id: str, idempotency_key: str | None) -> None:
        keys = [self._records + task_id]
        if idempotency_key is not None:
            keys.append(self._keys + idempotency_key)
        await self._run(self._client.eval, FORGET_SCRIPT, len(keys), *keys, task_id)

    async def ping(self) -> None:
        await self._run(self._client.ping)
{%- if is_async %}

    async def close(self) -> None:
        await self._client.aclose()

    async def write(self, updates: Sequence[Update]) -> None:
        """All the updates in one round trip; each script checks that its record still exists."""
        if not updates:
            return
        pipeline = self._write_pipeline(updates)
        with self._failures():
            await pipeline.execute()

    async def remove_expired(self) -> int:
        return 0  # Redis expires the keys itself

    async def _run(self, command: Callable[..., Awaitable[T]], *args: Any) -> T:
        with self._failures():
            return await command(*args)
{%- else %}

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def write(self, updates: Sequence[Update]) -> None:
        """All the updates in one round trip; each script checks that its record still exists."""
        if not updates:
            return
        pipeline = self._write_pipeline(updates)
        with self._failures():
            pipeline.execute()

    def remove_expired(self) -> int:
        return 0  # Redis expires the keys itself

    async def _run(self, command: Callable[..., T], *args: Any) -> T:
        """A blocking call, off the event loop."""
        with self._failures():
            return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(command, *args))
{%- endif %}

    def _write_pipeline(self, updates: Sequence[Update]) -> redis.client.Pipeline:
        pipeline = self._client.pipeline(transaction=False)
        for update in updates:
            arguments = [self._ttl_ms, self._keys, update.id, *update_arguments(update)]
            pipeline.eval(WRITE_SCRIPT, 1, self._records + update.id, *arguments)
        return pipeline

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        """Any failure of Redis or of the network, as StoreUnavailable; where, but no credentials."""
        try:
            yield
        except (RedisError, OSError) as error:
            raise StoreUnavailable(f"Redis at {self._address} failed: {type(error).__name__}: {error}") from error


def open_store(settings: Settings) -> TaskStore:
    return RedisStore(settings)
