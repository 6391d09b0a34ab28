"""Measure 1, 2, 5 and 6 of the benchmark: a queue pre-filled with N messages, drained by the
generated worker, the bare client loop, Celery and FastStream; messages per second between the
first and the last message handled; and the worker's peak RSS. Then two drains of the generated
worker alone: with a handler that waits 10 ms (bench/io_worker.py), and one killed part way.

The generated worker's handled messages are read from its log as it grows (Handled, over a
procs.LogTail): the log reaches MBs, and reading it whole at every poll would take CPU from the
worker being measured.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import io_worker
import queues
import redis
from bake import PREFETCH_COUNT, Combo, service_env
from procs import BenchError, LogTail, free_port, log_time, running, wait_until

BENCH = Path(__file__).resolve().parent
HANDLED = b"processing image"  # the example handler's own log line: the handler has started
TASK_ID = re.compile(rb"\[task=bench-(\d+) ")  # queues.message's ids, in the log line's context
CELERY_URLS = {"rabbitmq": "amqp://guest:guest@127.0.0.1:5672//", "redis": "redis://127.0.0.1:6379/0"}


@dataclass
class Drain:
    """Where a drain runs: the broker, the message count, tansu's address, a folder for logs."""

    broker: str
    count: int
    kafka: str | None
    logs: Path

    def timeout(self) -> float:
        return 60 + self.count / 200

    def queue(self, who: str) -> str:
        return f"bench-{who}-{uuid.uuid4().hex[:8]}"


def rate(first: float, last: float, count: int) -> float:
    """Messages per second from the first handled to the last (count - 1 intervals)."""
    if count < 2 or last <= first:
        raise BenchError(f"cannot take a rate from {count} message(s) between {first} and {last}")
    return (count - 1) / (last - first)


class Handled:
    """The handler's lines in worker logs, taken in as the logs grow: how many, when, and which tasks."""

    def __init__(self, needle: bytes = HANDLED) -> None:
        self.needle = needle
        self.count = 0
        self.stamps: list[float] = []
        self.ids: collections.Counter[int] = collections.Counter()

    def read(self, tail: LogTail) -> int:
        """Take in the lines `tail` has new; how many handled lines there were so far."""
        for line in tail.lines():
            if self.needle in line:
                self.count += 1
                stamp = log_time(line)
                if stamp is not None:
                    self.stamps.append(stamp)
                match = TASK_ID.search(line)
                if match is not None:
                    self.ids[int(match.group(1))] += 1
        return self.count

    def rate(self) -> float:
        # The log's times are whole milliseconds; over a drain of seconds that is well under 1 %.
        return rate(min(self.stamps), max(self.stamps), len(self.stamps))


def ready_line(broker: str) -> bytes:
    """What a generated worker logs once messages can flow (for Kafka, once it owns partitions)."""
    return b"assigned partitions" if broker == "kafka" else b"consuming"


def worker(drain: Drain, combo: Combo) -> tuple[float, float]:
    """The generated worker, `python -m <slug>.worker`, at the default LOG_LEVEL (INFO)."""
    queue = drain.queue(combo.name)
    try:
        queues.fill(drain.broker, queue, drain.count, drain.kafka)
        env = service_env(combo, queue, drain.kafka)
        log = drain.logs / f"worker-{combo.name}.log"
        with running([sys.executable, "-m", f"{combo.slug}.worker"], env, log) as child:
            handled, tail = Handled(), child.tail()
            wait_until(lambda: handled.read(tail) >= drain.count, drain.timeout(), "the drain", child)
            rss = child.peak_rss_mb()
        return handled.rate(), rss
    finally:
        queues.delete(drain.broker, queue, drain.kafka)


def quiet_worker(drain: Drain, combo: Combo) -> float:
    """The generated worker at LOG_LEVEL=WARNING: no line per message, so what logging costs shows.
    Without log lines to time, its /metrics counter is polled (every 50 ms: a few % of error)."""
    queue = drain.queue(f"quiet-{combo.name}")
    port = free_port()
    try:
        queues.fill(drain.broker, queue, drain.count, drain.kafka)
        env = service_env(combo, queue, drain.kafka, LOG_LEVEL="WARNING", METRICS_PORT=str(port))
        with running(
            [sys.executable, "-m", f"{combo.slug}.worker"], env, drain.logs / f"quiet-{combo.name}.log"
        ) as child:
            samples: list[tuple[float, int]] = []
            deadline = time.monotonic() + drain.timeout()
            while not samples or samples[-1][1] < drain.count:
                child.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"the quiet worker handled {samples[-1:]} of {drain.count} in time")
                samples.append((time.monotonic(), succeeded(port)))
                time.sleep(0.05)
        return polled_rate(samples)
    finally:
        queues.delete(drain.broker, queue, drain.kafka)


