"""Measure this service the way the template's benchmark does; the standard library only.

    python scripts/load.py publish [--seconds 10] [--connections 32]   # POST /tasks under load
    python scripts/load.py fill --count 20000                          # queue N tasks over HTTP
    python scripts/load.py drain --count 20000                         # a worker's messages per second

`publish` keeps `--connections` requests in flight for `--seconds` and prints requests per
second with the p50 / p99 latency (every answer must be a 202). `drain` polls a worker's
/metrics (`tasks_processed_total{outcome="succeeded"}`) and times it from its first handled task
to the `--count`-th, so start-up and connecting do not count. To measure consuming alone: run
the API with CONSUMER_ENABLED=false, `fill`, then start `drain` and a worker (METRICS_PORT=9100,
the default) in either order. `--type` and `--payload` measure your own task type instead of the
example. Run it on another machine than the service for figures that are not shared with the
load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

EXAMPLE_PAYLOAD = '{"image_url": "https://example.com/a.png"}'
SUCCEEDED = re.compile(r'^tasks_processed_total\{outcome="succeeded"\} ([0-9.e+]+)$', re.MULTILINE)


@dataclass
class Tally:
    """Latencies of answered requests, and the answers that were not a 202."""

    latencies: list[float] = field(default_factory=list)
    failures: dict[int, int] = field(default_factory=dict)

    def add(self, status: int, seconds: float) -> None:
        if status == 202:
            self.latencies.append(seconds)
        else:
            self.failures[status] = self.failures.get(status, 0) + 1


def request_bytes(url: str, body: bytes) -> tuple[str, int, bytes]:
    """Host, port and one POST /tasks request, ready to write on a kept-alive connection."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = f"POST /tasks HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    return host, port, (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> int:
    """One request and its whole answer; returns the status code."""
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    await reader.readexactly(int(length.group(1)) if length else 0)
    return int(head.split(b" ", 2)[1])


async def run_load(url: str, body: bytes, connections: int, seconds: float | None, count: int | None) -> Tally:
    """`connections` clients posting back to back, until `seconds` have passed or `count` were sent."""
    host, port, data = request_bytes(url, body)
    tally = Tally()
    deadline = time.perf_counter() + seconds if seconds else float("inf")
    remaining = [count if count is not None else -1]

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline and remaining[0] != 0:
                remaining[0] -= 1
                started = time.perf_counter()
                status = await post(reader, writer, data)
                tally.add(status, time.perf_counter() - started)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return tally


def percentile(values: list[float], p: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def publish(args: argparse.Namespace, body: bytes) -> int:
    started = time.perf_counter()
    tally = asyncio.run(run_load(args.url, body, args.connections, args.seconds, None))
    elapsed = time.perf_counter() - started
    print(
        f"POST /tasks: {len(tally.latencies) / elapsed:,.0f} req/s over {elapsed:.1f} s, "
        f"{args.connections} connections; latency p50 {percentile(tally.latencies, 50) * 1000:.1f} ms, "
        f"p99 {percentile(tally.latencies, 99) * 1000:.1f} ms"
    )
    return report_failures(tally)


def fill(args: argparse.Namespace, body: bytes) -> int:
    started = time.perf_counter()
    tally = asyncio.run(run_load(args.url, body, args.connections, None, args.count))
    print(f"queued {len(tally.latencies)} task(s) in {time.perf_counter() - started:.1f} s")
    return report_failures(tally)


def report_failures(tally: Tally) -> int:
    if tally.failures:
        print(f"answers other than 202: {tally.failures}", file=sys.stderr)
        return 1
    return 0


def succeeded(metrics_url: str) -> int | None:
    """The worker's count of succeeded tasks, or None while it does not answer."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=2) as answer:
            text = answer.read().decode()
    except (OSError, urllib.error.URLError):
        return None
    match = SUCCEEDED.search(text)
    return int(float(match.group(1))) if match else 0


def drain(args: argparse.Namespace) -> int:
    """Poll every `--interval` s; the rate runs from the first reading above the starting count."""
    baseline: int | None = None
    first: tuple[float, int] | None = None
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        now, done = time.monotonic(), succeeded(args.metrics)
        if done is not None:
            baseline = done if baseline is None else baseline
            if first is None and done > baseline:
                first = (now, done)
            if first is not None and done - baseline >= args.count:
                if now > first[0]:
                    rate = (done - first[1]) / (now - first[0])
                    print(f"drained {done - baseline} task(s): {rate:,.0f} per second (±{args.interval:g} s)")
                else:
                    print(f"drained {done - baseline} task(s) between two readings: use a larger --count")
                return 0
        time.sleep(args.interval)
    print(f"timed out: {args.count} task(s) not handled within {args.timeout:g} s", file=sys.stderr)
    return 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the API (default: %(default)s)")
    parser.add_argument("--type", default="process_image", help="the task type (default: %(default)s)")
    parser.add_argument("--payload", default=EXAMPLE_PAYLOAD, help="the task's payload, JSON")
    parser.add_argument("--connections", type=int, default=32, help="requests in flight (default: %(default)s)")
    modes = parser.add_subparsers(dest="mode", required=True)
    modes.add_parser("publish", help="POST /tasks under load").add_argument("--seconds", type=float, default=10.0)
    modes.add_parser("fill", help="queue --count tasks").add_argument("--count", type=int, required=True)
    drain_mode = modes.add_parser("drain", help="a worker's messages per second, from its /metrics")
    drain_mode.add_argument("--count", type=int, required=True)
    drain_mode.add_argument("--metrics", default="http://127.0.0.1:9100/metrics", help="the worker's /metrics")
    drain_mode.add_argument("--interval", type=float, default=0.05, help="seconds between readings")
    drain_mode.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.mode == "drain":
        return drain(args)
    body = json.dumps({"type": args.type, "payload": json.loads(args.payload)}).encode()
    return publish(args, body) if args.mode == "publish" else fill(args, body)


if __name__ == "__main__":
    sys.exit(main())
