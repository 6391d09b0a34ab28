"""The task store: a record of each task, from POST /tasks to its last attempt, and the idempotency keys."""

from .base import NewRecord, StoredRecord, StoreUnavailable, TaskStore, Update

__all__ = ["NewRecord", "StoreUnavailable", "StoredRecord", "TaskStore", "Update"]
