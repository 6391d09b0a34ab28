"""Task records in this process's memory: for unit tests and a first look (TASK_STORE_URL=memory://)."""
{%- set is_async = cookiecutter.consumer == "async" %}

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import replace

from .base import NewRecord, StoredRecord, StoreUnavailable, Update


class MemoryStore:
    """The TaskStore protocol over two dicts. `available = False` makes every call fail, as a store
    that is down would."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        self.available = True
        self.records: dict[str, StoredRecord] = {}
        self.keys: dict[str, str] = {}  # idempotency key -> task id
        self._lock = threading.Lock()  # handler threads and the event loop may both write

    async def start(self) -> None:
        pass

    async def create(self, record: NewRecord) -> StoredRecord | None:
        self._check()
        with self._lock:
            if record.idempotency_key is not None:
                holder = self._live(self.keys.get(record.idempotency_key))
                if holder is not None:
                    return holder
                self.keys[record.idempotency_key] = record.id
            self.records[record.id] = StoredRecord.new(record)
        return None

    async def get(self, task_id: str) -> StoredRecord | None:
        self._check()
        with self._lock:
            return self._live(task_id)

    async def accepted(self, task_id: str) -> None:
        self._check()
        with self._lock:
            if task_id in self.records:
                self.records[task_id] = replace(self.records[task_id], accepted=True)

    async def forget(self, task_id: str, idempotency_key: str | None) -> None:
        self._check()
        with self._lock:
            self.records.pop(task_id, None)
            if idempotency_key is not None and self.keys.get(idempotency_key) == task_id:
                del self.keys[idempotency_key]

    async def ping(self) -> None:
        self._check()

    async def close(self) -> None:
        pass
{%- if is_async %}

    async def write(self, updates: Sequence[Update]) -> None:
{%- else %}

    def write(self, updates: Sequence[Update]) -> None:
{%- endif %}
        self._check()
        with self._lock:
            for update in updates:
                record = self._live(update.id)
                if record is not None:
                    self.records[update.id] = record.updated(update)
{%- if is_async %}

    async def remove_expired(self) -> int:
{%- else %}

    def remove_expired(self) -> int:
{%- endif %}
        return 0  # expired records are never served, and a test's records are few

    def _live(self, task_id: str | None) -> StoredRecord | None:
        record = self.records.get(task_id) if task_id is not None else None
        if record is None or record.updated_at < time.time() - self.ttl_seconds:
            return None
        return record

    def _check(self) -> None:
        if not self.available:
            raise StoreUnavailable("the in-memory task store is down")
