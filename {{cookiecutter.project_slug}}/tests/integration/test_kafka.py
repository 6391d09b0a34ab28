"""What Kafka itself must hold: the record format, retries in wait topics, and offsets that never
skip a failed record."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from ..helpers import Recorder
from .helpers import eventually, post, publish_only, wait_ready
from .probes import Probe, waiting_places


def test_published_records_carry_the_id_as_key_and_the_request_id_as_header(
    settings: Settings, registry: TaskRegistry, probe: Probe
) -> None:
    task_id = publish_only(settings, registry, "req-7")
    [record] = probe.take(settings.queue_name, 1)
    assert record.key == task_id.encode()
    assert record.headers["x-request-id"] == "req-7"


def test_a_failed_record_waits_in_a_wait_topic_while_its_partition_goes_on(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, probe: Probe
) -> None:
    # One partition: the failing record and the one after it share it.
    settings = settings.model_copy(update={"topic_partitions": 1})
    with TestClient(create_app(settings, registry=registry)) as client:
        wait_ready(client)
        bad = post(client, "explode")
        good = post(client, "record")
        assert recorder.wait_finished(1, timeout=30)
        [dead] = probe.take(settings.dead_letter_queue, 1)
        assert recorder.started == [bad, good] + [bad] * settings.max_retries
        assert json.loads(dead.body)["id"] == bad
        assert "this handler always fails" in dead.headers["x-dead-letter-reason"]
        assert dead.headers["x-attempts"] == str(settings.max_retries + 1)
        # Every offset is committed in the end, in the task topic and in the wait topics.
        topics, group = [settings.queue_name, *waiting_places(settings)], f"{settings.queue_name}.workers"
        assert eventually(lambda: sum(probe.count(topic, group) for topic in topics) == 0)


def test_a_dead_letter_keeps_the_original_value(settings: Settings, registry: TaskRegistry, probe: Probe) -> None:
    with TestClient(create_app(settings, registry=registry)) as client:
        wait_ready(client)
        probe.publish(settings.queue_name, b"\xffnot json")
        [dead] = probe.take(settings.dead_letter_queue, 1)
    assert dead.body == b"\xffnot json"
    assert "not a task message" in dead.headers["x-dead-letter-reason"]
    assert dead.headers["x-attempts"] == "1"

{%- if cookiecutter.consumer == "async" %}


def test_a_backlog_runs_on_every_partition_at_once(
    settings: Settings, registry: TaskRegistry, recorder: Recorder
) -> None:
    """A partition's records run one after another: a fetch filled with one partition's backlog
    (what the client hands out first) would leave the handlers of the others idle."""
    settings = settings.model_copy(update={"topic_partitions": 4, "prefetch_count": 8})
    publishing = settings.model_copy(update={"consumer_enabled": False})
    with TestClient(create_app(publishing, registry=registry)) as client:
        wait_ready(client)
        sent = [post(client, "record", seconds=0.2) for _ in range(32)]  # keyed by id: spread over the 4
    with TestClient(create_app(settings, registry=registry)):
        assert recorder.wait_finished(len(sent), timeout=60)
    assert sorted(recorder.finished) == sorted(sent)
    assert recorder.most_at_once >= 3
{%- endif %}
