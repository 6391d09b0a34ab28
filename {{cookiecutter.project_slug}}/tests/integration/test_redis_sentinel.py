"""A Redis primary failing over, on processes of the test's own: a primary, a replica and three
Sentinels; the service publishes and consumes through redis+sentinel:// while the primary is
SIGKILLed. With REDIS_WAIT_REPLICAS=1 nothing answered 202 may be lost; with 0, the loss is counted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from ..helpers import Recorder
from .helpers import TaskStream, eventually, running, wait_ready
from .probes import Probe
from .redis_server import RedisServer, redis_servers
from .tally import tally

MASTER = "tasks-primary"
SENTINELS = 3


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[RedisServer]]:
    with redis_servers(tmp_path / "redis") as servers:
        yield servers


def sentinel_config(primary: RedisServer) -> list[str]:
    """Quick to notice and to fail over, so the test takes seconds, not minutes."""
    return [
        f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 2",
        f"sentinel down-after-milliseconds {MASTER} 1000",
        f"sentinel failover-timeout {MASTER} 3000",
    ]


def primary_port(sentinel: RedisServer) -> int:
    client: Any = sentinel.client()  # execute_command is untyped
    try:
        _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        return int(port)
    finally:
        client.close()


def watching(sentinel: RedisServer) -> bool:
    """This Sentinel knows the replica and the other Sentinels: a failover can be agreed on."""
    client: Any = sentinel.client()
    try:
        replicas = client.execute_command("SENTINEL", "REPLICAS", MASTER)
        others = client.execute_command("SENTINEL", "SENTINELS", MASTER)
        return len(replicas) == 1 and len(others) == SENTINELS - 1
    except Exception:
        return False
    finally:
        client.close()


def replicating(replica: RedisServer) -> bool:
    client = replica.client()
    try:
        return client.info("replication").get("master_link_status") == "up"
    except Exception:
        return False
    finally:
        client.close()


@pytest.mark.cluster
@pytest.mark.parametrize("replicas", [1, 0])
def test_a_primary_failover_loses_nothing_answered_202_with_wait(
    settings: Settings,
    registry: TaskRegistry,
    recorder: Recorder,
    servers: list[RedisServer],
    tmp_path: Path,
    replicas: int,
) -> None:
    primary = RedisServer(tmp_path / "primary", ["appendonly no"])
    servers.append(primary)
    primary.start()
    replica = RedisServer(tmp_path / "replica", [f"replicaof 127.0.0.1 {primary.port}"])
    servers.append(replica)
    replica.start()
    sentinels = [
        RedisServer(tmp_path / f"sentinel-{n}", sentinel_config(primary), sentinel=True) for n in range(SENTINELS)
    ]
    servers.extend(sentinels)
    for sentinel in sentinels:
        sentinel.start()
    assert eventually(lambda: replicating(replica), timeout=15)
    assert eventually(lambda: all(watching(sentinel) for sentinel in sentinels), timeout=30)

    hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in sentinels)
    settings = settings.model_copy(
        update={"broker_url": f"redis+sentinel://{hosts}/{MASTER}/0", "redis_wait_replicas": replicas}
    )
    with running(settings, registry) as client:
        wait_ready(client)
        with TaskStream(client) as stream:
            assert eventually(lambda: len(stream.accepted) >= 100, timeout=20)
            primary.kill()
            killed = time.monotonic()
            assert eventually(lambda: primary_port(sentinels[0]) == replica.port, timeout=30)
            failover_seconds = time.monotonic() - killed
            # The old primary comes back as a replica of the new one, once Sentinel says which that is.
            primary.arguments = [f"replicaof 127.0.0.1 {replica.port}"]
            primary.start()
            after = len(stream.accepted)
            assert eventually(lambda: len(stream.accepted) >= after + 50, timeout=30), "publishing never resumed"
            resumed_seconds = time.monotonic() - killed
        assert stream.slowest < 5, f"a POST took {stream.slowest:.1f} s"
        assert stream.wrong == []
        late = stream.accepted[after:]
        assert eventually(lambda: set(recorder.finished) >= set(late), timeout=30), "consuming never resumed"
        assert eventually(lambda: set(recorder.finished) >= set(stream.accepted), timeout=10 if replicas else 5)
        probe = Probe(replica.url)
        assert eventually(lambda: probe.count(settings.queue_name) == 0, timeout=15)
    scenario = f"18 Redis primary failover (WAIT {replicas})"
    result = tally(scenario, stream.accepted, recorder.finished, len(stream.refused))
    print(
        f"\n{scenario}: {result.lost} of {result.sent} tasks answered 202 lost; Sentinel promoted the replica"
        f" {failover_seconds:.1f} s after the kill, 202s again {resumed_seconds:.1f} s after it;"
        f" {len(stream.refused)} answered 503/504"
    )
    if replicas:
        assert result.lost == 0
    assert result.unexpected == 0
