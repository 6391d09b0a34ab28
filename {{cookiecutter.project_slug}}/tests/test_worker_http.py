"""The worker's HTTP endpoints: metrics, liveness, readiness that follows the consumer, and a
taken port that costs a warning, not the worker."""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from {{ cookiecutter.project_slug }}.metrics import TASKS_PROCESSED
from {{ cookiecutter.project_slug }}.worker_http import WorkerHTTP, serve


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class Toggle:
    def __init__(self) -> None:
        self.running = False

    def __call__(self) -> bool:
        return self.running


@pytest.fixture
def toggle() -> Toggle:
    return Toggle()


@pytest.fixture
def server(toggle: Toggle) -> Iterator[WorkerHTTP]:
    running = serve(0, toggle, host="127.0.0.1")
    assert running is not None
    yield running
    running.close()


def test_metrics_are_prometheus_text(server: WorkerHTTP) -> None:
    TASKS_PROCESSED.labels(outcome="succeeded")
    status, body = get(server.port, "/metrics")
    assert status == 200
    assert "# TYPE tasks_processed_total counter" in body


def test_live_answers_while_the_process_runs(server: WorkerHTTP, toggle: Toggle) -> None:
    assert get(server.port, "/health/live") == (200, json.dumps({"status": "alive"}))


def test_ready_follows_the_consumer(server: WorkerHTTP, toggle: Toggle) -> None:
    status, body = get(server.port, "/health/ready")
    assert (status, json.loads(body)["consumer"]) == (503, "stopped")
    toggle.running = True
    status, body = get(server.port, "/health/ready")
    assert (status, json.loads(body)) == (200, {"status": "ready", "consumer": "running"})


def test_a_failing_readiness_check_is_not_ready(toggle: Toggle) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    running = serve(0, broken, host="127.0.0.1")
    assert running is not None
    try:
        assert get(running.port, "/health/ready")[0] == 503
    finally:
        running.close()


def test_an_unknown_path_is_404(server: WorkerHTTP) -> None:
    assert get(server.port, "/nothing")[0] == 404


def test_a_taken_port_warns_once_and_serves_on_a_free_one(toggle: Toggle, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        with caplog.at_level(logging.INFO, logger="{{ cookiecutter.project_slug }}.worker_http"):
            running = serve(port, toggle, host="127.0.0.1")
        assert running is not None
        try:
            assert running.port != port
            assert get(running.port, "/health/live")[0] == 200
        finally:
            running.close()
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert f"METRICS_PORT {port} is in use" in warning.getMessage()
    assert f"on port {running.port} instead" in warning.getMessage()
