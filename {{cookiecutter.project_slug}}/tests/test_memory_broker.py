"""BROKER_URL=memory://: the API and its own consumer on a queue in memory, for a first look on a
machine with no broker; and the worker alone refusing it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.brokers.base import Delivery
from {{ cookiecutter.project_slug }}.brokers.memory import MemoryQueue
from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from .helpers import Recorder

WORKER = "{{ cookiecutter.project_slug }}.worker"


def memory_settings(queue: str) -> Settings:
    return Settings(
        broker_url="memory://", queue_name=queue, max_retries=1, retry_delay_seconds=0.05, shutdown_timeout_seconds=5
    )


def test_tasks_are_processed_in_process_and_ready_says_memory(
    registry: TaskRegistry, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with TestClient(create_app(memory_settings("memory-first-look"), registry=registry)) as client:
        ids = [client.post("/tasks", json={"type": "record", "payload": {}}).json()["id"] for _ in range(5)]
        assert recorder.wait_finished(5)
        ready = client.get("/health/ready")
    assert sorted(recorder.finished) == sorted(ids)
    assert ready.status_code == 200
    assert ready.json()["broker"] == "memory"
    assert "nothing is durable" in caplog.text or "lost when it stops" in caplog.text


def test_a_failing_task_is_retried_then_kept_as_a_dead_letter(registry: TaskRegistry, recorder: Recorder) -> None:
    with TestClient(create_app(memory_settings("memory-failing"), registry=registry)) as client:
        assert client.post("/tasks", json={"type": "explode", "payload": {}}).status_code == 202
        assert client.post("/tasks", json={"type": "record", "payload": {}}).status_code == 202
        assert recorder.wait_finished(1)
        assert recorder.wait_started(3)  # the failing one twice (one retry), the healthy one once
    assert len(recorder.started) == 3


def test_a_delayed_task_waits_in_memory_before_it_starts(registry: TaskRegistry, recorder: Recorder) -> None:
    with TestClient(create_app(memory_settings("memory-delayed"), registry=registry)) as client:
        sent = time.monotonic()
        task = {"type": "record", "payload": {}, "delay_seconds": 0.5}
        assert client.post("/tasks", json=task).status_code == 202
        assert recorder.wait_finished(1)
    assert 0.5 <= recorder.started_at[0] - sent < 2


def test_the_worker_alone_refuses_it_in_one_line() -> None:
    env = {**os.environ, "BROKER_URL": "memory://", "METRICS_PORT": "0"}
    worker = subprocess.run([sys.executable, "-m", WORKER], env=env, capture_output=True, text=True, timeout=60)
    assert worker.returncode != 0
    assert worker.stderr.count("\n") == 1, worker.stderr
    assert "memory://" in worker.stderr
    assert "point BROKER_URL at the broker" in worker.stderr


def test_a_retry_in_memory_comes_back_once_its_wait_is_over() -> None:
    queue = MemoryQueue()
    queue.put(Delivery(b"later", {}, 1, None), delay_seconds=0.3)
    queue.put(Delivery(b"now", {}, 0, None))
    started = time.monotonic()
    assert [delivery.body for delivery in queue.take(10, 0)] == [b"now"]
    assert [delivery.body for delivery in queue.take(10, 5)] == [b"later"]
    assert 0.3 <= time.monotonic() - started < 2
