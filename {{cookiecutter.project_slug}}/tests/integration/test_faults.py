"""Faults that production brings, against the real broker: connections cut, connections gone silent,
slow handlers, a storm of publishers, two workers on one queue. Each scenario counts its messages by
id (tally.py); nothing the broker acknowledged may be lost. The other scenarios live beside what
they break: test_service.py (broker unreachable, failing and malformed messages, stopping) and
test_worker.py (SIGKILL, SIGTERM)."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from ..helpers import Recorder
from .helpers import HANDLED, eventually, image_task, running, start_worker, via, wait_ready
from .probes import SILENCE_SETTINGS, Probe, notice_within, ready_to_share, shares_settled, slow_handler_seconds
from .tally import tally
from .tcp_proxy import TcpProxy

CUTS = 2
# How long the storm of publishers lasts; a minute or more makes a good soak test.
STORM_SECONDS = float(os.environ.get("FAULT_STORM_SECONDS", "5"))
STORM_THREADS = 16


def publish_until(client: TestClient, accepted: list[str], count: int, timeout: float = 60.0) -> int:
    """POST `record` tasks until `count` were accepted; return how many were refused. While the broker
    is away each answer is a 503 (or a 504, for one sent as the connection went), and every answer
    comes within 5 s: never a hang."""
    refused = 0
    deadline = time.monotonic() + timeout
    while len(accepted) < count:
        assert time.monotonic() < deadline, f"only {len(accepted)} of {count} tasks accepted in {timeout} s"
        started = time.monotonic()
        response = client.post("/tasks", json={"type": "record", "payload": {"seconds": 0.01}})
        assert time.monotonic() - started < 5, f"POST /tasks took {time.monotonic() - started:.1f} s"
        assert response.status_code in (202, 503, 504), response.text
        if response.status_code == 202:
            accepted.append(response.json()["id"])
        else:
            refused += 1
            time.sleep(0.05)  # the publisher is reconnecting, with backoff
    return refused


def service_threads() -> set[threading.Thread]:
    """The threads the service starts: its broker clients' and its handler pool's."""
    return {t for t in threading.enumerate() if t.name.startswith(("broker-", "handler"))}


def test_cutting_every_connection_mid_stream_loses_nothing(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, proxy: TcpProxy
) -> None:
    settings = settings.model_copy(update={"broker_url": via(proxy, settings.broker_url)})
    proxy.up()
    accepted: list[str] = []
    refused = 0
    with running(settings, registry) as client:
        wait_ready(client, timeout=30)
        for cut in range(CUTS):
            refused += publish_until(client, accepted, 40 * (cut + 1))
            assert recorder.wait_started(1)
            proxy.cut()  # publisher and consumer both lose their connections, messages in hand
        refused += publish_until(client, accepted, 40 * (CUTS + 1))
        assert eventually(lambda: set(recorder.finished) >= set(accepted), timeout=60), set(accepted) - set(
            recorder.finished
        )
    result = tally("1 every connection cut mid-stream", accepted, recorder.finished, refused)
    assert result.lost == 0
    assert result.duplicates <= settings.prefetch_count * CUTS


def test_a_silent_connection_is_noticed_and_nothing_waits_forever(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, proxy: TcpProxy
) -> None:
    settings = settings.model_copy(update={"broker_url": via(proxy, settings.broker_url), **SILENCE_SETTINGS})
    proxy.up()
    threads_before = service_threads()
    with running(settings, registry) as client:
        wait_ready(client, timeout=30)
        accepted: list[str] = []
        refused = publish_until(client, accepted, 1)
        assert recorder.wait_finished(1)

        proxy.freeze()  # every connection the service holds goes silent; new connections pass
        frozen = time.monotonic()
        # Sent into the silence: the broker may have it, so the answer is "outcome unknown", never a 503.
        unknown = client.post("/tasks", json={"type": "record", "payload": {}})
        assert unknown.status_code == 504, unknown.text
        assert "outcome unknown" in unknown.json()["detail"]
        refused += 1
        left = notice_within(settings) - (time.monotonic() - frozen)
        refused += publish_until(client, accepted, 2, timeout=left)  # once the publisher noticed
        # The consumer noticed too, and reconnected: the new task is processed.
        left = notice_within(settings) - (time.monotonic() - frozen)
        assert eventually(lambda: set(recorder.finished) >= set(accepted), timeout=left)  # by id: not a redelivery
        noticed = time.monotonic() - frozen
        stopping = time.monotonic()
    # Shutting down with silent connections still open: no thread or task waits on them forever.
    assert time.monotonic() - stopping < settings.shutdown_timeout_seconds + 5
    assert eventually(lambda: service_threads() <= threads_before, timeout=10), service_threads() - threads_before
    result = tally("3 connections gone silent", accepted, recorder.finished, refused)
    assert result.lost == 0
    assert noticed < notice_within(settings)


def test_a_handler_slower_than_the_heartbeat_keeps_its_connection(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    settings = settings.model_copy(update=SILENCE_SETTINGS)
    slow = slow_handler_seconds(settings)
    with running(settings, registry) as client:
        wait_ready(client)
        response = client.post("/tasks", json={"type": "record", "payload": {"seconds": slow}})
        assert response.status_code == 202
        task_id = response.json()["id"]
        assert recorder.wait_finished(1, timeout=slow + 15)
        assert client.get("/health/ready").status_code == 200
    result = tally("8 handler slower than the heartbeat", [task_id], recorder.finished)
    assert result.lost == 0
    assert result.duplicates == 0
    assert recorder.started == [task_id], "the message was delivered again"
    warnings = [r for r in caplog.records if r.name.startswith("{{ cookiecutter.project_slug }}.")]
    assert warnings == [], caplog.text


def test_many_threads_publishing_at_once_raise_no_error(
    settings: Settings, registry: TaskRegistry, recorder: Recorder
) -> None:
    accepted: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()
    with running(settings, registry) as client:
        wait_ready(client)
        deadline = time.monotonic() + STORM_SECONDS

        def publish() -> None:
            while time.monotonic() < deadline:
                response = client.post("/tasks", json={"type": "record", "payload": {}})
                with lock:
                    if response.status_code == 202:
                        accepted.append(response.json()["id"])
                    else:
                        failures.append(f"{response.status_code} {response.text}")

        threads = [threading.Thread(target=publish) for _ in range(STORM_THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert eventually(lambda: set(recorder.finished) >= set(accepted), timeout=60)
    result = tally("8 many threads publishing at once", accepted, recorder.finished)
    assert failures == []
    assert result.lost == 0
    assert result.duplicates == 0


def test_two_workers_share_a_queue_and_process_each_message_once(
    settings: Settings, probe: Probe, tmp_path: Path
) -> None:
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    workers = [start_worker(settings, log) for log in logs]
    try:
        for log in logs:
            assert eventually(functools.partial(ready_to_share, log), timeout=60), log.read_text()
        # Where the broker hands out shares of the work (partitions), wait until each worker has one.
        assert eventually(lambda: shares_settled(logs), timeout=60), [log.read_text() for log in logs]
        sent = [f"share-{n}" for n in range(300)]
        probe.publish(settings.queue_name, *(image_task(task_id) for task_id in sent))

        def processed() -> list[list[str]]:
            return [HANDLED.findall(log.read_text()) for log in logs]

        assert eventually(lambda: set(itertools.chain(*processed())) >= set(sent), timeout=60)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)
    first, second = processed()
    result = tally("9 two workers share a queue", sent, first + second)
    assert result.lost == 0
    assert result.duplicates == 0
    assert first, f"the second worker took everything: {len(second)}"
    assert second, f"the first worker took everything: {len(first)}"
    assert all(worker.returncode == 0 for worker in workers), [log.read_text() for log in logs]
