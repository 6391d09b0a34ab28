"""The generated worker with one task type more, `io_sleep`, whose handler waits 10 ms as a call to
a database or another service would (time.sleep in the threaded style, asyncio.sleep in the async
one), then logs one line: how well the worker overlaps handlers that wait.

    python bench/io_worker.py SLUG STYLE

The concurrency is 8 in both styles, so the ideal is 8 / 10 ms = 800 messages a second:
- threaded: HANDLER_THREADS=8; PREFETCH_COUNT stays the bench's 100;
- async: PREFETCH_COUNT=8, as the async runner runs every message in hand at once;
- Kafka: a partition's records are handled in order, one at a time, so the concurrency is the
  topic's 8 partitions (TOPIC_PARTITIONS=8, filled round robin, the same share each), with
  HANDLER_THREADS=8 in the threaded style and the bench's PREFETCH_COUNT of 100 in both: a
  PREFETCH_COUNT of 8 would fetch 8 records of one partition, to be handled one after another.
The rate is taken between the 10th and the 90th percentile of the handlers' end times
(drains.steady_rate): with Kafka the first fetch reaches the partitions one after another and
they run dry at different times, which is how a drain starts and ends, not how fast it goes.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

TASK_TYPE = "io_sleep"
SLEEP_SECONDS = 0.01
CONCURRENCY = 8
IDEAL_MSGS_PER_S = CONCURRENCY / SLEEP_SECONDS
HANDLED = b"slept 10 ms"  # the handler's line


class IoSleepPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the bench's messages carry the example's payload


def settings(broker: str, consumer: str) -> dict[str, str]:
    """The environment that sets the concurrency to 8 in either style (see the module's docstring)."""
    if consumer == "threaded":
        env = {"HANDLER_THREADS": str(CONCURRENCY)}
    elif broker != "kafka":
        env = {"PREFETCH_COUNT": str(CONCURRENCY)}
    else:
        env = {}
    if broker == "kafka":
        env["TOPIC_PARTITIONS"] = str(CONCURRENCY)
    return env


def register(slug: str, style: str) -> None:
    """Add io_sleep to the generated registry, which the worker imports and dispatches through."""
    handlers = importlib.import_module(f"{slug}.handlers")
    logger = logging.getLogger(f"{slug}.handlers")
    if style == "async":

        async def io_sleep(payload: IoSleepPayload, message: Any) -> None:
            await asyncio.sleep(SLEEP_SECONDS)
            logger.info("slept 10 ms")

        handlers.registry.task(TASK_TYPE, IoSleepPayload)(io_sleep)
    else:

        def io_sleep_threaded(payload: IoSleepPayload, message: Any) -> None:
            time.sleep(SLEEP_SECONDS)
            logger.info("slept 10 ms")

        handlers.registry.task(TASK_TYPE, IoSleepPayload)(io_sleep_threaded)


def main() -> None:
    slug, style = sys.argv[1], sys.argv[2]
    register(slug, style)
    importlib.import_module(f"{slug}.worker").main()


if __name__ == "__main__":
    main()
