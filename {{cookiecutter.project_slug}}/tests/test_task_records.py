"""Unit tests of the task records: what POST /tasks writes, GET /tasks/{id} answers, Idempotency-Key
replays, and what the processor has written as a task moves; on the in-memory store and broker."""
{%- set is_async = cookiecutter.consumer == "async" %}

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import BaseModel

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.messages import TaskMessage, encode
from {{ cookiecutter.project_slug }}.processing import Outcome, Processor, Verdict
from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.store import NewRecord, StoredRecord, Update
from {{ cookiecutter.project_slug }}.store.http import REPLAY_WAIT_SECONDS
from {{ cookiecutter.project_slug }}.store.memory import MemoryStore
from {{ cookiecutter.project_slug }}.store.writer import MAX_RESULT_BYTES, RecordWriter
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from .fakes import InMemoryBroker, StubConsumer

IMAGE_TASK = {"type": "process_image", "payload": {"image_url": "https://example.com/cat.png"}}
TTL = 3600.0


@dataclass
class StoreCheckingBroker(InMemoryBroker):
    """A broker that notes, at each publish, whether the task's record already existed; and can be slow."""

    store: MemoryStore = field(default_factory=lambda: MemoryStore(TTL))
    seconds: float = 0.0
    record_existed: list[bool] = field(default_factory=list)

    async def publish(self, message: TaskMessage, headers: Mapping[str, str], delay_seconds: float = 0.0) -> None:
        self.record_existed.append(message.id in self.store.records)
        await asyncio.sleep(self.seconds)
        await super().publish(message, headers, delay_seconds)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(TTL)


@pytest.fixture
def broker(store: MemoryStore) -> StoreCheckingBroker:
    return StoreCheckingBroker(store=store)


