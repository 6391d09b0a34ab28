"""Keeps the task store off the processing path: workers hand record updates to one writer, which
writes them in batches, retries briefly, and gives up without holding any task back."""
{%- set is_async = cookiecutter.consumer == "async" %}

from __future__ import annotations

import asyncio
{% if is_async -%}
import contextlib
{% endif -%}
import logging
{% if not is_async -%}
import threading
{% endif -%}
import time
from typing import TYPE_CHECKING, Any

from pydantic_core import PydanticSerializationError, to_json

from ..metrics import TASK_STORE_ERRORS
from ..processing import Outcome, Verdict
from .base import Status, StoreUnavailable, TaskStore, Update

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)

MAX_RESULT_BYTES = 64 * 1024  # a larger result is not kept; the task still succeeds
MAX_PENDING = 10_000  # updates of distinct tasks waiting to be written; more are dropped (and counted)
BATCH_SIZE = 500  # updates in one write
WRITE_ATTEMPTS = 3  # a write that fails is tried this often in all, the waits between doubling from:
FIRST_RETRY_SECONDS = 0.1
OUTAGE_PAUSE_SECONDS = 1.0  # after the last try fails, the updates wait this long for the next round
STOP_SECONDS = 5.0  # how long a stopping writer may take to write what is pending
EXPIRY_SECONDS = 300.0  # how often expired records are removed, where the store does not do it itself

OUTAGE_LOG_SECONDS = 60.0  # a lasting outage is logged again this often

STATUS: dict[Outcome, Status] = {
    Outcome.SUCCEEDED: "succeeded",
    Outcome.RETRIED: "retrying",
    Outcome.DEAD_LETTERED: "dead_lettered",
}