def polled_rate(samples: list[tuple[float, int]]) -> float:
    """From the first reading above zero to the last; when the whole drain fell between two
    readings (a small --quick drain), from the reading before it: a lower bound."""
    index = next(index for index, (_, count) in enumerate(samples) if count > 0)
    if index == len(samples) - 1:
        index = max(0, index - 1)
    (start, started_count), (end, count) = samples[index], samples[-1]
    if end <= start:
        raise BenchError(f"cannot take a rate from the readings {samples}")
    return (count - started_count) / (end - start)


def succeeded(port: int) -> int:
    """tasks_processed_total{outcome="succeeded"} from the worker's /metrics; 0 until it answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return 0
    match = re.search(r'^tasks_processed_total\{outcome="succeeded"\} ([\d.e+]+)$', text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


def bare(drain: Drain, combo: Combo) -> float:
    queue = drain.queue(f"bare-{combo.name}")
    try:
        queues.fill(drain.broker, queue, drain.count, drain.kafka)
        argv = [sys.executable, str(BENCH / "bare.py"), combo.broker, combo.consumer, queue, str(drain.count)]
        log = drain.logs / f"bare-{combo.name}.log"
        with running([*argv, drain.kafka or ""], {}, log) as child:
            wait_until(lambda: child.process.poll() is not None, drain.timeout(), "the bare loop", child)
        if child.process.returncode != 0:
            raise BenchError(f"the bare loop failed:\n{child.output()[-3000:].decode(errors='replace')}")
        result = json.loads(child.output().splitlines()[-1])
        return rate(result["first"], result["last"], result["count"])
    finally:
        queues.delete(drain.broker, queue, drain.kafka)


def io_bound(drain: Drain, combo: Combo, count: int) -> float:
    """Messages per second with bench/io_worker.py's handler (10 ms asleep, 8 at a time; its
    docstring says how): against the ideal 800, what the runner loses overlapping them."""
    queue = drain.queue(f"io-{combo.name}")
    try:
        queues.fill(
            drain.broker, queue, count, drain.kafka, task_type=io_worker.TASK_TYPE, partitions=io_worker.CONCURRENCY
        )
        env = service_env(combo, queue, drain.kafka, **io_worker.settings(combo.broker, combo.consumer))
        argv = [sys.executable, str(BENCH / "io_worker.py"), combo.slug, combo.consumer]
        with running(argv, env, drain.logs / f"io-{combo.name}.log") as child:
            handled, tail = Handled(io_worker.HANDLED), child.tail()
            timeout = 60 + count / 100
            wait_until(lambda: handled.read(tail) >= count, timeout, "the I/O-bound drain", child)
        return steady_rate(sorted(handled.stamps))
    finally:
        queues.delete(drain.broker, queue, drain.kafka)


def steady_rate(stamps: list[float]) -> float:
    """Messages per second between the 10th and the 90th percentile of the handlers' end times: the
    rate once every lane runs. A first fetch that reaches the partitions one after another, and
    partitions that run dry at different times, are the start and the end of a drain, not its pace."""
    low, high = stamps[len(stamps) // 10], stamps[len(stamps) * 9 // 10]
    if high <= low:
        raise BenchError(f"cannot take a steady rate from {len(stamps)} handler lines")
    return (len(stamps) * 9 // 10 - len(stamps) // 10) / (high - low)


def kill_duplicates(drain: Drain, combo: Combo, count: int) -> int:
    """Messages handled twice when a worker is SIGKILLed a third of the way through a drain and a
    second one finishes it: at most what the first held unacknowledged (PREFETCH_COUNT). Every
    message must be handled at least once: a loss is a BenchError."""
    queue = drain.queue(f"kill-{combo.name}")
    # Redis gives a dead consumer's pending messages to another once idle CLAIM_IDLE_SECONDS (30 by default).
    claim = {"CLAIM_IDLE_SECONDS": "2"} if combo.broker == "redis" else {}
    env = service_env(combo, queue, drain.kafka, **claim)
    argv = [sys.executable, "-m", f"{combo.slug}.worker"]
    handled = Handled()
    try:
        queues.fill(drain.broker, queue, count, drain.kafka)
        # A third of the way, give or take a prefetch: not at the same point of the fetch and ack cycle each time.
        kill_at = count // 3 + random.randrange(PREFETCH_COUNT)
        with running(argv, env, drain.logs / f"kill-first-{combo.name}.log") as first:
            tail = first.tail()
            # Polled often: a --quick drain lasts a fraction of a second.
            wait_until(lambda: handled.read(tail) >= kill_at, drain.timeout(), "a third handled", first, 0.005)
            first.process.kill()
            first.process.wait()
            handled.read(tail)
        if len(handled.ids) >= count:
            raise BenchError(f"the first worker handled all {count} messages before it was killed")
        with running(argv, env, drain.logs / f"kill-second-{combo.name}.log") as second:
            tail = second.tail()
            try:
                # Kafka: the second worker gets the partitions once the group drops the first (SESSION_TIMEOUT_SECONDS).
                wait_until(lambda: handled_all(handled, tail, count), drain.timeout() + 30, "the rest", second)
            except BenchError as error:
                missing = sorted(set(range(count)) - set(handled.ids))
                raise BenchError(
                    f"{len(missing)} message(s) lost after the kill, e.g. bench-{missing[0]}: {error}"
                ) from None
        handled.read(tail)  # what it finished while it stopped
        return handled.count - len(handled.ids)
    finally:
        queues.delete(drain.broker, queue, drain.kafka)


def handled_all(handled: Handled, tail: LogTail, count: int) -> bool:
    """Every message of the drain handled at least once, by either worker."""
    handled.read(tail)
    return len(handled.ids) >= count


def celery(drain: Drain) -> float | None:
    """Celery has no Kafka transport: None (n/a)."""
    if drain.broker not in CELERY_URLS:
        return None
    queue = drain.queue("celery")
    result = drain.logs / f"celery-{drain.broker}.json"
    result.unlink(missing_ok=True)
    env = {"BENCH_BROKER": CELERY_URLS[drain.broker], "BENCH_COUNT": str(drain.count), "PYTHONPATH": str(BENCH)}
    try:
        fill_celery(drain.broker, queue, drain.count)
        argv = [sys.executable, "-m", "celery", "-A", "peer_celery", "worker", "-P", "solo", "-Q", queue]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        with running(argv, {**env, "BENCH_RESULT": str(result)}, drain.logs / f"celery-{drain.broker}.log") as child:
            wait_until(result.exists, drain.timeout(), "the Celery drain", child)
        return rate_from(result)
    finally:
        delete_celery(drain.broker, queue)


def fill_celery(broker: str, queue: str, count: int) -> None:
    """In a child process: Celery's app reads its broker from the environment at import."""
    code = f"import peer_celery; peer_celery.fill({queue!r}, {count})"
    env = {"BENCH_BROKER": CELERY_URLS[broker], "PYTHONPATH": str(BENCH)}
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True, cwd=BENCH)


