"""Task records end to end, against the real broker and the real task store: a task followed from
POST to its result, Idempotency-Key replays under a race, and a store that is down."""
{%- set is_async = cookiecutter.consumer == "async" %}

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import BaseModel

from {{ cookiecutter.project_slug }}.messages import TaskMessage
from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from ..helpers import Recorder
from .helpers import eventually, running, wait_ready
from .probes import Probe
{%- if cookiecutter.task_store == "redis" %}

UNREACHABLE_STORE = "redis://127.0.0.1:1/0"  # nothing listens on port 1
{%- else %}

UNREACHABLE_STORE = "postgresql://127.0.0.1:1/test"  # nothing listens on port 1
{%- endif %}


class Numbers(BaseModel):
    numbers: list[int]


@pytest.fixture
def with_sum(registry: TaskRegistry) -> TaskRegistry:
    """The test task types, and `sum`, which returns a result."""

    @registry.task("sum", Numbers)
{%- if is_async %}
    async def add(payload: Numbers, message: TaskMessage) -> object:
{%- else %}
    def add(payload: Numbers, message: TaskMessage) -> object:
{%- endif %}
        return {"total": sum(payload.numbers)}

    return registry


def follow(client: TestClient, location: str, *statuses: str, timeout: float = 20.0) -> dict[str, Any]:
    """GET the record until its status is one of `statuses`; the record then."""
    seen: list[dict[str, Any]] = []

    def reached() -> bool:
        response = client.get(location)
        assert response.status_code == 200, response.text
        seen.append(response.json())
        return bool(seen[-1]["status"] in statuses)

    assert eventually(reached, timeout), seen[-1:]
    return seen[-1]


def published_total() -> float:
    return REGISTRY.get_sample_value("tasks_published_total") or 0.0


def store_errors() -> float:
    return REGISTRY.get_sample_value("task_store_errors_total") or 0.0


def test_a_task_is_followed_from_queued_to_its_result(settings: Settings, with_sum: TaskRegistry) -> None:
    with running(settings, with_sum) as client:
        wait_ready(client)
        response = client.post("/tasks", json={"type": "sum", "payload": {"numbers": [1, 2, 3]}})
        assert response.status_code == 202
        location = response.headers["Location"]
        assert location == f"/tasks/{response.json()['id']}"
        record = follow(client, location, "succeeded")
    assert (record["type"], record["attempts"], record["result"], record["error"]) == ("sum", 1, {"total": 6}, None)
    assert record["updated_at"] >= record["created_at"]


def test_a_failing_task_is_retrying_then_dead_lettered_with_the_reason(
    settings: Settings, registry: TaskRegistry
) -> None:
    with running(settings, registry) as client:
        wait_ready(client)
        location = client.post("/tasks", json={"type": "explode", "payload": {}}).headers["Location"]
        record = follow(client, location, "dead_lettered")
    assert record["attempts"] == settings.max_retries + 1
    assert f"failed after {settings.max_retries} retries" in record["error"]
    assert "this handler always fails" in record["error"]


def test_a_retry_asked_for_shows_its_next_attempt_then_succeeds(
    settings: Settings, registry: TaskRegistry, recorder: Recorder
) -> None:
    with running(settings, registry) as client:
        wait_ready(client)
        location = client.post("/tasks", json={"type": "later", "payload": {"seconds": 2}}).headers["Location"]
        waiting = follow(client, location, "retrying")
        assert waiting["error"] == "come back later"
        assert waiting["next_attempt_at"] is not None
        record = follow(client, location, "succeeded")
    assert record["attempts"] == 2
    assert record["error"] is None
    first, second = recorder.starts_of(record["id"])
    assert second - first >= 2 * 0.8


def test_a_delayed_task_is_scheduled_until_it_is_due(settings: Settings, registry: TaskRegistry) -> None:
    with running(settings, registry) as client:
        wait_ready(client)
        response = client.post("/tasks", json={"type": "record", "payload": {}, "delay_seconds": 1})
        scheduled = client.get(response.headers["Location"]).json()
        assert scheduled["status"] == "scheduled"
        assert scheduled["next_attempt_at"] > scheduled["created_at"]
        assert follow(client, response.headers["Location"], "succeeded")["attempts"] == 1


def test_racing_requests_with_one_key_publish_one_message(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, probe: Probe
) -> None:
    task = {"type": "record", "payload": {"seconds": 0}}
    with running(settings, registry) as client, ThreadPoolExecutor(8) as pool:
        wait_ready(client)
        key = f"race-{settings.queue_name}"
        published = published_total()
        answers = list(pool.map(lambda _: client.post("/tasks", json=task, headers={"Idempotency-Key": key}), range(8)))
        assert [answer.status_code for answer in answers] == [202] * 8, [answer.text for answer in answers]
        assert len({answer.json()["id"] for answer in answers}) == 1
        assert sum(answer.headers.get("Idempotent-Replayed") == "true" for answer in answers) == 7
        other = client.post("/tasks", json={**task, "payload": {"seconds": 1}}, headers={"Idempotency-Key": key})
        assert other.status_code == 422
        assert published_total() == published + 1
        assert recorder.wait_finished(1)
        assert eventually(lambda: probe.count(settings.queue_name) == 0)
    assert recorder.started == [answers[0].json()["id"]]  # one message, handled once


def test_an_unknown_id_is_404(settings: Settings, registry: TaskRegistry) -> None:
    with running(settings, registry) as client:
        assert client.get("/tasks/no-such-task").status_code == 404


def test_the_store_down_is_503_within_5_s_and_not_ready(settings: Settings, registry: TaskRegistry) -> None:
    settings = settings.model_copy(update={"task_store_url": UNREACHABLE_STORE, "consumer_enabled": False})
    published = published_total()
    with running(settings, registry) as client:
        started = time.monotonic()
        response = client.post("/tasks", json={"type": "record", "payload": {}})
        assert time.monotonic() - started < 5
        assert response.status_code == 503
        assert "task store unavailable" in response.json()["detail"]
        ready = client.get("/health/ready")
        assert (ready.status_code, ready.json()["task_store"]) == (503, "unavailable")
    assert published_total() == published


def test_workers_whose_store_is_down_still_process_every_task(
    settings: Settings, registry: TaskRegistry, recorder: Recorder
) -> None:
    publishing = settings.model_copy(update={"consumer_enabled": False})
    consuming = settings.model_copy(update={"task_store_url": UNREACHABLE_STORE})
    errors = store_errors()
    with running(publishing, registry) as api:
        wait_ready(api)
        ids = [api.post("/tasks", json={"type": "record", "payload": {}}).json()["id"] for _ in range(10)]
        with running(consuming, registry):
            assert recorder.wait_finished(10), recorder.finished
            assert eventually(lambda: store_errors() > errors)
        assert sorted(recorder.finished) == sorted(ids)
        # Their records are behind (queued); a worker's later update would bring them up to date.
        assert {api.get(f"/tasks/{task_id}").json()["status"] for task_id in ids} == {"queued"}
