"""Throw-away RabbitMQ nodes of the suite's own, so that a test may SIGKILL, restart, alarm or
cluster them without touching the machine's broker: each on free ports, with its own data dir."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import eventually, free_port

# The server itself, not the /usr/sbin wrapper (which writes to the machine's node's startup log).
SERVER = Path(os.environ.get("RABBITMQ_SERVER", "/usr/lib/rabbitmq/bin/rabbitmq-server"))
CTL = SERVER.with_name("rabbitmqctl")
HOW_TO_GET_IT = (
    f"these tests start RabbitMQ nodes of their own and need {SERVER}: `sudo apt-get install -y rabbitmq-server`"
    " (its service may stay stopped), or set RABBITMQ_SERVER to the rabbitmq-server script of an install"
)
START_SECONDS = 90


def as_broker_user() -> list[str]:
    """Run as the `rabbitmq` user where the package made one and we may (root): the data dirs and
    the Erlang cookie are its; otherwise as ourselves, with our own cookie."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return []
    with contextlib.suppress(KeyError):
        import pwd

        pwd.getpwnam("rabbitmq")
        return ["runuser", "-u", "rabbitmq", "--"]
    return []


class RabbitNode:
    """One node: `start()` and wait until it serves, `kill()` it like a crash, `start()` it again on the
    same data; `remove()` stops it and deletes everything."""

    def __init__(self, base: Path, name: str) -> None:
        if not SERVER.exists() or not CTL.exists():
            pytest.fail(HOW_TO_GET_IT, pytrace=False)
        self.name = f"{name}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.home = base / name
        self.home.mkdir(parents=True)
        (self.home / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n", encoding="utf-8")
        (self.home / "enabled_plugins").write_text("[].\n", encoding="utf-8")  # no management plugin
        (self.home / "rabbitmq-env.conf").write_text("", encoding="utf-8")  # not the machine's node's
        self._user = as_broker_user()
        if self._user:
            subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.home)], check=True)
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.home / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.home / "advanced.config"),  # none
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.home / "rabbitmq-env.conf"),
        }
        if self._user:
            self.env["HOME"] = "/var/lib/rabbitmq"  # where the rabbitmq user's Erlang cookie is

    @property
    def pid_file(self) -> Path:
        return self.home / "node.pid"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the node (again, after a kill, on the same data) and wait until it serves."""
        self.launch()
        self.wait()

    def launch(self) -> None:
        self.pid_file.unlink(missing_ok=True)
        subprocess.run([*self._user, str(SERVER), "-detached"], env=self.env, check=True, capture_output=True)

    def wait(self) -> None:
        assert eventually(self.pid_file.exists, timeout=30), f"{self.name} wrote no pid file: {self.log()}"
        self.ctl("wait", str(self.pid_file), "--timeout", str(START_SECONDS), timeout=START_SECONDS + 10)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """rabbitmqctl against this node; its output, or an AssertionError with the node's log."""
        done = subprocess.run(
            [*self._user, str(CTL), "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"rabbitmqctl {' '.join(args)} on {self.name}: {done.stderr}{self.log()}"
        return done.stdout

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text().strip())
        return None

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM, like a crash or a pulled plug, and wait until it is gone."""
        pid = self.pid()
        assert pid is not None, f"{self.name} has no pid"
        os.kill(pid, signal.SIGKILL)
        assert eventually(lambda: not alive(pid), timeout=10), f"{self.name} (pid {pid}) outlived SIGKILL"

    def alarm(self, on: bool) -> None:
        """Raise the memory alarm (publishers are blocked) or clear it again."""
        self.ctl("set_vm_memory_high_watermark", "0" if on else "0.4")

    def log(self) -> str:
        logs = sorted((self.home / "log").glob("*.log")) if (self.home / "log").exists() else []
        tail = "".join(path.read_text(errors="replace")[-2000:] for path in logs)
        return f"\n--- {self.name}'s log ---\n{tail}" if tail else ""

    def remove(self) -> None:
        pid = self.pid()
        if pid is not None and alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            eventually(lambda: not alive(pid), timeout=10)
        shutil.rmtree(self.home, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie is dead: only its parent has not reaped it yet
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    return True


@contextlib.contextmanager
def nodes(count: int) -> Iterator[list[RabbitNode]]:
    """`count` nodes started together (not clustered), stopped and deleted at the end."""
    base = Path(tempfile.mkdtemp(prefix="rabbitmq-nodes-"))
    os.chmod(base, 0o755)  # the rabbitmq user must reach its node's directory
    prefix = f"t{uuid.uuid4().hex[:6]}"
    started: list[RabbitNode] = []
    try:
        started = [RabbitNode(base, f"{prefix}-{n}") for n in range(1, count + 1)]
        for node in started:
            node.launch()  # together: each takes seconds to boot
        for node in started:
            node.wait()
        yield started
    finally:
        for node in started:
            node.remove()
        shutil.rmtree(base, ignore_errors=True)


def cluster(members: list[RabbitNode]) -> None:
    """Join every node to the first: stop_app, join_cluster, start_app."""
    first = members[0]
    for node in members[1:]:
        node.ctl("stop_app")
        node.ctl("join_cluster", first.name)
        node.ctl("start_app")
    status = first.ctl("cluster_status", "--formatter", "json")
    for node in members:
        assert node.name in status, status


def quorum_leader(node: RabbitNode, queue: str, members: list[RabbitNode], timeout: float = 30) -> RabbitNode:
    """The member that leads `queue`, as a live node reports it."""
    found: list[RabbitNode] = []

    def known() -> bool:
        listing = node.ctl("list_queues", "name", "leader", "--quiet", "--no-table-headers")
        for line in listing.splitlines():
            name, _, leader = line.partition("\t")
            if name == queue:
                found[:] = [member for member in members if member.name == leader.strip()]
        return bool(found)

    assert eventually(known, timeout=timeout), f"no leader of {queue!r} known to {node.name}"
    return found[0]
