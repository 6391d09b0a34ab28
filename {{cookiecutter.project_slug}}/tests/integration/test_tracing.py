"""Tracing end to end against the real broker: the trace follows a task from HTTP to its handler."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from ..helpers import Recorder, context, parent
from .helpers import eventually, post, running, wait_ready


def only(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [span] = [span for span in spans if span.name == name]
    return span


def test_the_trace_runs_from_the_request_through_the_broker_to_the_handler(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, exporter: InMemorySpanExporter
) -> None:
    with running(settings, registry) as client:
        wait_ready(client)
        task_id = post(client, "record")
        assert recorder.wait_finished(1)
        assert recorder.finished == [task_id]
        # The handle span ends just after the handler returns.
        assert eventually(lambda: any(span.name == "handle record" for span in exporter.get_finished_spans()))

    spans = exporter.get_finished_spans()
    request = only(spans, "POST /tasks")
    publish = only(spans, f"publish {settings.queue_name}")
    handle = only(spans, "handle record")
    assert (request.kind, publish.kind, handle.kind) == (SpanKind.SERVER, SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert parent(publish).span_id == context(request).span_id
    assert parent(handle).span_id == context(publish).span_id
    assert parent(handle).is_remote  # it came through the broker, in the message's headers
    assert context(handle).trace_id == context(publish).trace_id == context(request).trace_id
