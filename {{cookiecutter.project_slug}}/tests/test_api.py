"""Unit tests of the HTTP interface, with the in-memory broker in place of the real one."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import fastapi.dependencies.utils
import fastapi.routing
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.middleware import MAX_BODY_BYTES
from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from .fakes import InMemoryBroker, StubConsumer

IMAGE_TASK = {"type": "process_image", "payload": {"image_url": "https://example.com/cat.png"}}


@pytest.fixture
def broker() -> InMemoryBroker:
    return InMemoryBroker()


@pytest.fixture
def consumer() -> StubConsumer:
    return StubConsumer()


@pytest.fixture
def client(broker: InMemoryBroker, consumer: StubConsumer, registry: TaskRegistry) -> Iterator[TestClient]:
    settings = Settings(publish_timeout_seconds=0.3, ready_timeout_seconds=0.3)
    app = create_app(settings, registry=registry, publisher=broker, consumer=consumer)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def published_total() -> float:
    return REGISTRY.get_sample_value("tasks_published_total") or 0.0


def test_a_valid_task_is_accepted_and_published(client: TestClient, broker: InMemoryBroker) -> None:
    before = published_total()
    response = client.post("/tasks", json=IMAGE_TASK)
    assert response.status_code == 202
    body = response.json()
    assert uuid.UUID(body["id"])
    assert body["type"] == "process_image"
    [message] = broker.published
    assert (message.id, message.type, message.payload) == (body["id"], "process_image", IMAGE_TASK["payload"])
    assert published_total() == before + 1


def test_a_task_is_accepted_without_a_hop_to_the_threadpool(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI runs a plain `def` dependency or endpoint in its threadpool: a hand-over per request."""

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("POST /tasks ran something in the threadpool")

    monkeypatch.setattr(fastapi.dependencies.utils, "run_in_threadpool", refuse)
    monkeypatch.setattr(fastapi.routing, "run_in_threadpool", refuse)
    assert client.post("/tasks", json=IMAGE_TASK).status_code == 202


def test_the_request_id_is_returned_and_travels_with_the_message(client: TestClient, broker: InMemoryBroker) -> None:
    response = client.post("/tasks", json=IMAGE_TASK, headers={"X-Request-ID": "req-42"})
    assert response.headers["X-Request-ID"] == "req-42"
    assert broker.queue[0].headers["x-request-id"] == "req-42"
    assert float(broker.queue[0].headers["x-published-at"]) <= time.time()
    made_up = client.post("/tasks", json=IMAGE_TASK, headers={"X-Request-ID": "bad id\twith spaces"})
    assert made_up.headers["X-Request-ID"] != "bad id\twith spaces"


