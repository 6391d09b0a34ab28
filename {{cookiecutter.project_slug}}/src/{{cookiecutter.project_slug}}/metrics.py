"""Prometheus metrics. `tasks_published_total` and `tasks_processed_total` are part of the
service's public contract; the rest show where a task is and how long it takes."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TASKS_PUBLISHED = Counter("tasks_published", "Tasks the broker durably accepted through POST /tasks.")
TASKS_PROCESSED = Counter(
    "tasks_processed",
    "Messages the consumer finished, by outcome: succeeded, retried or dead_lettered.",
    ["outcome"],
)
PUBLISH_FAILURES = Counter(
    "tasks_publish_failures",
    "POST /tasks refused, by reason: unavailable (503, the broker refused or is away) or timeout (504, unconfirmed).",
    ["reason"],
)
TASKS_IN_HAND = Gauge(
    "tasks_in_hand",
    "Messages this process holds unacknowledged (at most PREFETCH_COUNT): waiting, handled or being acknowledged.",
)
QUEUE_WAIT = Histogram(
    "task_queue_wait_seconds",
    "From publish (a delayed task: from when it was due) to the handler's first start: how long it waited.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
HANDLER_DURATION = Histogram(
    "task_handler_duration_seconds",
    "How long a handler ran, by task type and outcome (succeeded, retried, dead_lettered).",
    ["type", "outcome"],
)
{%- if cookiecutter.task_store != "none" %}

TASK_STORE_ERRORS = Counter(
    "task_store_errors",
    "Task store calls that failed: record updates not written after three tries (the task goes on; they"
    " are tried again a second later), and requests answered 503 because the store did not answer.",
)
{%- endif %}

for _reason in ("unavailable", "timeout"):
    PUBLISH_FAILURES.labels(reason=_reason)
