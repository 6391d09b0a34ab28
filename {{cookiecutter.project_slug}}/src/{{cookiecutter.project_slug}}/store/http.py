"""What the HTTP routes do with the task store: write the record before publishing, answer a repeated
Idempotency-Key as the first request was answered, remove the record of a task not accepted, and
turn a record into GET /tasks/{id}'s answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from ..messages import TaskMessage
from ..metrics import TASK_STORE_ERRORS
from ..publishing import PublishFailed
from ..settings import Settings
from .base import STORE_TIMEOUT_SECONDS, NewRecord, Status, StoredRecord, StoreUnavailable, TaskStore

logger = logging.getLogger(__name__)

T = TypeVar("T")

REPLAYED_HEADER = "Idempotent-Replayed"
POLL_SECONDS = 0.05  # how often a replay looks whether the first request's task was accepted
REPLAY_WAIT_SECONDS = 2.5  # ... and for how long at most: a POST answers within 5 s
STORE_DOWN = "task store unavailable, task not accepted; retry later"


class TaskStatus(BaseModel):
    id: str
    type: str
    status: Status = Field(description="scheduled, queued, running, retrying, succeeded or dead_lettered.")
    attempts: int = Field(description="Attempts started so far.")
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None = Field(None, description="When a scheduled or retrying task starts next.")
    error: str | None = Field(None, description="Why the last attempt failed, or why the task was dead-lettered.")
    result: Any = Field(None, description="What the handler returned (JSON, up to 64 KiB), once succeeded.")


async def get_store(request: Request) -> TaskStore:
    store: TaskStore = request.app.state.store
    return store


StoreDep = Annotated[TaskStore, Depends(get_store)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="1 to 255 visible ASCII characters. The same key with the same body, within"
        " TASK_RECORD_TTL_SECONDS, answers as the first request did (with Idempotent-Replayed: true) and"
        " publishes nothing again; with another body: 422.",
    ),
]


async def bounded(call: Awaitable[T]) -> T:
    """A store call that answers within STORE_TIMEOUT_SECONDS or counts as the store being down."""
    try:
        return await asyncio.wait_for(call, timeout=STORE_TIMEOUT_SECONDS * 1.5)
    except TimeoutError:
        raise StoreUnavailable("no answer in time") from None


def store_down(error: StoreUnavailable) -> HTTPException:
    TASK_STORE_ERRORS.inc()
    logger.warning("task not accepted, the task store did not answer: %s", error)
    return HTTPException(status_code=503, detail=STORE_DOWN)


def new_record(message: TaskMessage, delay_seconds: float, idempotency_key: str | None, asked: str) -> NewRecord:
    """A delayed task's record says when it is due."""
    now = time.time()
    if delay_seconds:
        return NewRecord(message.id, message.type, "scheduled", now, now + delay_seconds, idempotency_key, asked)
    return NewRecord(message.id, message.type, "queued", now, None, idempotency_key, asked)


def request_hash(task: BaseModel) -> str:
    """What a request asks for, the same for the same JSON however it is spelled (key order, spaces)."""
    canonical = json.dumps(task.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Replay:
    """The first request with a key, whose answer a repeated request gives again. `publish_again`:
    the first request's publish timed out (the broker may or may not have the task), long enough ago
    that it is over: publish the same task again, under the same id."""

    record: StoredRecord
    publish_again: bool = False


async def replay(holder: StoredRecord, asked: str, store: TaskStore, settings: Settings) -> Replay:
    """The first request with this key, once its task was accepted: a 422 for another body; the
    first request's 503 if its task was not accepted; a 409 while it is still undecided."""
    if holder.request_hash != asked:
        reused = "this Idempotency-Key was used with another request body"
        error = {"type": "idempotency_key_reused", "loc": ("header", "Idempotency-Key"), "msg": reused}
        raise RequestValidationError([error])
    deadline = time.monotonic() + REPLAY_WAIT_SECONDS
    record: StoredRecord | None = holder
    while record is not None and not was_accepted(record):
        if undecided_for_good(record, settings):
            return Replay(record, publish_again=True)
        if time.monotonic() + POLL_SECONDS > deadline:
            raise HTTPException(status_code=409, detail="a request with this Idempotency-Key is in progress; retry")
        await asyncio.sleep(POLL_SECONDS)
        try:
            record = await bounded(store.get(holder.id))
        except StoreUnavailable as error:
            raise store_down(error) from None
    if record is None:  # the first request's task was not accepted, and it answered so
        raise PublishFailed(outcome_unknown=False)
    return Replay(record)


def undecided_for_good(record: StoredRecord, settings: Settings) -> bool:
    """Not accepted, long after the request that wrote it must have answered: its publish timed out.
    (Had the broker refused it, its record would be gone.)"""
    answered_by = record.created_at + settings.publish_timeout_seconds + 3 * STORE_TIMEOUT_SECONDS
    return time.time() > answered_by


def was_accepted(record: StoredRecord) -> bool:
    """Marked so, or already touched by a worker (the mark may have been lost)."""
    return record.accepted or record.status not in ("queued", "scheduled")


async def forget(store: TaskStore, task_id: str, idempotency_key: str | None) -> None:
    """Remove the record of a task the broker did not take. If the store fails now, the record stays
    (queued, never processed) until it expires, and a repeated request publishes it again: logged,
    counted."""
    try:
        await bounded(store.forget(task_id, idempotency_key))
    except StoreUnavailable as error:
        TASK_STORE_ERRORS.inc()
        logger.error("the record of a task not accepted could not be removed (%s); it expires in time", error)


async def mark_accepted(store: TaskStore, task_id: str) -> None:
    """For the replays of the request's key; a failure only makes them wait for a worker's update."""
    try:
        await bounded(store.accepted(task_id))
    except StoreUnavailable as error:
        TASK_STORE_ERRORS.inc()
        logger.warning("the task was accepted, but its record could not be marked so: %s", error)


def location(response: Response, task_id: str) -> None:
    response.headers["Location"] = f"/tasks/{task_id}"


def task_status(record: StoredRecord) -> TaskStatus:
    return TaskStatus(
        id=record.id,
        type=record.type,
        status=record.status,
        attempts=record.attempts,
        created_at=moment(record.created_at),
        updated_at=moment(record.updated_at),
        next_attempt_at=None if record.next_attempt_at is None else moment(record.next_attempt_at),
        error=record.error,
        result=None if record.result is None else json.loads(record.result),
    )


def moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
