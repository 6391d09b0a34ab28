"""Fixtures shared by unit and integration tests: a registry of test task types that record what ran,
and tracing into memory."""

from __future__ import annotations
{%- set is_async = cookiecutter.consumer == "async" %}

{% if is_async -%}
import asyncio
{%- else -%}
import time
{%- endif %}
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel, ConfigDict

from {{ cookiecutter.project_slug }} import tracing
from {{ cookiecutter.project_slug }}.handlers import ProcessImagePayload, process_image
from {{ cookiecutter.project_slug }}.messages import TaskMessage
from {{ cookiecutter.project_slug }}.tasks import Reject, Retry, TaskRegistry

from .helpers import Recorder

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit tests first, then integration tests: pytest collects `integration/` before the
    `test_*.py` files beside it, and the fast tests should fail first."""
    items.sort(key=lambda item: INTEGRATION in item.path.parents)


class RecordPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = 0.0
{%- if cookiecutter.task_store != "none" %}


@pytest.fixture(autouse=True)
def task_records_in_memory(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests keep task records in memory; integration tests use the real store at TASK_STORE_URL."""
    if INTEGRATION not in request.path.parents:
        monkeypatch.setenv("TASK_STORE_URL", "memory://")
{%- endif %}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def registry(recorder: Recorder) -> TaskRegistry:
    """The shipped example plus `record` (succeeds, optionally slowly), `explode` (always raises),
    `refuse` (rejects the task: dead-lettered at once) and `later` (asks for a retry in `seconds`
    on its first attempt, then succeeds)."""
    registry = TaskRegistry()
    registry.task("process_image", ProcessImagePayload)(process_image)

    @registry.task("record", RecordPayload)
{%- if is_async %}
    async def record(payload: RecordPayload, message: TaskMessage) -> None:
        recorder.start(message.id)
        await asyncio.sleep(payload.seconds)
        recorder.finish(message.id)
{%- else %}
    def record(payload: RecordPayload, message: TaskMessage) -> None:
        recorder.start(message.id)
        time.sleep(payload.seconds)
        recorder.finish(message.id)
{%- endif %}

    @registry.task("explode", RecordPayload)
{%- if is_async %}
    async def explode(payload: RecordPayload, message: TaskMessage) -> None:
{%- else %}
    def explode(payload: RecordPayload, message: TaskMessage) -> None:
{%- endif %}
        recorder.start(message.id)
        raise RuntimeError("this handler always fails")

    @registry.task("refuse", RecordPayload)
{%- if is_async %}
    async def refuse(payload: RecordPayload, message: TaskMessage) -> None:
{%- else %}
    def refuse(payload: RecordPayload, message: TaskMessage) -> None:
{%- endif %}
        recorder.start(message.id)
        raise Reject("the image is gone for good")

    @registry.task("later", RecordPayload)
{%- if is_async %}
    async def later(payload: RecordPayload, message: TaskMessage) -> None:
{%- else %}
    def later(payload: RecordPayload, message: TaskMessage) -> None:
{%- endif %}
        recorder.start(message.id)
        if recorder.started.count(message.id) == 1:
            raise Retry(delay_seconds=payload.seconds, reason="come back later")
        recorder.finish(message.id)

    return registry


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for one test; off again after it."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    yield exporter
    tracing.disable_tracing()
    provider.shutdown()
