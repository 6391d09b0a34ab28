"""`python -m {{ cookiecutter.project_slug }}.worker` as operators run it: it consumes, stops cleanly
on SIGTERM, and a worker stopped mid-stream, gracefully or with SIGKILL, loses nothing once
another one runs."""

from __future__ import annotations

import re
import signal
import urllib.request
from pathlib import Path

import pytest

from {{ cookiecutter.project_slug }}.settings import Settings

from .helpers import HANDLED, eventually, free_port, http_status, image_task, queue_exists, start_worker
from .probes import Probe
from .tally import tally

SCENARIOS = {signal.SIGKILL: "4 worker SIGKILLed mid-stream", signal.SIGTERM: "7 worker SIGTERMed mid-stream"}


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