@pytest.fixture
def client(broker: StoreCheckingBroker, store: MemoryStore, registry: TaskRegistry) -> Iterator[TestClient]:
    settings = Settings(publish_timeout_seconds=0.5, ready_timeout_seconds=0.3)
    app = create_app(settings, registry=registry, publisher=broker, consumer=StubConsumer(), store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def store_errors() -> float:
    return REGISTRY.get_sample_value("task_store_errors_total") or 0.0


def eventually(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_task_gets_its_record_before_it_is_published_and_a_location(
    client: TestClient, broker: StoreCheckingBroker
) -> None:
    response = client.post("/tasks", json=IMAGE_TASK)
    assert response.status_code == 202
    task_id = response.json()["id"]
    assert response.headers["Location"] == f"/tasks/{task_id}"
    assert broker.record_existed == [True]
    record = client.get(response.headers["Location"])
    assert record.status_code == 200
    body = record.json()
    assert (body["id"], body["type"], body["status"], body["attempts"]) == (task_id, "process_image", "queued", 0)
    assert body["created_at"] == body["updated_at"]
    assert body["result"] is None
    assert body["error"] is None


def test_records_must_outlive_the_longest_delay() -> None:
    with pytest.raises(ValueError, match="must be longer than MAX_DELAY_SECONDS"):
        Settings(task_record_ttl_seconds=3600, max_delay_seconds=7200)
    assert Settings(task_record_ttl_seconds=3600, max_delay_seconds=600).task_record_ttl_seconds == 3600


def test_a_delayed_task_is_scheduled_with_its_due_time(client: TestClient) -> None:
    before = time.time()
    response = client.post("/tasks", json={**IMAGE_TASK, "delay_seconds": 60})
    body = client.get(response.headers["Location"]).json()
    assert body["status"] == "scheduled"
    due = body["next_attempt_at"]
    assert due is not None
    assert before + 60 <= datetime.fromisoformat(due).timestamp() <= time.time() + 60


def test_an_unknown_id_is_404_never_queued(client: TestClient) -> None:
    response = client.get(f"/tasks/{uuid.uuid4()}")
    assert response.status_code == 404
    assert "no such task" in response.json()["detail"]


def test_an_expired_record_is_404(client: TestClient, store: MemoryStore) -> None:
    task_id = client.post("/tasks", json=IMAGE_TASK).json()["id"]
    store.records[task_id] = StoredRecord.new(
        NewRecord(task_id, "process_image", "queued", created_at=time.time() - TTL - 1)
    )
    assert client.get(f"/tasks/{task_id}").status_code == 404


def test_a_task_the_broker_did_not_take_leaves_no_record(client: TestClient, broker: StoreCheckingBroker) -> None:
    broker.available = False
    response = client.post("/tasks", json=IMAGE_TASK, headers={"Idempotency-Key": "k-broker-down"})
    assert response.status_code == 503
    assert broker.record_existed == [True]
    assert broker.store.records == {}
    assert broker.store.keys == {}  # a later retry with the key is a new request
    broker.available = True
    again = client.post("/tasks", json=IMAGE_TASK, headers={"Idempotency-Key": "k-broker-down"})
    assert again.status_code == 202
    assert "Idempotent-Replayed" not in again.headers


def test_the_store_down_is_503_within_5_s_and_nothing_is_published(
    client: TestClient, broker: StoreCheckingBroker, store: MemoryStore
) -> None:
    store.available = False
    errors = store_errors()
    started = time.monotonic()
    response = client.post("/tasks", json=IMAGE_TASK)
    assert response.status_code == 503
    assert time.monotonic() - started < 5
    assert "task store unavailable" in response.json()["detail"]
    assert broker.published == []
    assert store_errors() == errors + 1
    assert client.get(f"/tasks/{uuid.uuid4()}").status_code == 503


def test_ready_says_when_the_store_is_down(client: TestClient, store: MemoryStore) -> None:
    assert client.get("/health/ready").json()["task_store"] == "ok"
    store.available = False
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["task_store"] == "unavailable"


def test_the_same_key_and_body_get_the_first_answer_and_publish_once(
    client: TestClient, broker: StoreCheckingBroker
) -> None:
    first = client.post("/tasks", json=IMAGE_TASK, headers={"Idempotency-Key": "order-1"})
    # The same JSON spelt otherwise is the same request.
    spelt_otherwise = json.dumps({"payload": IMAGE_TASK["payload"], "type": "process_image"}, indent=2)
    again = client.post(
        "/tasks", content=spelt_otherwise, headers={"Idempotency-Key": "order-1", "Content-Type": "application/json"}
    )
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Location"] == first.headers["Location"]
    assert len(broker.published) == 1


def test_the_same_key_with_another_body_is_422_and_publishes_nothing(
    client: TestClient, broker: StoreCheckingBroker
) -> None:
    assert client.post("/tasks", json=IMAGE_TASK, headers={"Idempotency-Key": "order-2"}).status_code == 202
    other = {"type": "process_image", "payload": {"image_url": "https://example.com/dog.png"}}
    response = client.post("/tasks", json=other, headers={"Idempotency-Key": "order-2"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["header", "Idempotency-Key"]
    assert len(broker.published) == 1


def test_racing_requests_with_one_key_publish_once_and_all_get_the_same_task(
    client: TestClient, broker: StoreCheckingBroker
) -> None:
    broker.seconds = 0.2  # the first publish is still under way when the others arrive
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: client.post("/tasks", json=IMAGE_TASK, headers={"Idempotency-Key": "race"}), range(8))
        )
    assert [answer.status_code for answer in answers] == [202] * 8
    assert len({answer.json()["id"] for answer in answers}) == 1
    assert sum(answer.headers.get("Idempotent-Replayed") == "true" for answer in answers) == 7
    assert len(broker.published) == 1


def test_a_publish_that_timed_out_keeps_its_record_and_a_retry_with_the_key_publishes_it_again(
    client: TestClient, broker: StoreCheckingBroker, store: MemoryStore
) -> None:
    broker.hang = True  # the broker may or may not have taken it: the task may run
    first = client.post("/tasks", json=IMAGE_TASK, headers={"Idempotency-Key": "order-timeout"})
    assert first.status_code == 504
    [record] = store.records.values()
    assert (record.status, record.accepted) == ("queued", False)
    broker.hang = False
    # Once the first request is surely over, a retry publishes the same task again, under its id.
    store.records[record.id] = replace(record, created_at=record.created_at - 60)
    again = client.post("/tasks", json=IMAGE_TASK, headers={"Idempotency-Key": "order-timeout"})
    assert again.status_code == 202
    assert again.json()["id"] == record.id
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [message.id for message in broker.published] == [record.id]
    assert store.records[record.id].accepted


def test_a_repeat_while_the_first_request_is_still_publishing_is_409(
    broker: StoreCheckingBroker, store: MemoryStore, registry: TaskRegistry
) -> None:
    settings = Settings(publish_timeout_seconds=4.0)
    app = create_app(settings, registry=registry, publisher=broker, consumer=StubConsumer(), store=store)
    broker.seconds = REPLAY_WAIT_SECONDS + 0.5
    with TestClient(app, raise_server_exceptions=False) as client, ThreadPoolExecutor(2) as pool:
        slow = pool.submit(client.post, "/tasks", json=IMAGE_TASK, headers={"Idempotency-Key": "order-slow"})
        assert eventually(lambda: bool(store.records))
        started = time.monotonic()
        repeat = client.post("/tasks", json=IMAGE_TASK, headers={"Idempotency-Key": "order-slow"})
        assert repeat.status_code == 409
        assert time.monotonic() - started < 5
        assert slow.result().status_code == 202
    assert len(broker.published) == 1


@pytest.mark.parametrize("key", ["", "with space", "é", "x" * 256])
def test_a_malformed_key_is_422(client: TestClient, broker: StoreCheckingBroker, key: str) -> None:
    response = client.post("/tasks", json=IMAGE_TASK, headers=[(b"Idempotency-Key", key.encode())])
    assert response.status_code == 422
    assert broker.published == []


def test_openapi_documents_the_record_and_the_key(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/tasks"]["post"]
    assert {"Location", "Idempotent-Replayed"} <= set(post["responses"]["202"]["headers"])
    assert "Idempotency-Key" in [parameter["name"] for parameter in post["parameters"]]
    answer = schema["components"]["schemas"]["TaskStatus"]["properties"]
    assert {"id", "type", "status", "attempts", "created_at", "updated_at", "error", "result"} <= set(answer)


class Sum(BaseModel):
    numbers: list[int]


class Size(BaseModel):
    size: int


@pytest.fixture
def results() -> TaskRegistry:
    """Task types that return something: a sum, a result of any size, and one that is not JSON."""
    registry = TaskRegistry()

    @registry.task("sum", Sum)
{%- if is_async %}
    async def add(payload: Sum, message: TaskMessage) -> object:
{%- else %}
    def add(payload: Sum, message: TaskMessage) -> object:
{%- endif %}
        return {"total": sum(payload.numbers)}

    @registry.task("sized", Size)
{%- if is_async %}
    async def sized(payload: Size, message: TaskMessage) -> object:
{%- else %}
    def sized(payload: Size, message: TaskMessage) -> object:
{%- endif %}
        return "x" * payload.size

    @registry.task("opaque", Size)
{%- if is_async %}
    async def opaque(payload: Size, message: TaskMessage) -> object:
{%- else %}
    def opaque(payload: Size, message: TaskMessage) -> object:
{%- endif %}
        return object()

    return registry


def run_tasks(
    store: MemoryStore, registry: TaskRegistry, max_retries: int, *tasks: tuple[str, dict[str, object], int]
) -> None:
    """Record each (type, payload, retries) as POST /tasks would, process it, and let the writer finish."""
    writer = RecordWriter(store)
    processor = Processor(registry, max_retries, records=writer)
    messages = []
    for type_, payload, retries in tasks:
        message = TaskMessage(id=str(uuid.uuid4()), type=type_, payload=payload)
        asyncio.run(store.create(NewRecord(message.id, type_, "queued", time.time())))
        messages.append((message, retries))
{%- if is_async %}

    async def scenario() -> None:
        await writer.start()
        for message, retries in messages:
            await processor.process(encode(message), retries)
        await writer.stop()

    asyncio.run(scenario())
{%- else %}
    asyncio.run(writer.start())
    for message, retries in messages:
        processor.process(encode(message), retries)
    asyncio.run(writer.stop())
{%- endif %}


async def start_and_stop(writer: RecordWriter) -> None:
    """The writer's whole life: whatever was put before is written by its stop."""
    await writer.start()
    await writer.stop()


def only(store: MemoryStore, type_: str) -> StoredRecord:
    [record] = [record for record in store.records.values() if record.type == type_]
    return record


def test_a_succeeded_task_keeps_its_result(store: MemoryStore, results: TaskRegistry) -> None:
    run_tasks(store, results, 3, ("sum", {"numbers": [1, 2, 3]}, 0))
    record = only(store, "sum")
    assert (record.status, record.attempts, record.error) == ("succeeded", 1, None)
    assert record.result is not None
    assert json.loads(record.result) == {"total": 6}


def test_a_result_over_64_kib_or_not_json_is_not_kept_and_the_task_still_succeeds(
    store: MemoryStore, results: TaskRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    run_tasks(store, results, 3, ("sized", {"size": MAX_RESULT_BYTES}, 0), ("opaque", {"size": 0}, 0))
    for type_ in ("sized", "opaque"):
        record = only(store, type_)
        assert (record.status, record.result) == ("succeeded", None)
    assert "over the 64 KiB limit" in caplog.text
    assert "not JSON" in caplog.text
    run_tasks(store, results, 3, ("sized", {"size": 100}, 0))  # a smaller one is kept
    assert [r.result for r in store.records.values() if r.type == "sized" and r.result] == [json.dumps("x" * 100)]


def test_a_failing_task_is_retrying_with_its_next_attempt_then_dead_lettered(
    store: MemoryStore, registry: TaskRegistry
) -> None:
    before = time.time()
    run_tasks(store, registry, 1, ("explode", {}, 0))
    record = only(store, "explode")
    assert (record.status, record.attempts) == ("retrying", 1)
    assert record.error is not None
    assert "this handler always fails" in record.error
    assert "Traceback" not in record.error
    assert record.next_attempt_at is not None
    assert record.next_attempt_at >= before
    store.records.clear()
    run_tasks(store, registry, 1, ("explode", {}, 1))  # its last retry
    record = only(store, "explode")
    assert (record.status, record.attempts) == ("dead_lettered", 2)
    assert record.error is not None
    assert "failed after 1 retries" in record.error


def test_a_rejected_task_and_an_invalid_payload_are_dead_lettered_with_the_reason(
    store: MemoryStore, registry: TaskRegistry
) -> None:
    run_tasks(store, registry, 3, ("refuse", {}, 0), ("record", {"bad": 1}, 0))
    rejected, invalid = only(store, "refuse"), only(store, "record")
    assert (rejected.status, invalid.status) == ("dead_lettered", "dead_lettered")
    assert rejected.error == "rejected: the image is gone for good"
    assert invalid.error is not None
    assert "invalid payload" in invalid.error


def test_a_store_that_fails_neither_blocks_nor_loses_the_task_and_is_counted(
    store: MemoryStore, registry: TaskRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    writer = RecordWriter(store)
    processor = Processor(registry, 3, records=writer)
    message = TaskMessage(id=str(uuid.uuid4()), type="record", payload={})
    asyncio.run(store.create(NewRecord(message.id, "record", "queued", time.time())))
    store.available = False
    errors = store_errors()
{%- if is_async %}

    async def scenario() -> tuple[str, float]:
        await writer.start()
        started = time.monotonic()
        verdict = await processor.process(encode(message), 0)
        took = time.monotonic() - started
        await writer.stop()
        return verdict.outcome.value, took

    outcome, took = asyncio.run(scenario())
{%- else %}
    asyncio.run(writer.start())
    started = time.monotonic()
    outcome, took = processor.process(encode(message), 0).outcome.value, time.monotonic() - started
    asyncio.run(writer.stop())
{%- endif %}
    assert outcome == "succeeded"
    assert took < 0.1  # the processor never waits on the store
    assert store_errors() > errors
    assert "not written" in caplog.text
    assert not writer.healthy()
    assert store.records[message.id].status == "queued"  # behind, until the task's next update
    store.available = True
    run_tasks(store, registry, 3, ("record", {}, 0))
    assert {record.status for record in store.records.values() if record.id != message.id} == {"succeeded"}


def test_updates_the_store_refused_are_written_once_it_is_back(store: MemoryStore) -> None:
    writer = RecordWriter(store)
    asyncio.run(store.create(NewRecord("t-back", "record", "queued", time.time())))
    store.available = False
    errors = store_errors()
{%- if is_async %}

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(1000):  # ten seconds at most
            if condition():
                return
            await asyncio.sleep(0.01)

    async def scenario() -> str:
        await writer.start()
        writer.finished("t-back", 1, Verdict(Outcome.SUCCEEDED, result=[1]))
        await until(lambda: store_errors() > errors)
        store.available = True  # no newer update of the task comes: the refused one is tried again
        await until(lambda: store.records["t-back"].status != "queued")
        await writer.stop()
        return store.records["t-back"].status

    assert asyncio.run(scenario()) == "succeeded"
{%- else %}
    asyncio.run(writer.start())
    writer.finished("t-back", 1, Verdict(Outcome.SUCCEEDED, result=[1]))
    deadline = time.monotonic() + 10
    while store_errors() == errors and time.monotonic() < deadline:
        time.sleep(0.01)
    store.available = True  # no newer update of the task comes: the refused one is tried again
    while store.records["t-back"].status == "queued" and time.monotonic() < deadline:
        time.sleep(0.01)
    asyncio.run(writer.stop())
    assert store.records["t-back"].status == "succeeded"
{%- endif %}
    assert store_errors() > errors
    assert writer.healthy()
    assert store.records["t-back"].result == "[1]"


def test_the_latest_update_of_a_task_replaces_an_unwritten_one_and_the_backlog_is_bounded(store: MemoryStore) -> None:
    writer = RecordWriter(store, max_pending=2)
    errors = store_errors()
    now = time.time()
    writer.put(Update("a", "running", 1, now))
    writer.put(Update("a", "succeeded", 1, now + 1))
    writer.put(Update("b", "running", 1, now))
    writer.put(Update("c", "running", 1, now))  # a third task: over the bound, dropped and counted
    assert store_errors() == errors + 1
    for task_id in "abc":
        asyncio.run(store.create(NewRecord(task_id, "record", "queued", now)))
    asyncio.run(start_and_stop(writer))
    assert {task_id: record.status for task_id, record in store.records.items()} == {
        "a": "succeeded",
        "b": "running",
        "c": "queued",
    }
