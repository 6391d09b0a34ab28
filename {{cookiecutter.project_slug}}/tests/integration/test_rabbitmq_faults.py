"""Faults of RabbitMQ itself, on a node of the suite's own (rabbitmq_node.py): the node SIGKILLed
mid-stream and restarted, its memory alarm blocking publishers, the task queue deleted under a
running consumer. Each is tallied by id (tally.py) and ends with the queue empty and new tasks
accepted and processed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from ..helpers import Recorder
from .helpers import TaskStream, eventually, queue_exists, running, wait_ready
from .probes import Probe
from .rabbitmq_node import RabbitNode, nodes
from .tally import tally
from .test_faults import publish_until

ANSWER_WITHIN = 5.0  # the contract: 503 or 504 within 5 s while the broker is away, never a hang


@pytest.fixture(scope="module")
def node() -> Iterator[RabbitNode]:
    """One node for this module's scenarios; each leaves it running and serving."""
    with nodes(1) as [node]:
        yield node


@pytest.fixture
def on_node(settings: Settings, node: RabbitNode) -> Iterator[Settings]:
    """The test's settings, against the suite's own node; its queues are deleted there afterwards."""
    node_settings = settings.model_copy(update={"broker_url": node.url})
    yield node_settings
    if node.pid() is not None:
        Probe(node.url).delete(node_settings.queue_name, node_settings.dead_letter_queue)


def test_a_node_sigkilled_mid_stream_and_restarted_loses_nothing(
    on_node: Settings, registry: TaskRegistry, recorder: Recorder, node: RabbitNode
) -> None:
    with running(on_node, registry) as client:
        wait_ready(client, timeout=30)
        with TaskStream(client) as stream:
            # Some seconds of tasks first: on RabbitMQ 3.10 a one-node quorum queue SIGKILLed within about
            # a second of being declared came back empty, with no leader, and took no publish for minutes.
            assert eventually(lambda: len(stream.accepted) >= 200, timeout=30)
            assert recorder.wait_started(1)
            node.kill()
            killed = time.monotonic()
            refused_before = len(stream.refused)
            assert eventually(lambda: len(stream.refused) >= refused_before + 5, timeout=15), "no refusals while down"
            accepted_while_down = len(stream.accepted)
            node.start()
            assert eventually(lambda: len(stream.accepted) >= accepted_while_down + 50, timeout=60)
            outage = time.monotonic() - killed
        assert eventually(lambda: set(recorder.finished) >= set(stream.accepted), timeout=60), len(
            set(stream.accepted) - set(recorder.finished)
        )
        assert eventually(lambda: Probe(node.url).count(on_node.queue_name) == 0, timeout=30)
    result = tally("12 broker SIGKILLed and restarted", stream.accepted, recorder.finished, len(stream.refused))
    print(f"12: outage {outage:.1f} s from the kill to 50 more tasks accepted; refused {len(stream.refused)}")
    assert result.lost == 0
    assert stream.slowest < ANSWER_WITHIN, f"a POST took {stream.slowest:.1f} s"
    assert stream.wrong == []


def test_a_memory_alarm_refuses_tasks_at_once_and_runs_none_of_them(
    on_node: Settings, registry: TaskRegistry, recorder: Recorder, node: RabbitNode
) -> None:
    accepted: list[str] = []
    with running(on_node, registry) as client:
        wait_ready(client, timeout=30)
        refused = publish_until(client, accepted, 10)
        node.alarm(True)
        try:
            assert eventually(lambda: client.get("/health/ready").status_code == 503, timeout=10)
            statuses = []
            for _ in range(5):
                started = time.monotonic()
                response = client.post("/tasks", json={"type": "record", "payload": {}})
                assert time.monotonic() - started < ANSWER_WITHIN
                statuses.append(response.status_code)
            # Refused before anything was written: a plain 503, which a client may safely retry.
            assert statuses == [503] * 5, statuses
            refused += len(statuses)
        finally:
            node.alarm(False)
        wait_ready(client, timeout=30)
        refused += publish_until(client, accepted, 20)
        assert eventually(lambda: set(recorder.finished) >= set(accepted), timeout=60)
        assert eventually(lambda: Probe(node.url).count(on_node.queue_name) == 0, timeout=30)
        assert eventually(lambda: len(recorder.finished) >= len(accepted), timeout=5)
    result = tally("13 memory alarm", accepted, recorder.finished, refused)
    assert result.lost == 0
    assert result.recovered == 0, "a task answered 503 ran all the same: a client's retry would run it twice"
    assert result.unexpected == 0


def test_the_queue_deleted_under_a_running_consumer_is_declared_again(
    on_node: Settings, registry: TaskRegistry, recorder: Recorder, node: RabbitNode
) -> None:
    accepted: list[str] = []
    probe = Probe(node.url)
    with running(on_node, registry) as client:
        wait_ready(client, timeout=30)
        refused = publish_until(client, accepted, 10)
        assert eventually(lambda: set(recorder.finished) >= set(accepted), timeout=30)
        probe.delete(on_node.queue_name)
        declared_again = eventually(lambda: queue_exists(probe, on_node.queue_name), timeout=30)
        assert declared_again, "the consumer did not declare its queue again"
        refused += publish_until(client, accepted, 30, timeout=30)
        assert eventually(lambda: set(recorder.finished) >= set(accepted), timeout=30), len(
            set(accepted) - set(recorder.finished)
        )
        assert eventually(lambda: probe.count(on_node.queue_name) == 0, timeout=30)
        wait_ready(client)
    result = tally("14 queue deleted under the consumer", accepted, recorder.finished, refused)
    assert result.lost == 0


def test_the_first_node_of_broker_url_lost_the_next_one_takes_over(
    settings: Settings, registry: TaskRegistry, recorder: Recorder
) -> None:
    """Two nodes, not clustered: only the moving over is tried here (test_rabbitmq_cluster.py shows a
    cluster's queue surviving); what waited on the lost node waits there until it is back."""
    with nodes(2) as [first, second]:
        both = settings.model_copy(update={"broker_url": f"amqp://guest:guest@{first.address},{second.address}/%2F"})
        with running(both, registry) as client:
            wait_ready(client, timeout=30)
            first.kill()
            killed = time.monotonic()
            accepted: list[str] = []
            refused = publish_until(client, accepted, 1, timeout=ANSWER_WITHIN)
            moved = time.monotonic() - killed
            refused += publish_until(client, accepted, 20)
            assert eventually(lambda: set(recorder.finished) >= set(accepted), timeout=30)  # the consumer moved too
            assert eventually(lambda: Probe(second.url).count(both.queue_name) == 0, timeout=30)
        print(f"moved to the second node {moved:.1f} s after the first was killed; refused {refused}")
    result = tally("19 first node of BROKER_URL lost", accepted, recorder.finished, refused)
    assert result.lost == 0
