"""Optional OpenTelemetry tracing: a span for the HTTP request, the publish, and the handling,
linked across the broker by the W3C `traceparent` carried in the message's headers.

Off unless TRACING_ENABLED=true: then every function here returns at once and nothing of
OpenTelemetry's SDK is imported. Turning it on needs the `tracing` extra installed; spans go by
OTLP/HTTP wherever the standard OTEL_EXPORTER_OTLP_* variables say (http://localhost:4318 unless
told), named after OTEL_SERVICE_NAME or the package.

OpenTelemetry keeps the current span in a context variable, so each asyncio task and each handler
thread has its own; the functions here are safe from the event loop, tasks and threads alike.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .brokers import MESSAGING_SYSTEM
from .settings import Settings

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer, TracerProvider

PACKAGE = __name__.partition(".")[0]
INSTALL_HINT = "pip install '.[tracing]'"

_tracer: Tracer | None = None  # None while tracing is off
_exporting_provider: TracerProvider | None = None  # what configure_tracing built: one per process
_configure_lock = threading.Lock()


def configure_tracing(settings: Settings) -> None:
    """Set up the tracer provider and exporter, once per process, if tracing is on."""
    if not settings.tracing_enabled:
        return
    global _exporting_provider
    with _configure_lock:
        if _exporting_provider is None:
            try:
                from opentelemetry import trace
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
                from opentelemetry.sdk.resources import SERVICE_NAME, Resource
                from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
                from opentelemetry.sdk.trace.export import BatchSpanProcessor
            except ImportError as error:
                raise RuntimeError(
                    f"TRACING_ENABLED=true needs OpenTelemetry's SDK and OTLP exporter: {INSTALL_HINT} ({error})"
                ) from error
            resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or PACKAGE})
            provider = SdkTracerProvider(resource=resource)  # flushes and shuts down at exit
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            trace.set_tracer_provider(provider)
            _exporting_provider = provider
        use_tracer_provider(_exporting_provider)


def use_tracer_provider(provider: TracerProvider) -> None:
    """Turn tracing on with this provider, not the global one: tests pass one with an in-memory exporter."""
    global _tracer
    _tracer = provider.get_tracer(__name__)


def disable_tracing() -> None:
    """Turn tracing off again; the provider is left as it is, for its owner to shut down."""
    global _tracer
    _tracer = None


def active() -> bool:
    """Whether spans are made: checked before entering one, which costs even when tracing is off."""
    return _tracer is not None


@contextmanager
def request_span(method: str, path: str) -> Iterator[None]:
    """A SERVER span for one HTTP request, current while the app handles it."""
    tracer = _tracer
    if tracer is None:
        yield
        return
    from opentelemetry import trace

    if trace.get_current_span().get_span_context().is_valid:
        # Already traced: FastAPI's own instrumentation opens a server span for each request when a
        # global tracer provider is set (configure_tracing sets one). A second would only repeat it.
        yield
        return
    attributes = {"http.request.method": method, "url.path": path}
    with tracer.start_as_current_span(f"{method} {path}", kind=trace.SpanKind.SERVER, attributes=attributes):
        yield


@contextmanager
def publish_span(queue_name: str, headers: MutableMapping[str, str]) -> Iterator[None]:
    """A PRODUCER span for one publish, a child of the current span; writes its W3C `traceparent`
    (and `tracestate`, if any) into `headers`, so the message carries it to the consumer."""
    tracer = _tracer
    if tracer is None:
        yield
        return
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    attributes = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "send",
        "messaging.destination.name": queue_name,
    }
    with tracer.start_as_current_span(f"publish {queue_name}", kind=SpanKind.PRODUCER, attributes=attributes):
        TraceContextTextMapPropagator().inject(headers)
        yield


@contextmanager
def handle_span(task_type: str, headers: Mapping[str, str]) -> Iterator[None]:
    """A CONSUMER span for one handler run, a child of the publish span named by the message's
    `traceparent` (a new trace if it has none). An exception out of the block marks it failed;
    for one the caller catches itself, call `record_error` inside the block."""
    tracer = _tracer
    if tracer is None:
        yield
        return
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(headers)
    attributes = {"messaging.system": MESSAGING_SYSTEM, "messaging.operation.type": "process", "task.type": task_type}
    with tracer.start_as_current_span(
        f"handle {task_type}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ):
        yield


def record_error(error: BaseException) -> None:
    """Mark the current span (inside `handle_span`: the handling) as failed by this exception."""
    if _tracer is None:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    span.record_exception(error)
    span.set_status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}")
