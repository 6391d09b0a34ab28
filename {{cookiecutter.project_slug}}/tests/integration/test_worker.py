"""`python -m {{ cookiecutter.project_slug }}.worker` as operators run it: it consumes, stops cleanly
on SIGTERM, and a worker stopped mid-stream, gracefully or with SIGKILL, loses nothing once
another one runs."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import pytest

from {{ cookiecutter.project_slug }}.settings import Settings

from .helpers import HANDLED, eventually, free_port, image_task, queue_exists, start_worker
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
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    assert worker.returncode == 0, log.read_text()
    assert "worker stopped" in log.read_text()


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
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    assert second.returncode == 0, second_log.read_text()
    assert eventually(lambda: probe.count(settings.queue_name) == 0)
    runs = HANDLED.findall(first_log.read_text() + second_log.read_text())
    result = tally(SCENARIOS[stop], sent, runs)
    assert result.lost == 0
    if stop is signal.SIGKILL:
        assert result.duplicates <= settings.prefetch_count
    else:  # what was in hand finished and was acknowledged before the worker left
        assert first.returncode == 0, first_log.read_text()
        assert result.duplicates == 0