def delete_celery(broker: str, queue: str) -> None:
    queues.delete(broker, queue)
    if broker == "redis":  # kombu's bookkeeping of unacked messages, shared by every Celery on this db
        client = redis.Redis.from_url(queues.REDIS_URL)
        client.delete("unacked", "unacked_index", "unacked_mutex")
        client.close()


def faststream(drain: Drain) -> float:
    queue = drain.queue("faststream")
    result = drain.logs / f"faststream-{drain.broker}.json"
    result.unlink(missing_ok=True)
    url = {"rabbitmq": queues.RABBIT_URL, "redis": queues.REDIS_URL}.get(drain.broker, drain.kafka or "")
    env = {"BENCH_KIND": drain.broker, "BENCH_URL": url, "BENCH_QUEUE": queue}
    env |= {"BENCH_COUNT": str(drain.count), "BENCH_RESULT": str(result), "PYTHONPATH": str(BENCH)}
    try:
        # FastStream declares a plain durable queue: pre-declare it the same way, not with the service's arguments.
        queues.fill(drain.broker, queue, drain.count, drain.kafka, service=False)
        log = drain.logs / f"faststream-{drain.broker}.log"
        with running([sys.executable, str(BENCH / "peer_faststream.py")], env, log) as child:
            wait_until(result.exists, drain.timeout(), "the FastStream drain", child)
        return rate_from(result)
    finally:
        queues.delete(drain.broker, queue, drain.kafka)


def rate_from(path: Path) -> float:
    result = json.loads(path.read_text())
    return rate(result["first"], result["last"], result["count"])
