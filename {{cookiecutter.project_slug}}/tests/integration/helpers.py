"""What the integration tests share: the service running in process, a worker as a process,
and polling with a deadline."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from fastapi.testclient import TestClient

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from .probes import WORKER_ENV, Probe
from .tcp_proxy import TcpProxy

HANDLED = re.compile(r"\[task=(\S+) [^\]]*\] processing image")  # the example handler's own line


@contextmanager
def running(settings: Settings, registry: TaskRegistry) -> Iterator[TestClient]:
    """The app with its real publisher and consumer, started and stopped by its lifespan."""
    with TestClient(create_app(settings, registry=registry), raise_server_exceptions=False) as client:
        yield client


def eventually(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll `condition` until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def wait_ready(client: TestClient, timeout: float = 20.0) -> None:
    assert eventually(lambda: client.get("/health/ready").status_code == 200, timeout), client.get(
        "/health/ready"
    ).json()


class TaskStream:
    """POSTs `record` tasks from a thread, one after another, until the block ends: the ids answered
    202, the status of each refusal (503 or 504), the slowest answer, and any other answer."""

    def __init__(self, client: TestClient) -> None:
        self._client = client
        self._stop = threading.Event()
        self.accepted: list[str] = []
        self.refused: list[int] = []
        self.slowest = 0.0
        self.wrong: list[str] = []
        self._thread = threading.Thread(target=self._run, name="test-stream")

    def __enter__(self) -> TaskStream:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            response = self._client.post("/tasks", json={"type": "record", "payload": {"seconds": 0.01}})
            self.slowest = max(self.slowest, time.monotonic() - started)
            if response.status_code == 202:
                self.accepted.append(response.json()["id"])
            elif response.status_code in (503, 504):
                self.refused.append(response.status_code)
                self._stop.wait(0.05)  # the publisher is reconnecting, with backoff
            else:
                self.wrong.append(f"{response.status_code} {response.text}")
            self._stop.wait(0.01)  # a steady stream, not a flood


def post(client: TestClient, type_: str, **payload: object) -> str:
    response = client.post("/tasks", json={"type": type_, "payload": payload})
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


def publish_only(settings: Settings, registry: TaskRegistry, request_id: str) -> str:
    """POST one `record` task to a service that does not consume; return its id."""
    settings = settings.model_copy(update={"consumer_enabled": False})
    with running(settings, registry) as client:
        wait_ready(client)
        response = client.post("/tasks", json={"type": "record", "payload": {}}, headers={"X-Request-ID": request_id})
        assert response.status_code == 202, response.text
        task_id: str = response.json()["id"]
    return task_id


def queue_exists(probe: Probe, queue: str) -> bool:
    try:
        probe.count(queue)
    except Exception:
        return False
    return True


def start_worker(settings: Settings, log: Path, metrics_port: int = 0) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BROKER_URL": settings.broker_url,
        "QUEUE_NAME": settings.queue_name,
        "LOG_LEVEL": "INFO",
        "METRICS_PORT": str(metrics_port),
        "PREFETCH_COUNT": str(settings.prefetch_count),  # bounds the duplicates after a kill
{%- if cookiecutter.task_store != "none" %}
        "TASK_STORE_URL": settings.task_store_url,
        "TASK_RECORD_TTL_SECONDS": str(settings.task_record_ttl_seconds),
        "MAX_DELAY_SECONDS": str(settings.max_delay_seconds),
{%- endif %}
        **WORKER_ENV,
    }
    with log.open("ab") as output:
        return subprocess.Popen([sys.executable, "-m", "{{ cookiecutter.project_slug }}.worker"], env=env, stderr=output)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def image_task(task_id: str) -> bytes:
    return json.dumps(
        {"id": task_id, "type": "process_image", "payload": {"image_url": "https://example.com/a.png"}}
    ).encode()


def via(proxy: TcpProxy, broker_url: str) -> str:
    """The broker URL with its address replaced by the proxy's."""
    parts = urlsplit(broker_url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))
