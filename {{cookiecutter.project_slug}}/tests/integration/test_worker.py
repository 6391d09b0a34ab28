"""`python -m {{ cookiecutter.project_slug }}.worker` as operators run it: it consumes, stops cleanly
on SIGTERM, and a worker stopped mid-stream, gracefully or with SIGKILL, or killed while tasks
wait on the broker, loses nothing once another one runs."""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from .helpers import HANDLED, eventually, free_port, http_status, image_task, queue_exists, running, start_worker
from .probes import Probe
from .tally import tally

SCENARIOS = {signal.SIGKILL: "4 worker SIGKILLed mid-stream", signal.SIGTERM: "7 worker SIGTERMed mid-stream"}
# The example handler's line, with its time: "2026-01-01 12:00:00,123 INFO ... [task=<id> ...] processing image".
STARTED = re.compile(r"^(\S+ \S+) .*\[task=(\S+) [^\]]*\] processing image", re.MULTILINE)


def test_the_worker_processes_a_task_and_exits_cleanly_on_sigterm(
    settings: Settings, probe: Probe, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    port = free_port()
    worker = start_worker(settings, log, metrics_port=port)
    try:
        assert eventually(lambda: queue_exists(probe, settings.queue_name), timeout=30), "the worker never declared"
        probe.publish(settings.queue_name, image_task("worker-task-1"))
        assert eventually(lambda: "worker-task-1" in HANDLED.findall(log.read_text()))
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'tasks_processed_total{outcome="succeeded"} 1.0' in metrics
        assert "task_handler_duration_seconds_count" in metrics
        assert http_status(port, "/health/live") == 200
        assert eventually(lambda: http_status(port, "/health/ready") == 200)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    assert worker.returncode == 0, log.read_text()
    assert "worker stopped" in log.read_text()


def test_two_workers_on_one_host_with_the_same_metrics_port_both_run(
    settings: Settings, probe: Probe, tmp_path: Path
) -> None:
    """As with the default METRICS_PORT on one machine: the second warns, serves on a free port, and consumes."""
    port = free_port()
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = start_worker(settings, logs[0], metrics_port=port)
    workers = [first]
    try:
        assert eventually(lambda: http_status(port, "/health/ready") == 200, timeout=30), logs[0].read_text()
        workers.append(start_worker(settings, logs[1], metrics_port=port))
        moved = re.compile(rf"METRICS_PORT {port} is in use .* on port (\d+) instead")
        assert eventually(lambda: moved.search(logs[1].read_text()) is not None, timeout=30), logs[1].read_text()
        match = moved.search(logs[1].read_text())
        assert match is not None
        assert eventually(lambda: http_status(int(match.group(1)), "/health/ready") == 200, timeout=30)
        probe.publish(settings.queue_name, *(image_task(f"pair-{n}") for n in range(20)))
        assert eventually(lambda: len(HANDLED.findall(logs[0].read_text() + logs[1].read_text())) >= 20)
        assert all(worker.poll() is None for worker in workers), "a worker exited"
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)
    assert [worker.returncode for worker in workers] == [0, 0], logs[1].read_text()
    assert "Address already in use" not in logs[1].read_text()


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_worker_stopped_mid_stream_loses_nothing(
    settings: Settings, probe: Probe, tmp_path: Path, stop: signal.Signals
) -> None:
    sent = [f"stop-{n}" for n in range(2000)]
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    declaring = start_worker(settings, tmp_path / "declare.log")
    assert eventually(lambda: queue_exists(probe, settings.queue_name), timeout=30), "the worker never declared"
    declaring.send_signal(signal.SIGTERM)
    assert declaring.wait(timeout=30) == 0
    probe.publish(settings.queue_name, *(image_task(task_id) for task_id in sent))

    first = start_worker(settings, first_log)
    assert eventually(lambda: len(HANDLED.findall(first_log.read_text())) >= 20)
    first.send_signal(stop)  # SIGKILL: no drain, no goodbye; SIGTERM: finish what is in hand
    first.wait(timeout=settings.shutdown_timeout_seconds + 30)
    assert len(HANDLED.findall(first_log.read_text())) < len(sent), "the first worker finished before the signal"

    def processed() -> set[str]:
        return set(HANDLED.findall(first_log.read_text() + second_log.read_text()))

    second = start_worker(settings, second_log)
    try:
        assert eventually(lambda: processed() >= set(sent), timeout=60), sorted(set(sent) - processed())
        # What the first handled but never acknowledged is the second's to settle (where the broker
        # waits a while before another consumer may claim it, after that), while it runs.
        assert eventually(lambda: probe.count(settings.queue_name) == 0, timeout=30)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    assert second.returncode == 0, second_log.read_text()
    assert probe.count(settings.queue_name) == 0
    runs = HANDLED.findall(first_log.read_text() + second_log.read_text())
    result = tally(SCENARIOS[stop], sent, runs)
    assert result.lost == 0
    if stop is signal.SIGKILL:
        assert result.duplicates <= settings.prefetch_count
    else:  # what was in hand finished and was acknowledged before the worker left
        assert first.returncode == 0, first_log.read_text()
        assert result.duplicates == 0


def starts(log: str) -> dict[str, float]:
    """When each task's handler first started, by the worker's log (Unix time)."""
    found: dict[str, float] = {}
    for at, task_id in STARTED.findall(log):
        found.setdefault(task_id, datetime.strptime(at, "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return found


def test_a_worker_killed_while_tasks_wait_loses_none_and_they_start_on_time(
    settings: Settings, registry: TaskRegistry, tmp_path: Path
) -> None:
    delay = 8.0
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first_port, second_port = free_port(), free_port()
    first = start_worker(settings, first_log, metrics_port=first_port)
    assert eventually(lambda: http_status(first_port, "/health/ready") == 200, timeout=30), first_log.read_text()
    task = {"type": "process_image", "payload": {"image_url": "https://example.com/a.png"}, "delay_seconds": delay}
    with running(settings.model_copy(update={"consumer_enabled": False}), registry) as client:
        assert eventually(lambda: client.get("/health/ready").status_code == 200)
        posted = [(time.time(), client.post("/tasks", json=task)) for _ in range(20)]
    assert [response.status_code for _, response in posted] == [202] * 20
    sent = [response.json()["id"] for _, response in posted]
    first.kill()  # while every task waits: no drain, no goodbye
    first.wait(timeout=30)
    assert time.time() < posted[0][0] + delay, "the tasks were due before the worker was killed"
    second = start_worker(settings, second_log, metrics_port=second_port)
    try:
        assert eventually(lambda: http_status(second_port, "/health/ready") == 200, timeout=30)
        ready = time.time()
        assert eventually(lambda: set(starts(second_log.read_text())) >= set(sent), timeout=60)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    runs = HANDLED.findall(first_log.read_text() + second_log.read_text())
    result = tally("10 worker SIGKILLed while tasks wait", sent, runs)
    assert (result.lost, result.duplicates) == (0, 0)
    started = starts(second_log.read_text())
    for (at, _), task_id in zip(posted, sent, strict=True):
        assert started[task_id] >= at + delay - 0.02, "a delayed task started early"
        # On time, unless the worker was not back by then: then as soon as it is.
        assert started[task_id] <= max(at + 1.2 * delay + 1, ready + 3), started[task_id] - at
