"""Measures 3 and 4 of the benchmark: POST /tasks under concurrent load (wrk where installed,
else a small asyncio HTTP/1.1 client), and the latency from POST /tasks to the handler starting.

The Python client is the fallback only: on a small machine it competes with the server for CPU,
so its requests per second are a floor. The report says which client measured.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from procs import log_time

BODY = b'{"type": "process_image", "payload": {"image_url": "https://example.com/a.png"}}'
CONNECTIONS = 32
WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def request(port: int, body: bytes = BODY) -> bytes:
    head = f"POST /tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def client_name() -> str:
    return "wrk" if shutil.which("wrk") else "python-asyncio"


def load(port: int, seconds: float) -> Load:
    return wrk(port, seconds) if shutil.which("wrk") else asyncio.run(python_load(port, seconds))


def wrk(port: int, seconds: float) -> Load:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT.format(body=BODY.decode()))
        script.flush()
        argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency", "-s", script.name]
        output = subprocess.run([*argv, f"http://127.0.0.1:{port}/tasks"], capture_output=True, text=True, check=True)
    text = output.stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return Load(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),  # type: ignore[union-attr]
        p50_ms=wrk_ms(text, "50%"),
        p99_ms=wrk_ms(text, "99%"),
        errors=int(errors.group(1)) if errors else 0,
    )


def wrk_ms(text: str, percentile: str) -> float:
    match = re.search(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    assert match is not None, text
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> int:
    """One request on a kept-alive connection; returns the status code."""
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: (\d+)", head)
    await reader.readexactly(int(length.group(1)) if length else 0)
    return int(head.split(b" ", 2)[1])


async def python_load(port: int, seconds: float) -> Load:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    data = request(port)

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (started := time.perf_counter()) < deadline:
            status = await post(reader, writer, data)
            latencies.append(time.perf_counter() - started)
            errors += status != 202
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    elapsed = time.perf_counter() - started
    return Load(len(latencies) / elapsed, percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000, errors)


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if len(values) > 1 else values[0]


async def paced_posts(port: int, rate: float, count: int) -> dict[int, float]:
    """POST `count` tasks at `rate` per second, each with its own image URL (so the worker's log
    line can be matched to it); returns each task's send time. A few connections, as at a
    moderate rate none is ever busy for long."""
    connections: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(8):
        connections.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    sent: dict[int, float] = {}

    async def one(index: int) -> None:
        body = BODY.replace(b"a.png", f"e2e-{index}.png".encode())
        reader, writer = await connections.get()
        sent[index] = time.time()
        status = await post(reader, writer, request(port, body))
        connections.put_nowait((reader, writer))
        if status != 202:
            raise RuntimeError(f"POST /tasks answered {status}")

    start = time.perf_counter()
    tasks = []
    for index in range(count):
        await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)
    while not connections.empty():
        connections.get_nowait()[1].close()
    return sent


def handler_starts(log: Path) -> dict[int, float]:
    """The worker's "processing image https://example.com/e2e-<n>.png" lines: n -> time (mid-millisecond)."""
    starts = {}
    for line in log.read_bytes().splitlines():
        match = re.search(rb"processing image https://example\.com/e2e-(\d+)\.png", line)
        stamp = log_time(line) if match else None
        if match and stamp is not None:
            starts[int(match.group(1))] = stamp + 0.0005  # the log truncates to the millisecond
    return starts
