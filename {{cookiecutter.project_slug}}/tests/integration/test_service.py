"""The service end to end against the real broker: HTTP in, handler run, dead letters out."""

from __future__ import annotations

import itertools
import json
import logging
import time

import pytest

from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from ..helpers import Recorder
from .helpers import eventually, post, publish_only, running, via, wait_ready
from .probes import Probe
from .tally import tally
from .tcp_proxy import TcpProxy


def test_a_published_message_is_the_contract_json_and_carries_the_request_id(
    settings: Settings, registry: TaskRegistry, probe: Probe
) -> None:
    task_id = publish_only(settings, registry, "req-7")
    [message] = probe.take(settings.queue_name, 1)
    assert json.loads(message.body) == {"id": task_id, "type": "record", "payload": {}}
    assert "req-7" in message.headers.values()


def test_tasks_posted_over_http_are_processed_once_each(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, probe: Probe
) -> None:
    with running(settings, registry) as client:
        wait_ready(client)
        ids = [post(client, "record") for _ in range(20)]
        assert recorder.wait_finished(20), recorder.finished
        assert sorted(recorder.finished) == sorted(ids)
        assert eventually(lambda: probe.count(settings.queue_name) == 0)
        metrics = client.get("/metrics").text
        assert 'tasks_processed_total{outcome="succeeded"}' in metrics


def test_the_request_id_and_task_id_reach_the_handlers_log_line(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # where the processor logs a success
    with running(settings, registry) as client:
        wait_ready(client)
        task = {"type": "record", "payload": {}}
        response = client.post("/tasks", json=task, headers={"X-Request-ID": "follow-me-1"})
        assert response.status_code == 202
        task_id = response.json()["id"]
        assert recorder.wait_finished(1)

        def handled_line() -> bool:
            wanted = (task_id, "follow-me-1", "record", 1)
            return any(
                tuple(getattr(r, field, None) for field in ("task_id", "request_id", "task_type", "attempt")) == wanted
                and "succeeded" in r.getMessage()
                for r in list(caplog.records)
            )

        assert eventually(handled_line)


def test_a_contract_message_from_another_program_is_processed(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, probe: Probe
) -> None:
    with running(settings, registry) as client:
        wait_ready(client)
        body = {"id": "from-elsewhere", "type": "record", "payload": {}, "added_later": True}
        probe.publish(settings.queue_name, json.dumps(body).encode())
        assert recorder.wait_finished(1)
        assert recorder.finished == ["from-elsewhere"]


def test_a_failing_task_is_retried_then_dead_lettered_without_blocking_others(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, probe: Probe
) -> None:
    with running(settings, registry) as client:
        wait_ready(client)
        bad = post(client, "explode")
        good = post(client, "record")
        assert recorder.wait_finished(1)
        [dead] = probe.take(settings.dead_letter_queue, 1)
        assert json.loads(dead.body)["id"] == bad
        assert recorder.started.count(bad) == settings.max_retries + 1
        assert recorder.finished == [good]
        assert "this handler always fails" in str(dead.headers)
    # Settled means handled, or dead-lettered once its retries ran out.
    result = tally("5 handler always fails", [bad, good], [*recorder.finished, json.loads(dead.body)["id"]])
    assert (result.lost, result.duplicates) == (0, 0)


def within_tolerance(gap: float, nominal: float) -> bool:
    """The contract's tolerance for a retry's wait: from 0.8 x to 1.2 x + 1 s of the nominal one."""
    return 0.8 * nominal <= gap <= 1.2 * nominal + 1.0


def gaps(starts: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(starts)]


def test_the_attempts_of_a_failing_task_are_spaced_by_the_backoff(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, probe: Probe
) -> None:
    settings = settings.model_copy(update={"max_retries": 3, "retry_delay_seconds": 0.5})
    with running(settings, registry) as client:
        wait_ready(client)
        bad = post(client, "explode")
        [dead] = probe.take(settings.dead_letter_queue, 1, timeout=30)
        assert json.loads(dead.body)["id"] == bad
    spacing = gaps(recorder.starts_of(bad))
    assert len(spacing) == 3, spacing
    nominal = [0.5, 1.0, 2.0]  # 0.5 s, doubled for each next retry
    assert all(within_tolerance(gap, d) for gap, d in zip(spacing, nominal, strict=True)), spacing


def test_a_retry_the_handler_asks_for_waits_as_long_as_asked(
    settings: Settings, registry: TaskRegistry, recorder: Recorder
) -> None:
    with running(settings, registry) as client:
        wait_ready(client)
        task = post(client, "later", seconds=2)
        assert recorder.wait_finished(1, timeout=30)
    [first, second] = recorder.starts_of(task)
    assert within_tolerance(second - first, 2.0), second - first


def test_a_retry_waiting_holds_back_no_message_behind_it(
    settings: Settings, registry: TaskRegistry, recorder: Recorder
) -> None:
    settings = settings.model_copy(update={"retry_delay_seconds": 3.0})
    with running(settings, registry) as client:
        wait_ready(client)
        bad = post(client, "explode")
        assert recorder.wait_started(1)
        sent = time.monotonic()
        good = post(client, "record")
        assert recorder.wait_finished(1)
        took = time.monotonic() - sent
        assert recorder.finished == [good]
        assert recorder.started.count(bad) == 1, "the failing task came back before its wait was over"
        assert took < 2.0, f"a healthy task behind a waiting retry took {took:.1f} s"


def test_a_delayed_task_starts_no_sooner_than_asked_and_holds_back_no_other(
    settings: Settings, registry: TaskRegistry, recorder: Recorder
) -> None:
    with running(settings, registry) as client:
        wait_ready(client)
        # Ready is not yet consuming: a consumer may still be joining its group. Once a task
        # has run, the consumer has its partitions, and a task held back could only be held by the delay.
        first = post(client, "record")
        assert recorder.wait_finished(1)
        sent = time.monotonic()
        response = client.post("/tasks", json={"type": "record", "payload": {}, "delay_seconds": 2})
        assert response.status_code == 202, response.text
        delayed = response.json()["id"]
        at_once = post(client, "record")
        assert recorder.wait_finished(3, timeout=30)
    assert recorder.finished == [first, at_once, delayed]
    [started] = recorder.starts_of(delayed)
    assert 2.0 <= started - sent <= 1.2 * 2.0 + 1.0, started - sent
    [started_at_once] = recorder.starts_of(at_once)
    assert started_at_once - sent < 1.0, f"a task behind a delayed one started {started_at_once - sent:.1f} s late"


def test_a_task_its_handler_rejects_is_dead_lettered_at_once_with_the_reason(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, probe: Probe
) -> None:
    with running(settings, registry) as client:
        wait_ready(client)
        rejected = post(client, "refuse")
        [dead] = probe.take(settings.dead_letter_queue, 1)
        assert json.loads(dead.body)["id"] == rejected
        assert recorder.started == [rejected]  # never retried
        assert "rejected: the image is gone for good" in str(dead.headers)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\x00not json at all", id="not-json"),
        pytest.param(b'{"id": "u-1", "type": "no_such_type", "payload": {}}', id="unknown-type"),
        pytest.param(b'{"id": "p-1", "type": "process_image", "payload": {"image_url": 5}}', id="bad-payload"),
    ],
)
def test_a_malformed_message_is_dead_lettered_at_once_and_the_consumer_carries_on(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, probe: Probe, raw: bytes
) -> None:
    with running(settings, registry) as client:
        wait_ready(client)
        probe.publish(settings.queue_name, raw)
        [dead] = probe.take(settings.dead_letter_queue, 1)
        assert dead.body == raw
        assert recorder.started == []
        after = post(client, "record")
        assert recorder.wait_finished(1)
        assert recorder.finished == [after]
    result = tally("6 malformed message", ["malformed", after], ["malformed", *recorder.finished])
    assert (result.lost, result.duplicates) == (0, 0)


