"""Child processes of the benchmark: start them with their output in a file, read that output,
stop them politely, and read their peak memory.

Every measured program runs in its own process, never in the benchmark's: the benchmark's own
work (polling, parsing) must not share an interpreter lock with what it measures.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path

# The generated services' text log line starts with logging's default asctime: "2026-11-28 18:48:57,123".
ASCTIME = re.compile(rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


class BenchError(RuntimeError):
    """A measured program did not start, or did not finish its work in time."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Child:
    """One measured program; stdout and stderr go to `log` so that it never blocks on a full pipe."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log: Path, cwd: Path | None = None) -> None:
        self.argv = argv
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> bytes:
        return self.log.read_bytes()

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.output()[-3000:].decode(errors="replace")
            raise BenchError(f"{' '.join(self.argv)} exited with {self.process.returncode}:\n{tail}")

    def wait_for_output(self, needle: bytes, timeout: float) -> None:
        """Until `needle` appears in the output (the program says it is ready)."""
        wait_until(lambda: needle in self.output(), timeout, f"{needle!r} from {self.argv[-1]}", self)

    def peak_rss_mb(self) -> float:
        """VmHWM: the most resident memory the process ever had, in MiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        kilobytes = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
        return kilobytes / 1024

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, as an orchestrator would; SIGKILL when it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running(argv: list[str], env: Mapping[str, str], log: Path, cwd: Path | None = None) -> Iterator[Child]:
    child = Child(argv, env, log, cwd)
    try:
        yield child
    finally:
        child.stop()


def wait_until(condition: Callable[[], bool], timeout: float, what: str, child: Child | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if child is not None:
            child.check_alive()
        if time.monotonic() > deadline:
            tail = child.output()[-3000:].decode(errors="replace") if child else ""
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")
        time.sleep(0.05)


def log_time(line: bytes) -> float | None:
    """The epoch time of a generated service's text log line (millisecond resolution)."""
    match = ASCTIME.match(line)
    if match is None:
        return None
    stamp = datetime.strptime(match.group(1).decode(), "%Y-%m-%d %H:%M:%S")
    return time.mktime(stamp.timetuple()) + int(match.group(2)) / 1000


def python() -> str:
    return sys.executable
