"""A three-node RabbitMQ cluster on processes of the test's own (rabbitmq_node.py): the service
publishes and consumes through a BROKER_URL that lists every node while the node that leads the
task queue (a quorum queue) is SIGKILLed, then started again. Nothing answered 202 may be lost."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from ..helpers import Recorder
from .helpers import TaskStream, eventually, running, wait_ready
from .probes import Probe
from .rabbitmq_node import RabbitNode, cluster, nodes, quorum_leader
from .tally import tally

MOVED_WITHIN = 15.0  # seconds from the kill until the service publishes and consumes again


@pytest.fixture(scope="module")
def members() -> Iterator[list[RabbitNode]]:
    with nodes(3) as members:
        cluster(members)
        yield members


def connections_on(node: RabbitNode) -> int:
    return len(node.ctl("list_connections", "pid", "--quiet", "--no-table-headers").split())


def online(node: RabbitNode, queue: str, member: RabbitNode) -> bool:
    """`member` is back among the queue's replicas that `node` sees online."""
    listing = node.ctl("list_queues", "name", "online", "--quiet", "--no-table-headers")
    return any(line.startswith(f"{queue}\t") and member.name in line for line in listing.splitlines())


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_the_queue_leader_killed_loses_nothing_and_its_return_changes_nothing(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, members: list[RabbitNode]
) -> None:
    addresses = ",".join(member.address for member in members)
    settings = settings.model_copy(update={"broker_url": f"amqp://guest:guest@{addresses}/%2F", "queue_type": "quorum"})
    with running(settings, registry) as client:
        wait_ready(client, timeout=30)
        with TaskStream(client) as stream:
            assert eventually(lambda: len(stream.accepted) >= 100, timeout=30)
            leader = quorum_leader(members[0], settings.queue_name, members)
            survivors = [member for member in members if member is not leader]
            # The queue is declared through the first node that answers, where both of the service's
            # clients connect: killing its leader moves them, not only the queue.
            assert connections_on(leader) >= 1, f"the service has no connection on {leader.name}"
            leader.kill()
            killed = time.monotonic()
            new_leader = quorum_leader(survivors[0], settings.queue_name, survivors)
            elected = time.monotonic() - killed
            sent = len(stream.accepted)
            assert eventually(lambda: len(stream.accepted) > sent, timeout=MOVED_WITHIN), "publishing never moved"
            published_again = time.monotonic() - killed
            assert eventually(lambda: stream.accepted[sent] in recorder.finished, timeout=MOVED_WITHIN), (
                "consuming never moved"
            )
            consumed_again = time.monotonic() - killed
            leader.start()
            assert eventually(lambda: online(new_leader, settings.queue_name, leader), timeout=30)
            back = len(stream.accepted)
            assert eventually(lambda: len(stream.accepted) >= back + 100, timeout=30), "the node's return stopped it"
        assert eventually(lambda: set(recorder.finished) >= set(stream.accepted), timeout=60), len(
            set(stream.accepted) - set(recorder.finished)
        )
        assert eventually(lambda: Probe(new_leader.url).count(settings.queue_name) == 0, timeout=30)
    result = tally("20 queue leader killed, 3-node cluster", stream.accepted, recorder.finished, len(stream.refused))
    print(
        f"\n20: {result.sent} tasks answered 202, {result.lost} lost, {result.duplicates} run twice;"
        f" a new leader {elected:.1f} s after the kill, 202s again after {published_again:.1f} s,"
        f" consumed again after {consumed_again:.1f} s; {len(stream.refused)} answered 503/504"
    )
    assert result.lost == 0
    assert result.unexpected == 0
    assert stream.slowest < 5, f"a POST took {stream.slowest:.1f} s"
    assert stream.wrong == []
