"""Podman for tests/test_image.py: the engine's settings for this sandbox, a stand-in for the official
Python base image, the machine's pip settings for the build, containers and the HTTP calls to them,
and the report printed at the end of the run.

Nothing here names a registry, a mirror or a certificate: they are read from the machine at test time."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

TOOLS = ("podman", "runc", "debootstrap")
INSTALL_HINT = "install them with `apt-get install podman runc debootstrap` (.ci/run does so when they are missing)"

# crun fails here ("cgroups in hybrid mode not supported"); the sandbox refuses podman's default
# ulimits (setrlimit RLIMIT_NOFILE); there is no systemd to manage cgroups.
CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""

# The stand-in for python:3.11-slim-bookworm (no registry serves base images here). Bump the
# version when the recipe changes: a machine keeps the image between runs and rebuilds it only
# when its tag is missing.
STAND_IN = "localhost/template-test/python-stand-in:3.11-bookworm-2"
STAND_IN_LABEL = "org.example.template-test.stand-in"  # on every stand-in: tells it from a real python image
OFFICIAL = "docker.io/library/python:3.11-slim-bookworm"  # what the Dockerfile names for python_version=3.11
STAND_IN_PACKAGES = "python3,python3-venv,python-is-python3"

# Where the build's pip settings and CA bundle are mounted. Both paths exist in the stand-in, so
# that a bind mount leaves no mount point behind in the layers the Dockerfile adds.
IMAGE_PIP_CONF = "/etc/pip.conf"
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

# Set once, in the process that starts the run, so that pytest-xdist's workers inherit the same directory.
REPORTS = Path(os.environ.setdefault("TEMPLATE_IMAGE_REPORTS", tempfile.mkdtemp(prefix="image-reports-")))


def require_tools() -> None:
    """Fail, saying how to install them, when the tools are missing: never skip."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found; the image test builds and runs with Podman: {INSTALL_HINT}")


class Podman:
    """The podman command with this sandbox's settings, given through CONTAINERS_CONF
    (the machine's own configuration files are left alone)."""

    def __init__(self, workdir: Path) -> None:
        conf = workdir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"`podman {' '.join(args)}` exited {result.returncode}\n{result.stdout}\n{result.stderr}",
                pytrace=False,
            )
        return result

    def __call__(self, *args: str, timeout: float = 120) -> str:
        return self.run(*args, timeout=timeout).stdout

    def exists(self, image: str) -> bool:
        return self.run("image", "exists", image, check=False).returncode == 0

    def inspect(self, name: str) -> dict[str, object]:
        found: list[dict[str, object]] = json.loads(self("inspect", name))
        return found[0]


@contextlib.contextmanager
def machine_lock(name: str) -> Iterator[None]:
    """One holder at a time on this machine (podman's store and port 8000 are the machine's)."""
    with (Path(tempfile.gettempdir()) / f"template-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses for bookworm (deb822 .sources or sources.list)."""
    apt = Path("/etc/apt")
    for path in sorted(apt.glob("sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.MULTILINE))
            if "deb" in fields.get("Types", "").split() and "bookworm" in fields.get("Suites", "").split():
                return fields["URIs"].split()[0]
    lists = [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]
    for path in lists:
        if path.exists():
            for line in path.read_text().splitlines():
                match = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line)
                if match:
                    return match.group(1)
    pytest.fail("no Debian bookworm archive in /etc/apt/sources.list(.d); debootstrap needs one", pytrace=False)


def ensure_stand_in(podman: Podman) -> float:
    """The stand-in base, tagged with the official python:3.11 image's name; made with debootstrap
    when missing. Returns the seconds it took (about 0 when the machine already had it)."""
    started = time.monotonic()
    with machine_lock("podman-stand-in"):
        if podman.exists(OFFICIAL) and STAND_IN_LABEL not in (podman.inspect(OFFICIAL).get("Labels") or {}):
            pytest.fail(
                f"this machine has an image tagged {OFFICIAL} that is not the test's stand-in; the test tags its "
                f"stand-in with that name and will not take the tag from yours: `podman untag {OFFICIAL}` first",
                pytrace=False,
            )
        if not podman.exists(STAND_IN):
            mirror = debian_mirror()
            with tempfile.TemporaryDirectory(prefix="stand-in-") as scratch:
                root = Path(scratch) / "root"
                debootstrap = ["debootstrap", "--variant=minbase", f"--include={STAND_IN_PACKAGES}"]
                result = subprocess.run(
                    [*debootstrap, "bookworm", str(root), mirror],
                    capture_output=True,
                    text=True,
                    timeout=900,
                    check=False,
                )
                if result.returncode != 0:
                    pytest.fail(f"debootstrap failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}", pytrace=False)
                # What the official slim image does not carry either: apt's downloads and lists.
                for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
                    shutil.rmtree(root / cache, ignore_errors=True)
                    (root / cache / "partial").mkdir(parents=True)
                (root / IMAGE_PIP_CONF.lstrip("/")).touch()  # the build's mount point, see IMAGE_PIP_CONF
                tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
                changes = ["ENV LANG=C.UTF-8", 'CMD ["python3"]', f"LABEL {STAND_IN_LABEL}=1"]
                imported = subprocess.run(
                    ["podman", "import", *(f"--change={change}" for change in changes), "-", STAND_IN],
                    stdin=tar.stdout,
                    env=podman.env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
                tar.wait()
                if imported.returncode != 0 or tar.returncode != 0:
                    pytest.fail(f"podman import failed:\n{imported.stderr}", pytrace=False)
        podman("tag", STAND_IN, OFFICIAL)
    return time.monotonic() - started


@functools.cache
def pip_settings() -> dict[str, str]:
    """pip's settings on this machine as `pip config list` shows them (environment first), by key."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    ranked: dict[str, tuple[int, str]] = {}
    rank = {":env:": 0, "install": 1, "global": 2}
    for line in listed.splitlines():
        match = re.match(r"^([^.=]*)\.([a-z-]+)='(.*)'$", line)
        if match and match.group(1) in rank:
            section, key, value = match.groups()
            if key not in ranked or rank[section] < ranked[key][0]:
                ranked[key] = (rank[section], value)
    return {key: value for key, (_, value) in ranked.items()}


def build_mounts(workdir: Path) -> list[str]:
    """`podman build -v` options that give the build's pip this machine's index and certificate
    authority, leaving the Dockerfile as it is. Only what a container can use is passed on:
    http(s) indexes (not file:// ones, nor find-links on this machine's disk)."""
    settings = pip_settings()
    # pip gives up on a read slower than 15 s, without retrying it (a CI build failed so, 1.7 MB into a wheel).
    lines = ["[global]", "timeout = 60", "retries = 10"]
    mounts: list[str] = []
    for key in ("index-url", "extra-index-url", "trusted-host"):
        values = [value for value in settings.get(key, "").split() if key == "trusted-host" or value.startswith("http")]
        if values:
            lines.append(f"{key} = {' '.join(values)}")
    ca = next(
        (
            value
            for value in (settings.get("cert"), os.environ.get("REQUESTS_CA_BUNDLE"), os.environ.get("SSL_CERT_FILE"))
            if value and Path(value).is_file()
        ),
        None,
    )
    if ca:
        lines.append(f"cert = {IMAGE_CA_BUNDLE}")
        mounts += ["-v", f"{ca}:{IMAGE_CA_BUNDLE}:ro"]
    conf = workdir / "pip.conf"
    conf.write_text("\n".join(lines) + "\n")
    return [*mounts, "-v", f"{conf}:{IMAGE_PIP_CONF}:ro"]


def build_hosts() -> list[str]:
    """The host names of the indexes the build may use: they must not end up in the image."""
    settings = pip_settings()
    urls = " ".join(settings.get(key, "") for key in ("index-url", "extra-index-url")).split()
    return [host for url in urls if (host := re.sub(r"^[a-z+]+://([^/:@]*@)?([^/:]+).*$", r"\2", url)) != url]


T = TypeVar("T")


def http(method: str, url: str, body: dict[str, object] | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def poll(what: str, check: Callable[[], T], timeout: float, describe: Callable[[], str] = str) -> T:
    """check() until it returns something truthy; fail after `timeout` seconds with `describe()`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s\n{describe()}", pytrace=False)
        time.sleep(0.2)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus sample's values over the series with these labels."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{key}="{value}"' in (match.group(1) or "") for key, value in labels.items()):
            total += float(match.group(2))
    return total


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class Container:
    """A container started with `start`."""

    def __init__(self, podman: Podman, name: str) -> None:
        self.podman, self.name = podman, name

    def logs(self) -> str:
        """The container's output, stdout and stderr in the order they were written."""
        result = subprocess.run(
            ["podman", "logs", self.name],
            env=self.podman.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
            check=False,
        )
        return result.stdout

    def state(self) -> dict[str, object]:
        state: dict[str, object] = self.podman.inspect(self.name)["State"]  # type: ignore[assignment]
        return state

    def stop(self) -> tuple[float, int]:
        """SIGTERM (the image's STOPSIGNAL), SIGKILL after 30 s as compose would; (seconds, exit code)."""
        started = time.monotonic()
        self.podman("stop", "--time", "30", self.name, timeout=60)
        return time.monotonic() - started, int(str(self.state()["ExitCode"]))

    def remove(self) -> None:
        self.podman.run("rm", "--force", "--time", "0", self.name, check=False)


def start(podman: Podman, image: str, *options: str, command: tuple[str, ...] = ()) -> Container:
    """A container of `image` on the host's network (the brokers listen on 127.0.0.1)."""
    name = f"template-test-{uuid.uuid4().hex[:12]}"
    podman("run", "--detach", "--name", name, "--network", "host", *options, image, *command)
    return Container(podman, name)


def json_lines(log: str) -> list[dict[str, object]]:
    """Every line of the log as a JSON object; fails on the first line that is not one."""
    lines = []
    for line in log.splitlines():
        try:
            parsed = json.loads(line)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            pytest.fail(f"a log line is not a JSON object (the image sets LOG_FORMAT=json): {line!r}\n{log}")
        lines.append(parsed)
    return lines


def report(combination: str, **figures: object) -> None:
    """Add figures for one image to the table printed at the end of the run."""
    with (REPORTS / f"{combination}.jsonl").open("a") as out:
        out.write(json.dumps(figures) + "\n")


def table() -> list[str]:
    rows: dict[str, dict[str, object]] = {}
    for path in sorted(REPORTS.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            rows.setdefault(path.stem, {}).update(json.loads(line))
    if not rows:
        return []
    columns = sorted({column for row in rows.values() for column in row})
    lines = [f"{'broker-style':<20}" + "".join(f"{column:>22}" for column in columns)]
    for name, row in rows.items():
        lines.append(f"{name:<20}" + "".join(f"{row.get(column, '-')!s:>22}" for column in columns))
    return lines
