"""`python -m {{ cookiecutter.project_slug }}.worker` as operators run it: consumes, then stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from {{ cookiecutter.project_slug }}.settings import Settings

from .probe_{{ cookiecutter.broker }}_{{ cookiecutter.consumer }} import Probe
from .test_service import eventually


def queue_exists(probe: Probe, queue: str) -> bool:
    try:
        probe.count(queue)
    except Exception:
        return False
    return True


def test_the_worker_processes_a_task_and_exits_cleanly_on_sigterm(settings: Settings, probe: Probe) -> None:
    env = {
        **os.environ,
        "BROKER_URL": settings.broker_url,
        "QUEUE_NAME": settings.queue_name,
        "LOG_LEVEL": "INFO",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "{{ cookiecutter.project_slug }}.worker"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert eventually(lambda: queue_exists(probe, settings.queue_name), timeout=30), "the worker never declared"
        task = {"id": "worker-task-1", "type": "process_image", "payload": {"image_url": "https://example.com/a.png"}}
        probe.publish(settings.queue_name, json.dumps(task).encode())
        assert eventually(lambda: probe.count(settings.queue_name) == 0)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, log = worker.communicate(timeout=30)
    assert worker.returncode == 0, log
    assert "task=worker-task-1" in log
    assert "succeeded" in log
    assert "worker stopped" in log
