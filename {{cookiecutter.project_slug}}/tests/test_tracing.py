"""Tracing: the request, publish and handle spans form one trace, linked by the message's headers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from {{ cookiecutter.project_slug }} import tracing
from {{ cookiecutter.project_slug }}.settings import Settings

from .helpers import context, parent


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def test_the_handle_span_continues_the_trace_the_publish_span_put_in_the_headers(
    exporter: InMemorySpanExporter,
) -> None:
    headers = {"x-request-id": "req-1"}
    with tracing.request_span("POST", "/tasks"), tracing.publish_span("tasks", headers):
        pass
    assert headers["traceparent"].startswith("00-")
    assert headers["x-request-id"] == "req-1"
    # The consumer sees only the headers, in another thread or process, under no current span.
    with tracing.handle_span("record", dict(headers)):
        pass

    spans = by_name(exporter.get_finished_spans())
    request, publish, handle = spans["POST /tasks"], spans["publish tasks"], spans["handle record"]
    assert (request.kind, publish.kind, handle.kind) == (SpanKind.SERVER, SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert request.parent is None
    assert parent(publish).span_id == context(request).span_id
    assert parent(handle).span_id == context(publish).span_id
    assert parent(handle).is_remote
    assert context(handle).trace_id == context(publish).trace_id == context(request).trace_id
    assert handle.status.status_code is StatusCode.UNSET


def test_a_message_without_traceparent_starts_a_trace_of_its_own(exporter: InMemorySpanExporter) -> None:
    with tracing.handle_span("record", {}):
        pass
    [handle] = exporter.get_finished_spans()
    assert handle.name == "handle record"
    assert handle.parent is None


def test_a_failure_marks_the_handle_span_as_an_error(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), tracing.handle_span("explode", {}):
        raise RuntimeError("raised through the span")
    with tracing.handle_span("explode", {}):
        try:
            raise ValueError("caught by the caller")
        except ValueError as error:
            tracing.record_error(error)

    raised, caught = exporter.get_finished_spans()
    for span, message in ((raised, "raised through the span"), (caught, "caught by the caller")):
        assert span.status.status_code is StatusCode.ERROR
        [event] = span.events
        assert event.name == "exception"
        assert event.attributes is not None
        assert event.attributes["exception.message"] == message


def test_spans_in_threads_are_kept_apart(exporter: InMemorySpanExporter) -> None:
    headers: dict[str, str] = {}
    with tracing.request_span("POST", "/tasks"), tracing.publish_span("tasks", headers):
        pass
    errors: list[BaseException] = []

    def handle() -> None:
        try:
            with tracing.handle_span("record", headers):
                pass
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=handle) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    publish = by_name(exporter.get_finished_spans())["publish tasks"]
    handles = [span for span in exporter.get_finished_spans() if span.name == "handle record"]
    assert len(handles) == 8
    assert all(parent(span).span_id == context(publish).span_id for span in handles)


def test_with_tracing_off_nothing_is_recorded_and_no_header_added() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    tracing.disable_tracing()

    headers = {"x-request-id": "req-1"}
    with tracing.request_span("POST", "/tasks"), tracing.publish_span("tasks", headers):
        pass
    with tracing.handle_span("record", headers):
        tracing.record_error(RuntimeError("ignored"))
    assert headers == {"x-request-id": "req-1"}
    assert exporter.get_finished_spans() == ()
    provider.shutdown()


def test_configure_tracing_with_tracing_off_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Were it to import the SDK or the exporter, this would fail.
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    tracing.configure_tracing(Settings(tracing_enabled=False))
    headers: dict[str, str] = {}
    with tracing.request_span("POST", "/tasks"), tracing.publish_span("tasks", headers):
        pass
    assert headers == {}


def test_configure_tracing_without_the_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(RuntimeError, match=r"pip install '\.\[tracing\]'"):
        tracing.configure_tracing(Settings(tracing_enabled=True))
    headers: dict[str, str] = {}
    with tracing.publish_span("tasks", headers):
        pass
    assert headers == {}


def test_configure_tracing_sets_up_the_global_provider_with_the_service_name() -> None:
    # In a process of its own: the global tracer provider can be set only once.
    script = textwrap.dedent(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        from {{ cookiecutter.project_slug }} import tracing
        from {{ cookiecutter.project_slug }}.settings import Settings

        tracing.configure_tracing(Settings(tracing_enabled=True))
        tracing.configure_tracing(Settings(tracing_enabled=True))  # a second call changes nothing
        provider = trace.get_tracer_provider()
        assert isinstance(provider, TracerProvider), provider
        assert provider.resource.attributes["service.name"] == "traced-service"
        headers: dict[str, str] = {}
        with tracing.publish_span("tasks", headers):
            pass
        assert "traceparent" in headers
        """
    )
    env = {
        **os.environ,
        "OTEL_SERVICE_NAME": "traced-service",
        # Nothing listens there: failing to send the span at exit must not fail the process, nor take long.
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
