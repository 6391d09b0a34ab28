"""Log lines that carry the task id and request id, from the HTTP request to the handler."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

task_id_var: ContextVar[str] = ContextVar("task_id", default="-")
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [task=%(task_id)s request=%(request_id)s] %(message)s"


class ContextFilter(logging.Filter):
    """Stamps each record with the ids of the task and request being worked on."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.task_id = task_id_var.get()
        record.request_id = request_id_var.get()
        return True


def configure_logging(level: str, quiet: tuple[str, ...] = ()) -> None:
    """One handler on the root logger; `quiet` loggers (a chatty client library's) log warnings only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in quiet:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


@contextmanager
def log_context(*, task_id: str, request_id: str | None = None) -> Iterator[None]:
    task_token = task_id_var.set(task_id)
    request_token = request_id_var.set(request_id or "-")
    try:
        yield
    finally:
        request_id_var.reset(request_token)
        task_id_var.reset(task_token)