def test_stopping_finishes_messages_in_hand_and_loses_none(
    settings: Settings, registry: TaskRegistry, recorder: Recorder
) -> None:
    with running(settings, registry) as client:
        wait_ready(client)
        sent = [post(client, "record", seconds=0.5) for _ in range(12)]
        assert recorder.wait_started(1)
    # The lifespan has stopped the consumer: what started has finished, the rest is back in the queue.
    assert set(recorder.started) <= set(recorder.finished)
    finished_first = len(recorder.finished)
    assert finished_first < len(sent)
    with running(settings, registry) as client:  # the next consumer gets the rest
        assert eventually(lambda: set(recorder.finished) >= set(sent), timeout=30)
    result = tally("7 stopped with messages in hand", sent, recorder.finished)
    assert result.lost == 0
    assert result.duplicates <= settings.prefetch_count


def test_broker_unreachable_gives_503_quickly_and_the_api_recovers_by_itself(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, proxy: TcpProxy
) -> None:
    settings = settings.model_copy(update={"broker_url": via(proxy, settings.broker_url)})
    with running(settings, registry) as client:
        assert client.get("/health/live").status_code == 200
        assert client.get("/health/ready").status_code == 503
        started = time.monotonic()
        response = client.post("/tasks", json={"type": "record", "payload": {}})
        assert response.status_code == 503
        assert time.monotonic() - started < 5
        assert response.json()["detail"]

        proxy.up()
        wait_ready(client, timeout=30)
        task_id = post(client, "record")
        assert recorder.wait_finished(1)
        assert recorder.finished == [task_id]
    result = tally("2 broker unreachable, then back", [task_id], recorder.finished)
    assert (result.lost, result.duplicates) == (0, 0)


def test_the_broker_going_away_gives_503_and_the_service_recovers_by_itself(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, proxy: TcpProxy
) -> None:
    settings = settings.model_copy(update={"broker_url": via(proxy, settings.broker_url)})
    proxy.up()
    with running(settings, registry) as client:
        wait_ready(client, timeout=30)
        task_id = post(client, "record")
        assert recorder.wait_finished(1)
        assert recorder.finished == [task_id]

        proxy.down()  # the broker goes away while the service runs
        assert eventually(lambda: client.get("/health/ready").status_code == 503, timeout=15)
        started = time.monotonic()
        assert client.post("/tasks", json={"type": "record", "payload": {}}).status_code == 503
        assert time.monotonic() - started < 5

        proxy.up()
        wait_ready(client, timeout=30)
        again = post(client, "record")
        # By id: the first task may come again (its commit or ack may have been cut), and is no proof.
        assert eventually(lambda: again in recorder.finished), recorder.finished
