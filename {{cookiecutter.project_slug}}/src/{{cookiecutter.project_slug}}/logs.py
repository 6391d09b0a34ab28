"""Log lines that carry the task id and request id, from the HTTP request to the handler."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

# The task and request a log line belongs to: (task id, task type, attempt, request id), "-" for
# none; attempts count from 1, "-" when no task is being handled (an API request, start-up). One
# variable, a plain tuple: a task's handling sets and resets it once, and each set costs.
LogContext = tuple[str, str, int | str, str]
NO_TASK: LogContext = ("-", "-", "-", "-")
context_var: ContextVar[LogContext] = ContextVar("log_context", default=NO_TASK)

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
    record.task_id, record.task_type, record.attempt, record.request_id = context_var.get()
    return record


logging.setLogRecordFactory(_record_with_context)


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, with the date and time formatted once a second, not once a line."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)
        # (second, its text), replaced whole: handler threads may read it while another replaces it.
        self._last: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{self.date_and_second(record, self.default_time_format)},{int(record.msecs):03d}"

    def date_and_second(self, record: logging.LogRecord, datefmt: str) -> str:
        second = int(record.created)
        last_second, text = self._last
        if second != last_second:
            text = time.strftime(datefmt, self.converter(second))
            self._last = (second, text)
        return text


class JsonFormatter(TextFormatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": f"{self.date_and_second(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}",
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
    # Where each call came from (a walk up the stack, per line) is in neither format: the logging
    # HOWTO's "Optimization" section turns it off so. Remove this if a format uses %(lineno)d.
    logging._srcfile = None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
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
    token = context_var.set((task_id, task_type, attempt if attempt > 0 else "-", request_id or "-"))
    try:
        yield
    finally:
        context_var.reset(token)


def current_request_id() -> str:
    return context_var.get()[3]
