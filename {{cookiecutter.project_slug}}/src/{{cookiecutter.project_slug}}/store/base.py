"""What the API and the workers need from a task store, whichever keeps the records."""
{%- set is_async = cookiecutter.consumer == "async" %}

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

Status = Literal["scheduled", "queued", "running", "retrying", "succeeded", "dead_lettered"]

STORE_TIMEOUT_SECONDS = 1.0  # the longest one call to the store may take (connect, command, reply)


class StoreUnavailable(Exception):
    """The task store did not answer, or refused; nothing was written."""


@dataclass(frozen=True)
class NewRecord:
    """The record POST /tasks writes before it publishes. Times are Unix seconds."""

    id: str
    type: str
    status: Status  # queued, or scheduled when the task is delayed
    created_at: float
    next_attempt_at: float | None = None  # a delayed task's due time
    idempotency_key: str | None = None
    request_hash: str | None = None  # what the request asked for, to tell a replay from a conflict


@dataclass(frozen=True)
class Update:
    """A task's state after a step of a worker; each one carries the whole state, so that a lost
    update is made good by the next. `result` is JSON text."""

    id: str
    status: Status
    attempts: int
    updated_at: float
    next_attempt_at: float | None = None
    error: str | None = None
    result: str | None = None


@dataclass(frozen=True)
class StoredRecord:
    """A record as the store holds it. `accepted` is set once the broker took the message, for a
    request with an idempotency key (its replays wait for it)."""

    id: str
    type: str
    status: Status
    attempts: int
    created_at: float
    updated_at: float
    next_attempt_at: float | None = None
    error: str | None = None
    result: str | None = None  # JSON text
    request_hash: str | None = None
    accepted: bool = False

    @classmethod
    def new(cls, record: NewRecord) -> StoredRecord:
        return cls(
            id=record.id,
            type=record.type,
            status=record.status,
            attempts=0,
            created_at=record.created_at,
            updated_at=record.created_at,
            next_attempt_at=record.next_attempt_at,
            request_hash=record.request_hash,
        )

    def updated(self, update: Update) -> StoredRecord:
        return replace(
            self,
            status=update.status,
            attempts=update.attempts,
            updated_at=update.updated_at,
            next_attempt_at=update.next_attempt_at,
            error=update.error,
            result=update.result,
        )


class TaskStore(Protocol):
    """Every call raises StoreUnavailable, within STORE_TIMEOUT_SECONDS, when the store does not
    answer. Records and idempotency keys live TASK_RECORD_TTL_SECONDS after their last change."""

    async def start(self) -> None:
        """Get ready (connect, create the schema where there is one); never fails because the store is down."""

    async def create(self, record: NewRecord) -> StoredRecord | None:
        """Write `record` and return None; with an idempotency key that a live record already holds,
        write nothing and return that record (the two steps are one atomic step)."""

    async def get(self, task_id: str) -> StoredRecord | None:
        """The record, or None for an unknown or expired id."""

    async def accepted(self, task_id: str) -> None:
        """Mark the record as published, for the replays of its idempotency key."""

    async def forget(self, task_id: str, idempotency_key: str | None) -> None:
        """Remove a record, and its idempotency key, whose task the broker did not take."""

    async def ping(self) -> None:
        """Ask the store for a reply."""

    async def close(self) -> None: ...
{%- if is_async %}

    async def write(self, updates: Sequence[Update]) -> None:
{%- else %}

    def write(self, updates: Sequence[Update]) -> None:
{%- endif %}
        """Apply the updates, in order, each to its record if it still exists (it may have expired):
        a worker never creates a record. Called by the record writer, off the processing path."""
{%- if is_async %}

    async def remove_expired(self) -> int:
{%- else %}

    def remove_expired(self) -> int:
{%- endif %}
        """Delete expired records where the store does not expire them itself; how many it deleted.
        Safe to call from every worker at once: one at a time does the work."""
