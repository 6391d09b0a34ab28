"""What Redis itself must hold: the stream's entry format, and pending messages that survive
the consumer that held them."""

from __future__ import annotations

import json
from typing import Any, cast

import redis
from fastapi.testclient import TestClient

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.brokers.redis import streams
from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from ..helpers import Recorder
from .helpers import eventually, publish_only, wait_ready
from .probes import Probe

CONTRACT_TASK = b'{"id": "%s", "type": "record", "payload": {}}'


def test_published_entries_carry_the_json_in_the_body_field(
    settings: Settings, registry: TaskRegistry, probe: Probe
) -> None:
    task_id = publish_only(settings, registry, "req-7")
    [entry] = probe.take(settings.queue_name, 1)
    assert json.loads(entry.body)["id"] == task_id  # `body` is the field the probe reads
    assert entry.headers["x-request-id"] == "req-7"  # each header in a field of its own


def test_messages_left_pending_by_a_dead_consumer_are_reclaimed(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, probe: Probe
) -> None:
    probe.create_group(settings.queue_name)
    for n in range(3):
        probe.publish(settings.queue_name, CONTRACT_TASK % f"orphan-{n}".encode())
    assert len(probe.read_as(settings.queue_name, "consumer-that-died", 3)) == 3
    with TestClient(create_app(settings, registry=registry)):
        assert recorder.wait_finished(3, timeout=30)
        assert sorted(recorder.finished) == ["orphan-0", "orphan-1", "orphan-2"]
        assert eventually(lambda: probe.count(settings.queue_name) == 0)


def test_a_restarted_consumer_first_finishes_its_own_pending_list(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, probe: Probe
) -> None:
    probe.create_group(settings.queue_name)
    for n in range(2):
        probe.publish(settings.queue_name, CONTRACT_TASK % f"mine-{n}".encode())
    assert len(probe.read_as(settings.queue_name, "worker-1", 2)) == 2
    # Same name as before the "restart", and no reclaiming for an hour: only its own list can explain it.
    settings = settings.model_copy(update={"consumer_name": "worker-1", "claim_idle_seconds": 3600})
    with TestClient(create_app(settings, registry=registry)):
        assert recorder.wait_finished(2)
        assert sorted(recorder.finished) == ["mine-0", "mine-1"]
        assert eventually(lambda: probe.count(settings.queue_name) == 0)


def test_a_consumer_that_stops_cleanly_leaves_the_group(
    settings: Settings, registry: TaskRegistry, probe: Probe
) -> None:
    settings = settings.model_copy(update={"consumer_name": "leaving-cleanly"})
    with TestClient(create_app(settings, registry=registry)) as client:
        wait_ready(client)
        assert "leaving-cleanly" in probe.consumers(settings.queue_name)
    assert "leaving-cleanly" not in probe.consumers(settings.queue_name)


def test_consumers_idle_with_nothing_pending_are_removed_and_busy_ones_kept(
    settings: Settings, registry: TaskRegistry, probe: Probe
) -> None:
    probe.create_group(settings.queue_name)
    probe.create_consumer(settings.queue_name, "gone-for-good")
    probe.publish(settings.queue_name, CONTRACT_TASK % b"held")
    assert probe.read_as(settings.queue_name, "gone-but-holding", 1)  # pending: it must stay
    # Nothing is reclaimed meanwhile (an hour), so "gone-but-holding" keeps its message.
    settings = settings.model_copy(update={"consumer_forget_seconds": 0.5, "claim_idle_seconds": 3600})
    with TestClient(create_app(settings, registry=registry)) as client:
        wait_ready(client)
        assert eventually(lambda: "gone-for-good" not in probe.consumers(settings.queue_name), timeout=15)
        assert "gone-but-holding" in probe.consumers(settings.queue_name)


def test_a_dead_letter_keeps_the_original_body_with_the_reason(
    settings: Settings, registry: TaskRegistry, probe: Probe
) -> None:
    probe.create_group(settings.queue_name)
    probe.publish(settings.queue_name, b"\xffnot json")
    with TestClient(create_app(settings, registry=registry)) as client:
        wait_ready(client)
        [dead] = probe.take(settings.dead_letter_queue, 1)
    assert dead.body == b"\xffnot json"
    assert "not a task message" in dead.headers["reason"]
    assert dead.headers["deliveries"] == "1"


def carry(client: redis.Redis, steps: streams.Steps[Any], fail_after: int | None = None) -> Any:
    """A conversation of streams.py carried to Redis; `fail_after` round trips, as if the connection broke."""
    step, trips = streams.advance(steps, None), 0
    while isinstance(step, streams.Batch):
        if trips == fail_after:
            return None
        replies = streams.pipeline_of(client, step).execute(raise_on_error=step.raise_on_error)
        step, trips = streams.advance(steps, replies), trips + 1
    return step.value


def test_acknowledgements_ride_on_the_next_read_and_survive_a_failed_one(settings: Settings, probe: Probe) -> None:
    client = redis.Redis.from_url(settings.broker_url)
    consumer = streams.StreamConsumer(settings)
    carry(client, consumer.declare())
    consumer.next_claim = consumer.next_forget = float("inf")  # only the reads this test makes
    probe.publish(settings.queue_name, *(CONTRACT_TASK % f"t-{n}".encode() for n in range(3)))
    consumer.own_pending = None
    deliveries = carry(client, consumer.fetch(10, 0.1))
    assert len(deliveries) == 3
    consumer.ack_later(deliveries[:2])
    assert probe.count(settings.queue_name) == 3  # not sent on its own
    carry(client, consumer.fetch(10, 0.1), fail_after=0)  # the read never went out
    assert probe.count(settings.queue_name) == 3
    assert carry(client, consumer.fetch(10, 0.1)) == []
    assert probe.count(settings.queue_name) == 1  # the two went with the read that got through
    consumer.ack_later(deliveries[2:])
    carry(client, consumer.flush())
    assert probe.count(settings.queue_name) == 0
    assert consumer.unsent_acks == []
    client.close()


def test_delayed_tasks_wait_in_the_delayed_set_and_the_gauge_counts_them(
    settings: Settings, registry: TaskRegistry, recorder: Recorder
) -> None:
    client_of_redis = redis.Redis.from_url(settings.broker_url)
    with TestClient(create_app(settings, registry=registry)) as client:
        wait_ready(client)
        task = {"type": "record", "payload": {}, "delay_seconds": 60}
        ids = [client.post("/tasks", json=task).json()["id"] for _ in range(3)]
        raw = cast("list[bytes]", client_of_redis.zrange(f"{settings.queue_name}.delayed", 0, -1))
        members = [json.loads(member) for member in raw]
        assert sorted(member["from"] for member in members) == sorted(ids)
        for member in members:  # the entry's fields, flat as XADD takes them
            fields = dict(zip(member["fields"][::2], member["fields"][1::2], strict=True))
            assert json.loads(fields["body"])["id"] == member["from"]

        def counted() -> bool:
            return "tasks_waiting 3.0" in client.get("/metrics").text

        assert eventually(counted)
    assert recorder.started == []  # none started before its time
    client_of_redis.close()
