"""Prometheus counters; the names are part of the service's public contract."""

from __future__ import annotations

from prometheus_client import Counter

TASKS_PUBLISHED = Counter("tasks_published", "Tasks the broker durably accepted through POST /tasks.")
TASKS_PROCESSED = Counter(
    "tasks_processed",
    "Messages the consumer finished, by outcome: succeeded, retried or dead_lettered.",
    ["outcome"],
)
