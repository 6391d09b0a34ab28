"""Child processes of the benchmark: start them with their output in a file, read that output
(while they run, only what is new: see LogTail), stop them politely, and read their peak memory.

Every measured program runs in its own process, never in the benchmark's: the benchmark's own
work (polling, parsing) must not share an interpreter lock with what it measures.
"""

from __future__ import annotations

import contextlib
import functools
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


class LogTail:
    """Reads a growing log from where it stopped: a poll costs the new bytes only, not the whole
    log again (which, at MBs and every 50 ms, takes CPU from the program being measured)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""  # the last line, while its newline is not written yet

    def lines(self) -> list[bytes]:
        """The complete lines written since the last call."""
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            data = log.read()
        self.offset += len(data)
        *complete, self.partial = (self.partial + data).split(b"\n")
        return complete


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
        """The whole output: once, after the program ended or failed; while it runs, tail() reads."""
        return self.log.read_bytes()

    def tail(self) -> LogTail:
        """A reader of this program's output from its start, each call the new lines only."""
        return LogTail(self.log)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.output()[-3000:].decode(errors="replace")
            raise BenchError(f"{' '.join(self.argv)} exited with {self.process.returncode}:\n{tail}")

    def wait_for_output(self, needle: bytes, timeout: float) -> None:
        """Until `needle` appears in the output (the program says it is ready)."""
        tail = self.tail()

        def seen() -> bool:
            return any(needle in line for line in tail.lines())

        wait_until(seen, timeout, f"{needle!r} from {self.argv[-1]}", self)

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


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, child: Child | None = None, interval: float = 0.05
) -> None:
    """Poll `condition` every `interval` seconds; a BenchError when `child` dies or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if child is not None:
            child.check_alive()
        if time.monotonic() > deadline:
            tail = child.output()[-3000:].decode(errors="replace") if child else ""
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")
        time.sleep(interval)


def log_time(line: bytes) -> float | None:
    """The epoch time of a generated service's text log line (millisecond resolution)."""
    match = ASCTIME.match(line)
    if match is None:
        return None
    return second_time(match.group(1)) + int(match.group(2)) / 1000


@functools.lru_cache(maxsize=256)
def second_time(asctime: bytes) -> float:
    """The epoch time of a whole second of the log: parsed once per second, not once per line."""
    return time.mktime(datetime.strptime(asctime.decode(), "%Y-%m-%d %H:%M:%S").timetuple())


def python() -> str:
    return sys.executable