class RecordWriter:
    """Updates wait here, the latest one per task (each carries the whole state, so a newer one
    replaces an older one unwritten), until the writer's next batch."""

    def __init__(self, store: TaskStore, max_pending: int = MAX_PENDING) -> None:
        self.store = store
        self.max_pending = max_pending
        self._pending: dict[str, Update] = {}
        self._healthy = True  # the last write went through
        self._stopping = False
        self._dropped = 0  # updates dropped since the last log line about it
        self._warned = 0.0  # when the last outage line was logged
{%- if is_async %}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
{%- else %}
        self._lock = threading.Lock()  # handler threads put, the writer's thread takes
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-records", daemon=True)
{%- endif %}

    def started(self, task_id: str, attempt: int) -> None:
        """Attempt number `attempt` (1, 2, ...) of the task has begun."""
        self.put(Update(task_id, "running", attempt, time.time()))

    def finished(self, task_id: str, attempt: int, verdict: Verdict) -> None:
        """The attempt ended with `verdict`: succeeded (with the handler's result), retrying or dead-lettered."""
        now = time.time()
        status = STATUS[verdict.outcome]
        if verdict.outcome is Outcome.SUCCEEDED:
            self.put(Update(task_id, status, attempt, now, result=result_json(verdict.result)))
        elif verdict.outcome is Outcome.RETRIED:
            due = now + verdict.delay_seconds
            self.put(Update(task_id, status, attempt, now, next_attempt_at=due, error=verdict.reason))
        else:
            self.put(Update(task_id, status, attempt, now, error=verdict.reason))

    def put(self, update: Update) -> None:
        """Never blocks and never raises: the task goes on whatever becomes of its record."""
{%- if not is_async %}
        with self._lock:
            self._keep(update)
{%- else %}
        self._keep(update)
{%- endif %}
        self._wake.set()

    def healthy(self) -> bool:
        """False while the store refuses the writes: for the worker's readiness."""
        return self._healthy

    def _keep(self, update: Update) -> None:
        if update.id not in self._pending and len(self._pending) >= self.max_pending:
            TASK_STORE_ERRORS.inc()
            self._dropped += 1
            return
        self._pending.pop(update.id, None)  # the newest last: batches go oldest first
        self._pending[update.id] = update
{%- if is_async %}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="task-records")

    async def stop(self) -> None:
        """Write what is pending (within STOP_SECONDS), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, STOP_SECONDS)
            except TimeoutError:
                logger.warning("task store: %d record update(s) not written at shutdown", len(self._pending))

    async def _run(self) -> None:
        next_expiry = time.monotonic() + EXPIRY_SECONDS
        while not (self._stopping and not self._pending):
            if not self._pending:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, next_expiry - time.monotonic()))
            if self._pending:
                await self._write(self._take())
            if time.monotonic() >= next_expiry:
                next_expiry = time.monotonic() + EXPIRY_SECONDS
                await self._expire()

    async def _write(self, batch: Sequence[Update]) -> None:
        for attempt in range(WRITE_ATTEMPTS):
            try:
                await self.store.write(batch)
            except StoreUnavailable as error:
                if attempt + 1 == WRITE_ATTEMPTS or self._stopping:
                    self._gave_up(batch, error)
                    if not self._stopping:
                        await asyncio.sleep(OUTAGE_PAUSE_SECONDS)
                    return
                await asyncio.sleep(FIRST_RETRY_SECONDS * 2**attempt)
            else:
                self._wrote()
                return

    async def _expire(self) -> None:
        try:
            removed = await self.store.remove_expired()
        except StoreUnavailable as error:
            logger.warning("task store: expired records not removed (%s); trying again later", error)
            return
        if removed:
            logger.info("task store: removed %d expired record(s)", removed)
{%- else %}

    async def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        """Write what is pending (within STOP_SECONDS), then stop."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, STOP_SECONDS)
        if self._thread.is_alive():
            logger.warning("task store: %d record update(s) not written at shutdown", len(self._pending))

    def _run(self) -> None:
        next_expiry = time.monotonic() + EXPIRY_SECONDS
        while True:
            self._wake.wait(max(0.0, next_expiry - time.monotonic()))
            self._wake.clear()
            with self._lock:
                batch = self._take()
            if batch:
                self._write(batch)
                self._wake.set()  # more may have come meanwhile: look again at once
            elif self._stopping:
                return
            if time.monotonic() >= next_expiry:
                next_expiry = time.monotonic() + EXPIRY_SECONDS
                self._expire()

    def _write(self, batch: Sequence[Update]) -> None:
        for attempt in range(WRITE_ATTEMPTS):
            try:
                self.store.write(batch)
            except StoreUnavailable as error:
                if attempt + 1 == WRITE_ATTEMPTS or self._stopping:
                    self._gave_up(batch, error)
                    if not self._stopping:
                        time.sleep(OUTAGE_PAUSE_SECONDS)
                    return
                time.sleep(FIRST_RETRY_SECONDS * 2**attempt)
            else:
                self._wrote()
                return

    def _expire(self) -> None:
        try:
            removed = self.store.remove_expired()
        except StoreUnavailable as error:
            logger.warning("task store: expired records not removed (%s); trying again later", error)
            return
        if removed:
            logger.info("task store: removed %d expired record(s)", removed)
{%- endif %}

    def _take(self) -> list[Update]:
        """Up to BATCH_SIZE of the oldest pending updates."""
        batch = []
        for task_id in list(self._pending)[:BATCH_SIZE]:
            batch.append(self._pending.pop(task_id))
        return batch

    def _wrote(self) -> None:
        if not self._healthy:
            logger.info("task store: record updates are written again")
        self._healthy = True
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            logger.warning("task store: %d record update(s) dropped, over %d waiting", dropped, self.max_pending)

    def _gave_up(self, batch: Sequence[Update], error: StoreUnavailable) -> None:
        """Counted and logged; the updates wait for the next round (a newer one of a task replaces
        its own), except at shutdown, when they are lost and the records stay behind."""
        TASK_STORE_ERRORS.inc(len(batch))
        now = time.monotonic()
        if self._healthy or now - self._warned >= OUTAGE_LOG_SECONDS:  # once an outage, then once a minute
            self._warned = now
            logger.warning(
                "task store: %d record update(s) not written (%s); the tasks go on, their records wait",
                len(batch),
                error,
            )
        self._healthy = False
        if self._stopping:
            return
{%- if not is_async %}
        with self._lock:
            for update in batch:
                if update.id not in self._pending:
                    self._keep(update)
{%- else %}
        for update in batch:
            if update.id not in self._pending:
                self._keep(update)
{%- endif %}


def result_json(result: Any) -> str | None:
    """The handler's result as JSON text, or None when there is none, it is not JSON, or it is over 64 KiB."""
    if result is None:
        return None
    try:
        text = to_json(result, inf_nan_mode="null")  # JSON has no NaN or infinity
    except PydanticSerializationError as error:
        logger.error("the task's result is not kept: it is not JSON (%s)", error)
        return None
    if len(text) > MAX_RESULT_BYTES:
        logger.error("the task's result is not kept: %d bytes, over the 64 KiB limit", len(text))
        return None
    return text.decode()
