"""The Processor alone, in a process of its own with the worker's logging (to stderr, which the
bench sends to a file as it does the worker's): what the service's own code costs per message,
with no broker, runner or acknowledgement around it.

    python bench/processor_alone.py SLUG STYLE LEVEL COUNT

Builds Processor(handlers.registry, 3) as the worker does, warms it up, then times COUNT calls of
process(body, 0, headers) with time.perf_counter, the bodies and headers made beforehand (awaited
one after another in one event loop in the async style). Prints {"us_per_message": x, "count": n}
as its last line.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import queues
from bake import Combo
from procs import BenchError, running, wait_until

WARM_UP = 500  # calls before the timed ones: imports, caches and metric children made
Call = tuple[bytes, dict[str, str]]


def calls(count: int) -> list[Call]:
    """Each call's body and headers, as a publisher of the service stamps them."""
    return [
        (queues.message(index), {"x-request-id": "r", "x-published-at": str(time.time())}) for index in range(count)
    ]


def check(verdicts: list[Any]) -> None:
    """The warm-up's verdicts: the timed path must be the handler's success, not a dead letter."""
    failed = [verdict for verdict in verdicts if verdict.outcome != "succeeded"]
    if failed:
        raise SystemExit(f"the Processor did not succeed: {failed[0]}")


def timed_threaded(process: Callable[..., Any], count: int) -> float:
    check([process(body, 0, headers) for body, headers in calls(WARM_UP)])
    timed = calls(count)
    started = time.perf_counter()
    for body, headers in timed:
        process(body, 0, headers)
    return time.perf_counter() - started


async def timed_async(process: Callable[..., Any], count: int) -> float:
    check([await process(body, 0, headers) for body, headers in calls(WARM_UP)])
    timed = calls(count)
    started = time.perf_counter()
    for body, headers in timed:
        await process(body, 0, headers)
    return time.perf_counter() - started


def main() -> None:
    slug, style, level, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    importlib.import_module(f"{slug}.logs").configure_logging(level)
    handlers = importlib.import_module(f"{slug}.handlers")
    processor = importlib.import_module(f"{slug}.processing").Processor(handlers.registry, 3)
    if style == "async":
        elapsed = asyncio.run(timed_async(processor.process, count))
    else:
        elapsed = timed_threaded(processor.process, count)
    print(json.dumps({"us_per_message": elapsed / count * 1e6, "count": count}), flush=True)


def measure(combo: Combo, level: str, count: int, logs: Path) -> float:
    """Run this script for `combo` at LOG_LEVEL `level`; microseconds per message."""
    argv = [sys.executable, str(Path(__file__).resolve()), combo.slug, combo.consumer, level, str(count)]
    with running(argv, {}, logs / f"processor-{level.lower()}-{combo.name}.log") as child:
        wait_until(lambda: child.process.poll() is not None, 60 + count / 1000, "the Processor alone", child)
    if child.process.returncode != 0:
        raise BenchError(f"the Processor alone failed:\n{child.output()[-3000:].decode(errors='replace')}")
    return float(json.loads(child.output().splitlines()[-1])["us_per_message"])


if __name__ == "__main__":
    main()
