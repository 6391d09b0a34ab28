"""Measures 3 and 4 against running services: the generated API (and its bare twin) under load,
and the latency from POST /tasks to the generated worker's handler."""

from __future__ import annotations

import asyncio
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import http_load
import queues
from bake import Combo, service_env
from drains import Handled, ready_line
from procs import Child, free_port, running, wait_until

BENCH = Path(__file__).resolve().parent
WARM_UP_SECONDS = 1.0


def uvicorn(app: str, port: int) -> list[str]:
    """The generated Dockerfile's command (access log included), on a port of our own."""
    argv = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    return [*argv, "--timeout-graceful-shutdown", "25", "--app-dir", str(BENCH)]


def is_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as answer:
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def wait_ready(child: Child, port: int) -> None:
    wait_until(lambda: is_ready(port), 60, f"/health/ready on port {port}", child)


def http(combo: Combo, kafka: str | None, logs: Path, seconds: float) -> tuple[http_load.Load, http_load.Load]:
    """POST /tasks on the generated API (publishing, CONSUMER_ENABLED=false), then on the same
    app with the publish removed: same command, settings and load."""
    queue = f"bench-http-{combo.name}-{uuid.uuid4().hex[:8]}"
    env = service_env(combo, queue, kafka, CONSUMER_ENABLED="false", BENCH_SLUG=combo.slug)
    results = []
    try:
        for name, app in (("api", f"{combo.slug}.main:app"), ("api-bare", "null_publisher_app:app")):
            port = free_port()
            with running(uvicorn(app, port), env, logs / f"{name}-{combo.name}.log") as child:
                wait_ready(child, port)
                http_load.load(port, WARM_UP_SECONDS)
                result = http_load.load(port, seconds)
                child.check_alive()
            if result.errors:
                raise RuntimeError(f"{name} {combo.name}: {result.errors} answers were not 202")
            results.append(result)
    finally:
        queues.delete(combo.broker, queue, kafka)
    return results[0], results[1]


def end_to_end(combo: Combo, kafka: str | None, logs: Path, rate: float, count: int) -> list[float]:
    """Seconds from sending each POST /tasks to its handler starting in the worker, at `rate`/s."""
    queue = f"bench-e2e-{combo.name}-{uuid.uuid4().hex[:8]}"
    port = free_port()
    api_env = service_env(combo, queue, kafka, CONSUMER_ENABLED="false")
    log = logs / f"e2e-worker-{combo.name}.log"
    try:
        with (
            running(uvicorn(f"{combo.slug}.main:app", port), api_env, logs / f"e2e-api-{combo.name}.log") as api,
            running([sys.executable, "-m", f"{combo.slug}.worker"], service_env(combo, queue, kafka), log) as worker,
        ):
            wait_ready(api, port)
            worker.wait_for_output(ready_line(combo.broker), 60)
            sent = asyncio.run(http_load.paced_posts(port, rate, count))
            handled, tail = Handled(), worker.tail()
            wait_until(lambda: handled.read(tail) >= count, 60, "every e2e task handled", worker)
        started = http_load.handler_starts(log)
        return [started[index] - sent[index] for index in sent]
    finally:
        queues.delete(combo.broker, queue, kafka)
