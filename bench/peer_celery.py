"""Celery peer: a no-op task, acks_late, on the same broker and workload as the generated worker.

    BENCH_BROKER=amqp://... BENCH_QUEUE=q BENCH_COUNT=N BENCH_RESULT=file \
        python -m celery -A peer_celery worker -P solo -Q q --without-gossip --without-mingle --without-heartbeat

The solo pool (one process, one task at a time, like a single generated worker process), with a
prefetch of 100 (prefetch multiplier x concurrency 1), the generated worker's PREFETCH_COUNT.
Celery's own default log level (WARNING): no line per task.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from clock import Clock

app = Celery("bench", broker=os.environ.get("BENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=100,
    worker_enable_remote_control=False,
    broker_connection_retry_on_startup=True,
)
clock = Clock(int(os.environ.get("BENCH_COUNT", "0")), os.environ.get("BENCH_RESULT"))


@app.task(name="bench.noop", acks_late=True, ignore_result=True)
def noop(**payload: Any) -> None:
    clock.tick()


def fill(queue: str, count: int) -> None:
    """Send `count` tasks (the example's payload) through one producer, as an API would."""
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            noop.apply_async(kwargs={"image_url": "https://example.com/a.png"}, queue=queue, producer=producer)
