"""Fixtures shared by unit and integration tests: a registry of test task types that record what ran,
and tracing into memory."""

from __future__ import annotations

{% if cookiecutter.consumer == "async" -%}
import asyncio
{% endif -%}
import threading
{%- if cookiecutter.consumer == "threaded" %}
import time
{%- endif %}
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext
from pydantic import BaseModel, ConfigDict

from {{ cookiecutter.project_slug }} import tracing
from {{ cookiecutter.project_slug }}.handlers import ProcessImagePayload, process_image
from {{ cookiecutter.project_slug }}.messages import TaskMessage
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit tests first, then integration tests: pytest collects `integration/` before the
    `test_*.py` files beside it, and the fast tests should fail first."""
    items.sort(key=lambda item: INTEGRATION in item.path.parents)


class Recorder:
    """Thread-safe record of the task ids handlers started and finished; tests wait on it."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.started: list[str] = []
        self.finished: list[str] = []

    def start(self, task_id: str) -> None:
        with self._changed:
            self.started.append(task_id)
            self._changed.notify_all()

    def finish(self, task_id: str) -> None:
        with self._changed:
            self.finished.append(task_id)
            self._changed.notify_all()

    def wait_started(self, count: int, timeout: float = 15.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.started) >= count, timeout)

    def wait_finished(self, count: int, timeout: float = 15.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.finished) >= count, timeout)


class RecordPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = 0.0


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def registry(recorder: Recorder) -> TaskRegistry:
    """The shipped example plus `record` (succeeds, optionally slowly) and `explode` (always raises)."""
    registry = TaskRegistry()
    registry.task("process_image", ProcessImagePayload)(process_image)

    @registry.task("record", RecordPayload)
    {% if cookiecutter.consumer == "async" %}async {% endif %}def record(payload: RecordPayload, message: TaskMessage) -> None:
        recorder.start(message.id)
        {% if cookiecutter.consumer == "async" %}await asyncio.sleep(payload.seconds){% else %}time.sleep(payload.seconds){% endif %}
        recorder.finish(message.id)

    @registry.task("explode", RecordPayload)
    {% if cookiecutter.consumer == "async" %}async {% endif %}def explode(payload: RecordPayload, message: TaskMessage) -> None:
        recorder.start(message.id)
        raise RuntimeError("this handler always fails")

    return registry


def context(span: ReadableSpan) -> SpanContext:
    span_context = span.get_span_context()
    assert span_context is not None
    return span_context


def parent(span: ReadableSpan) -> SpanContext:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent


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
