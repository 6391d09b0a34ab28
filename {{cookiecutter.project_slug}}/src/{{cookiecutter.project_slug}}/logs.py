"""Log lines that carry the task id and request id, from the HTTP request to the handler."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

task_id_var: ContextVar[str] = ContextVar("task_id", default="-")
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
task_type_var: ContextVar[str] = ContextVar("task_type", default="-")
attempt_var: ContextVar[int] = ContextVar("attempt", default=0)

TEXT_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s "
    "[task=%(task_id)s type=%(task_type)s attempt=%(attempt)s request=%(request_id)s] %(message)s"
)


# The loggers uvicorn configures before it imports the app; "uvicorn.error" logs through "uvicorn".
UVICORN_LOGGERS = ("uvicorn", "uvicorn.access")

_make_record = logging.getLogRecordFactory()


def _record_with_context(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Every record, whichever handler gets it, carries the task and request being worked on."""
    record = _make_record(*args, **kwargs)
    record.task_id = task_id_var.get()
    record.task_type = task_type_var.get()
    # Attempts count from 1; 0 means no task is being handled (an API request, start-up): "-".
    attempt = attempt_var.get()
    record.attempt = attempt if attempt > 0 else "-"
    record.request_id = request_id_var.get()
    return record


logging.setLogRecordFactory(_record_with_context)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in ("task_id", "task_type", "attempt", "request_id"):
            value = getattr(record, field, None)
            if value not in (None, "-"):
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text", quiet: tuple[str, ...] = ()) -> None:
    """One handler on the root logger, text for terminals or JSON lines for containers;
    `quiet` loggers (a client library's, whose connection errors the service reports itself, a
    line a minute at most) say nothing below DEBUG."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.CRITICAL)
    if log_format == "json":
        # uvicorn gives its own loggers handlers of their own, in its text format: in JSON mode
        # they go through the root handler too, so that every line a container writes is JSON.
        for name in UVICORN_LOGGERS:
            server_logger = logging.getLogger(name)
            server_logger.handlers.clear()
            server_logger.propagate = True


@contextmanager
def log_context(
    *, task_id: str, request_id: str | None = None, task_type: str = "-", attempt: int = 0
) -> Iterator[None]:
    task_token = task_id_var.set(task_id)
    request_token = request_id_var.set(request_id or "-")
    type_token = task_type_var.set(task_type)
    attempt_token = attempt_var.set(attempt)
    try:
        yield
    finally:
        attempt_var.reset(attempt_token)
        task_type_var.reset(type_token)
        request_id_var.reset(request_token)
        task_id_var.reset(task_token)
