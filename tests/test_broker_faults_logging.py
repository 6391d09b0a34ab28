"""A worker that cannot use its broker says so in a few lines a minute, and names the cause:
wrong credentials as credentials, a Kafka without idempotent producers with the setting that
fixes it. Tried as a newcomer would meet them: `python -m <slug>.worker` and its log."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from .conftest import bake_cached, project_env, require_broker
from .kafka_broker import free_port

WATCH_SECONDS = 12.0  # a newcomer's first look at a worker that does not come up
MOST_LINES = 6  # what that look may show: the start, the fault once, a line or two of the client's


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user = (parts.username or "") if parts.scheme != "redis" else ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def closed_port_url(url: str) -> str:
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    return urlunsplit(parts._replace(netloc=f"{credentials}@{address}" if credentials else address))


def redis_with_a_password(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A Redis of this test's own that wants a password (the shared one has none); its URL without it."""
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            "the-password",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while (
        subprocess.run(
            ["redis-cli", "-p", str(port), "-a", "the-password", "--no-auth-warning", "ping"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        != "PONG"
    ):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    return server, f"redis://127.0.0.1:{port}/0"


def watch_worker(project: Path, env: dict[str, str]) -> list[str]:
    """Run the worker for WATCH_SECONDS, stop it, and return its log lines."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "task_service.worker"],
        cwd=project,
        env={**env, "METRICS_PORT": "0", "LOG_LEVEL": "INFO"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(WATCH_SECONDS)  # the figure under test is what a fixed stretch of time shows
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    return [line for line in err.splitlines() if line.strip()]


CASES = [
    pytest.param("rabbitmq", "threaded", "password", id="rabbitmq-threaded-wrong-password"),
    pytest.param("rabbitmq", "async", "password", id="rabbitmq-async-wrong-password"),
    pytest.param("redis", "threaded", "password", id="redis-threaded-wrong-password"),
    pytest.param("redis", "async", "password", id="redis-async-wrong-password"),
    pytest.param("kafka", "async", "idempotence", id="kafka-async-no-idempotent-producers"),
    *(
        pytest.param(broker, style, "outage", id=f"{broker}-{style}-broker-down")
        for broker in ("rabbitmq", "redis", "kafka")
        for style in ("threaded", "async")
    ),
]


@pytest.mark.parametrize(("broker", "consumer", "fault"), CASES)
def test_a_worker_that_cannot_use_its_broker_says_why_in_a_few_lines(
    broker: str, consumer: str, fault: str, baked: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    answers = {"broker": broker, "consumer": consumer, "use_docker": "no", "kubernetes": "no", "ci": "none"}
    project = bake_cached(baked, tmp_path_factory, answers)
    url = require_broker(broker)
    server = None
    if fault == "password" and broker == "redis":
        server, url = redis_with_a_password(tmp_path_factory.mktemp("redis"))
    if fault == "password":
        url, expected = with_password(url, "not-the-password"), "check the user, password and permissions"
    elif fault == "idempotence":
        expected = "set PRODUCER_IDEMPOTENCE=false"  # tansu, the test broker, has no idempotent producers
    else:
        url, expected = closed_port_url(url), "lost the broker|cannot reach Kafka"
    env = project_env(project, BROKER_URL=url, QUEUE_NAME="faults-logging", PRODUCER_IDEMPOTENCE="true")
    try:
        lines = watch_worker(project, env)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    told = [line for line in lines if re.search(expected, line)]
    assert len(told) == 1 if fault != "outage" else 1 <= len(told) <= 2, "\n".join(lines)
    assert len(lines) <= MOST_LINES, f"{len(lines)} lines in {WATCH_SECONDS} s:\n" + "\n".join(lines)
    assert not [line for line in lines if "Traceback" in line], "\n".join(lines)
