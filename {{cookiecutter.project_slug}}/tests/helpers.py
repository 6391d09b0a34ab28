"""What the unit and integration tests share: a thread-safe record of the handlers that ran,
and the links between spans."""

from __future__ import annotations

import threading
import time

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext


class Recorder:
    """Thread-safe record of the task ids handlers started and finished; tests wait on it."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.started: list[str] = []
        self.started_at: list[float] = []  # time.monotonic() of each start, in the same order
        self.finished: list[str] = []
        self.most_at_once = 0  # the most handlers running at the same time

    def start(self, task_id: str) -> None:
        with self._changed:
            self.started.append(task_id)
            self.started_at.append(time.monotonic())
            self.most_at_once = max(self.most_at_once, len(self.started) - len(self.finished))
            self._changed.notify_all()

    def finish(self, task_id: str) -> None:
        with self._changed:
            self.finished.append(task_id)
            self._changed.notify_all()

    def wait_started(self, count: int, timeout: float = 15.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.started) >= count, timeout)

    def starts_of(self, task_id: str) -> list[float]:
        with self._changed:
            return [at for started, at in zip(self.started, self.started_at, strict=True) if started == task_id]

    def wait_finished(self, count: int, timeout: float = 15.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.finished) >= count, timeout)


def context(span: ReadableSpan) -> SpanContext:
    span_context = span.get_span_context()
    assert span_context is not None
    return span_context


def parent(span: ReadableSpan) -> SpanContext:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent
