"""Redis processes of the suite's own, on free ports with their own directories, so the fault tests
can SIGKILL, fill and fail them over without touching the Redis at BROKER_URL."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from .helpers import free_port

HOW_TO_GET_IT = "install it: `sudo apt-get install -y redis-server` (Debian, Ubuntu), or put redis-server on PATH"
START_SECONDS = 15.0


def redis_binary() -> str:
    """redis-server, or a failure that says how to get it: the scenarios that need it never skip."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(f"the fault tests start Redis processes of their own and need redis-server: {HOW_TO_GET_IT}")
    return binary


@dataclass
class RedisServer:
    """One redis-server (or, with `sentinel`, a Sentinel) in `directory`; start() again after kill() reuses it."""

    directory: Path
    arguments: list[str] = field(default_factory=list)
    sentinel: bool = False
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=3, socket_connect_timeout=1)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        command = [redis_binary(), str(self._config())]
        if self.sentinel:
            command.append("--sentinel")
        self.process = subprocess.Popen(command, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_SECONDS
        while not self._answers():
            assert self.process.poll() is None, (self.directory / "redis.log").read_text()[-2000:]
            assert time.monotonic() < deadline, f"redis-server on {self.port} did not answer in {START_SECONDS} s"
            time.sleep(0.05)

    def _config(self) -> Path:
        """A config file of its own: Sentinel rewrites it, and the arguments go in it, not on the command line."""
        config = self.directory / ("sentinel.conf" if self.sentinel else "redis.conf")
        if not config.exists() or not self.sentinel:  # a Sentinel keeps what it learnt across its restarts
            lines = [f"port {self.port}", "bind 127.0.0.1", f'dir "{self.directory}"', *self.arguments]
            if not self.sentinel:
                lines += ['save ""']
            config.write_text("\n".join(lines) + "\n")
        return config

    def _answers(self) -> bool:
        client = self.client()
        try:
            if self.sentinel:
                return bool(client.ping())
            info = client.info("persistence")
            return int(info.get("loading", 0)) == 0
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last fsync; what the AOF holds is what survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def redis_servers(root: Path) -> Iterator[list[RedisServer]]:
    """A list to put servers in; each is stopped, and every directory removed, at the end."""
    servers: list[RedisServer] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def aof(fsync: str) -> list[str]:
    """An append-only file, synced to disk after every write (`always`) or once a second (`everysec`)."""
    return ["appendonly yes", f"appendfsync {fsync}"]
