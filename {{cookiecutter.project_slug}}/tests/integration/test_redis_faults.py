"""Redis itself failing, on a redis-server of the test's own: SIGKILLed and restarted from its
append-only file, out of memory, its stream or group deleted under a running consumer. Each
scenario is tallied (tally.py) and ends with the group's lag empty and new tasks processed."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from ..helpers import Recorder
from .helpers import eventually, running, wait_ready
from .probes import Probe
from .redis_server import RedisServer, aof, redis_servers
from .tally import tally
from .test_faults import publish_until


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[RedisServer]]:
    with redis_servers(tmp_path / "redis") as servers:
        yield servers


def own_redis(servers: list[RedisServer], root: Path, *arguments: str) -> RedisServer:
    server = RedisServer(root / f"redis-{len(servers)}", list(arguments))
    servers.append(server)
    server.start()
    return server


def refused_while_down(client: TestClient, tries: int = 3) -> int:
    """POSTs while Redis is down: each a 503 or a 504, within publish_until's 5 s."""
    refused = 0
    for _ in range(tries):
        started = time.monotonic()
        response = client.post("/tasks", json={"type": "record", "payload": {}})
        assert time.monotonic() - started < 5, f"POST /tasks took {time.monotonic() - started:.1f} s"
        assert response.status_code in (503, 504), response.text
        refused += 1
    return refused


def settled(probe: Probe, settings: Settings) -> bool:
    """The group's lag and pending list are empty: everything read was acknowledged."""
    try:
        return probe.count(settings.queue_name) == 0
    except Exception:
        return False


@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_redis_sigkilled_and_restarted_from_its_aof(
    settings: Settings,
    registry: TaskRegistry,
    recorder: Recorder,
    servers: list[RedisServer],
    tmp_path: Path,
    fsync: str,
) -> None:
    server = own_redis(servers, tmp_path, *aof(fsync))
    settings = settings.model_copy(update={"broker_url": server.url})
    accepted: list[str] = []
    with running(settings, registry) as client:
        wait_ready(client)
        refused = publish_until(client, accepted, 200)
        server.kill()  # mid-stream: the consumer has some in hand, the rest wait in the stream
        refused += refused_while_down(client)
        server.start()  # on the same directory: what the AOF kept
        refused += publish_until(client, accepted, 240, timeout=30)  # recovers by itself
        eventually(lambda: set(recorder.finished) >= set(accepted), timeout=30)
        probe = Probe(server.url)
        assert eventually(lambda: settled(probe, settings), timeout=15)
    result = tally(f"15 Redis SIGKILLed and restarted (AOF {fsync})", accepted, recorder.finished, refused)
    print(f"\nAOF appendfsync {fsync}: {result.lost} of {result.sent} tasks answered 202 lost by a SIGKILL")
    if fsync == "always":
        assert result.lost == 0
    assert set(accepted[200:]) <= set(recorder.finished)  # after the restart, nothing is lost


def test_redis_out_of_memory_refuses_with_503_and_recovers(
    settings: Settings,
    registry: TaskRegistry,
    recorder: Recorder,
    servers: list[RedisServer],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = own_redis(servers, tmp_path, "maxmemory-policy noeviction")
    settings = settings.model_copy(update={"broker_url": server.url})
    accepted: list[str] = []
    admin = server.client()
    with running(settings, registry) as client:
        wait_ready(client)
        refused = publish_until(client, accepted, 20)
        assert eventually(lambda: len(set(recorder.finished)) >= 20)
        caplog.set_level(logging.WARNING)
        admin.config_set("maxmemory", 1)  # any write that needs memory is refused
        for _ in range(5):
            response = client.post("/tasks", json={"type": "record", "payload": {}})
            assert response.status_code == 503, response.text
            refused += 1
        assert "OutOfMemoryError: command not allowed" in caplog.text  # the reason, logged
        admin.config_set("maxmemory", 0)
        refused += publish_until(client, accepted, 40, timeout=15)
        assert eventually(lambda: set(recorder.finished) >= set(accepted), timeout=30)
        probe = Probe(server.url)
        assert eventually(lambda: settled(probe, settings), timeout=15)
    admin.close()
    result = tally("16 Redis out of memory", accepted, recorder.finished, refused)
    assert result.lost == 0
    assert result.recovered == 0  # a 503 is a task Redis never took: none of them ran
    assert result.unexpected == 0


def test_the_group_or_the_stream_deleted_under_the_consumer_is_declared_again(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, probe: Probe
) -> None:
    accepted: list[str] = []
    admin = redis.Redis.from_url(settings.broker_url)
    with running(settings, registry) as client:
        wait_ready(client)
        refused = publish_until(client, accepted, 10)
        assert eventually(lambda: set(recorder.finished) >= set(accepted))
        admin.xgroup_destroy(settings.queue_name, settings.consumer_group)
        refused += publish_until(client, accepted, 20)
        assert eventually(lambda: set(recorder.finished) >= set(accepted), timeout=30)
        assert eventually(lambda: settled(probe, settings), timeout=15)
        admin.delete(settings.queue_name)
        refused += publish_until(client, accepted, 30)
        assert eventually(lambda: set(recorder.finished) >= set(accepted), timeout=30)
        assert eventually(lambda: settled(probe, settings), timeout=15)
        wait_ready(client)
    admin.close()
    result = tally("17 stream or group deleted under the consumer", accepted, recorder.finished, refused)
    assert result.lost == 0
    # A group declared again starts at the stream's first entry: the 10 already done may run again.
    assert result.duplicates <= 10