@pytest.mark.parametrize(
    ("content", "where"),
    [
        pytest.param(b"{not json", "body", id="not-json"),
        pytest.param(b"\xff\xfe", "body", id="not-utf8"),
        pytest.param(b"[]", "body", id="array"),
        pytest.param(b"null", "body", id="null"),
        pytest.param(b'{"payload": {}}', "type", id="no-type"),
        pytest.param(b'{"type": "process_image"}', "payload", id="no-payload"),
        pytest.param(b'{"type": "process_image", "payload": []}', "payload", id="payload-not-object"),
        pytest.param(b'{"type": "resize_video", "payload": {}}', "type", id="unknown-type"),
        pytest.param(b'{"type": "process_image", "payload": {}}', "image_url", id="payload-missing-url"),
        pytest.param(
            b'{"type": "process_image", "payload": {"image_url": "ftp://example.com/a"}}', "image_url", id="ftp-url"
        ),
        pytest.param(
            b'{"type": "process_image", "payload": {"image_url": "https://e.com/a", "x": 1}}', "x", id="extra-field"
        ),
        pytest.param(b"[" * 5000 + b"]" * 5000, "body", id="deeply-nested"),
    ],
)
def test_invalid_bodies_get_422_and_publish_nothing(
    client: TestClient, broker: InMemoryBroker, content: bytes, where: str
) -> None:
    response = client.post("/tasks", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert where in json.dumps(response.json()["detail"])
    assert broker.published == []


def test_a_delayed_task_is_published_with_its_delay(client: TestClient, broker: InMemoryBroker) -> None:
    assert client.post("/tasks", json={**IMAGE_TASK, "delay_seconds": 90}).status_code == 202
    assert client.post("/tasks", json=IMAGE_TASK).status_code == 202
    assert broker.delays == [90.0, 0.0]
    due, now = (float(envelope.headers["x-published-at"]) for envelope in broker.queue)
    assert due - now == pytest.approx(90, abs=5)  # its wait in the queue counts from when it is due


@pytest.mark.parametrize(
    "delay",  # as written in the JSON body
    [
        pytest.param("86400.5", id="over-max"),
        pytest.param("-1", id="negative"),
        pytest.param('"soon"', id="not-a-number"),
        pytest.param("1e400", id="infinite"),
    ],
)
def test_a_delay_out_of_bounds_gets_422_and_publishes_nothing(
    client: TestClient, broker: InMemoryBroker, delay: str
) -> None:
    content = json.dumps(IMAGE_TASK)[:-1] + f', "delay_seconds": {delay}}}'
    response = client.post("/tasks", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert "delay_seconds" in json.dumps(response.json()["detail"])
    assert broker.published == []


def test_the_longest_delay_is_a_setting(broker: InMemoryBroker, registry: TaskRegistry) -> None:
    app = create_app(Settings(max_delay_seconds=60), registry=registry, publisher=broker, consumer=StubConsumer())
    with TestClient(app) as client:
        over = client.post("/tasks", json={**IMAGE_TASK, "delay_seconds": 61})
        assert over.status_code == 422
        assert "MAX_DELAY_SECONDS" in over.text
        assert client.post("/tasks", json={**IMAGE_TASK, "delay_seconds": 60}).status_code == 202


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_a_body_that_is_not_declared_json_gets_415(
    client: TestClient, broker: InMemoryBroker, content_type: str
) -> None:
    response = client.post("/tasks", content=json.dumps(IMAGE_TASK), headers={"Content-Type": content_type})
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]
    assert broker.published == []


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.task+json"])
def test_json_media_types_with_parameters_or_a_suffix_are_accepted(client: TestClient, content_type: str) -> None:
    response = client.post("/tasks", content=json.dumps(IMAGE_TASK), headers={"Content-Type": content_type})
    assert response.status_code == 202


def test_a_body_over_one_mebibyte_gets_413(client: TestClient, broker: InMemoryBroker) -> None:
    big = {"type": "process_image", "payload": {"image_url": "https://e.com/" + "a" * MAX_BODY_BYTES}}
    response = client.post("/tasks", json=big)
    assert response.status_code == 413
    assert "detail" in response.json()
    assert broker.published == []


def test_a_streamed_body_over_one_mebibyte_gets_413(client: TestClient, broker: InMemoryBroker) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"type": "process_image", "payload": {"image_url": "https://e.com/'
        for _ in range(20):
            yield b"a" * 65536
        yield b'"}}'

    response = client.post("/tasks", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert broker.published == []


def test_broker_down_gets_503_with_a_detail(client: TestClient, broker: InMemoryBroker) -> None:
    broker.available = False
    failures = publish_failures("unavailable")
    response = client.post("/tasks", json=IMAGE_TASK)
    assert response.status_code == 503
    assert publish_failures("unavailable") == failures + 1
    assert "broker unavailable" in response.json()["detail"]
    assert broker.published == []


def test_a_broker_that_never_answers_gets_504_outcome_unknown_within_the_timeout(
    client: TestClient, broker: InMemoryBroker
) -> None:
    broker.hang = True
    timeouts = publish_failures("timeout")
    started = time.monotonic()
    response = client.post("/tasks", json=IMAGE_TASK)
    assert response.status_code == 504
    assert "outcome unknown" in response.json()["detail"]
    assert time.monotonic() - started < 5
    assert publish_failures("timeout") == timeouts + 1


def test_a_publish_written_but_not_confirmed_gets_504_not_503(client: TestClient, broker: InMemoryBroker) -> None:
    """503 promises the task will not run; a message the broker may hold must not get one."""
    broker.unconfirmed = True
    timeouts = publish_failures("timeout")
    response = client.post("/tasks", json=IMAGE_TASK)
    assert response.status_code == 504
    assert "outcome unknown" in response.json()["detail"]
    assert publish_failures("timeout") == timeouts + 1
    assert len(broker.published) == 1  # the broker may well run it


def publish_failures(reason: str) -> float:
    return REGISTRY.get_sample_value("tasks_publish_failures_total", {"reason": reason}) or 0.0


def test_liveness(client: TestClient, broker: InMemoryBroker) -> None:
    broker.available = False
    assert client.get("/health/live").status_code == 200


def test_ready_when_broker_answers_and_consumer_runs(client: TestClient) -> None:
    response = client.get("/health/ready")
    assert response.status_code == 200
{%- if cookiecutter.task_store == "none" %}
    assert response.json() == {"status": "ready", "broker": "ok", "consumer": "running"}
{%- else %}
    assert response.json() == {"status": "ready", "broker": "ok", "consumer": "running", "task_store": "ok"}
{%- endif %}


def test_not_ready_when_the_broker_is_down(client: TestClient, broker: InMemoryBroker) -> None:
    broker.available = False
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["broker"] == "unavailable"


def test_not_ready_when_the_broker_hangs(client: TestClient, broker: InMemoryBroker) -> None:
    broker.hang = True
    assert client.get("/health/ready").status_code == 503


def test_not_ready_when_the_consumer_stopped(client: TestClient, consumer: StubConsumer) -> None:
    consumer.running = False
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["consumer"] == "stopped"


def test_ready_without_a_consumer_when_it_is_disabled(broker: InMemoryBroker, registry: TaskRegistry) -> None:
    app = create_app(Settings(consumer_enabled=False), registry=registry, publisher=broker)
    with TestClient(app) as client:
        assert client.get("/health/ready").json()["consumer"] == "disabled"


def test_the_lifespan_starts_and_stops_the_broker_connections(
    broker: InMemoryBroker, consumer: StubConsumer, registry: TaskRegistry
) -> None:
    app = create_app(Settings(), registry=registry, publisher=broker, consumer=consumer)
    with TestClient(app):
        assert broker.started
    assert broker.closed
    assert consumer.stopped


def test_metrics_expose_the_contract_counters(client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for sample in (
        "tasks_published_total",
        'tasks_processed_total{outcome="succeeded"}',
        'tasks_processed_total{outcome="retried"}',
        'tasks_processed_total{outcome="dead_lettered"}',
    ):
        assert sample in response.text


def test_openapi_documents_every_status_and_content_type(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
{%- if cookiecutter.task_store == "none" %}
    assert set(paths["/tasks"]["post"]["responses"]) == {"202", "413", "415", "422", "503", "504"}
{%- else %}
    assert set(paths["/tasks"]["post"]["responses"]) == {"202", "409", "413", "415", "422", "503", "504"}
    assert set(paths["/tasks/{task_id}"]["get"]["responses"]) == {"200", "404", "422", "503"}
{%- endif %}
    assert set(paths["/health/ready"]["get"]["responses"]) == {"200", "503"}
    answers = paths["/tasks"]["post"]["responses"]
    assert "for certain" in answers["503"]["description"]
    assert "outcome unknown" in answers["504"]["description"]
    assert "text/plain" in next(iter(paths["/metrics"]["get"]["responses"]["200"]["content"]))
