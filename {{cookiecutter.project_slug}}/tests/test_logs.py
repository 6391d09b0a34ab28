"""Log lines carry the task and request they belong to, as text or as JSON lines."""

from __future__ import annotations

import json
import logging

import pytest

from {{ cookiecutter.project_slug }}.logs import (
    UVICORN_LOGGERS,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    log_context,
)


def record(message: str) -> logging.LogRecord:
    return logging.getLogger("test").makeRecord("test", logging.INFO, __file__, 1, message, (), None)


def test_json_lines_carry_the_task_type_attempt_and_request() -> None:
    with log_context(task_id="t-1", request_id="r-1", task_type="process_image", attempt=2):
        line = json.loads(JsonFormatter().format(record("handled")))
    assert line["message"] == "handled"
    assert line["level"] == "INFO"
    fields = (line["task_id"], line["task_type"], line["attempt"], line["request_id"])
    assert fields == ("t-1", "process_image", 2, "r-1")


def test_text_lines_carry_the_same_fields() -> None:
    with log_context(task_id="t-2", request_id="r-2", task_type="resize", attempt=1):
        line = TextFormatter().format(record("handled"))
    assert "[task=t-2 type=resize attempt=1 request=r-2] handled" in line


def test_the_time_formatted_once_a_second_is_loggings_own() -> None:
    formatter, plain = TextFormatter(), logging.Formatter()
    for created in (1_700_000_000.123, 1_700_000_000.987, 1_700_000_001.004, 1_700_003_600.5):
        line = record("tick")
        line.created, line.msecs = created, (created % 1) * 1000
        assert formatter.formatTime(line) == plain.formatTime(line)


def test_outside_a_task_the_fields_are_left_out_of_json() -> None:
    line = json.loads(JsonFormatter().format(record("idle")))
    assert "task_id" not in line
    assert "request_id" not in line


def test_in_json_mode_uvicorns_own_lines_are_json_too(capsys: pytest.CaptureFixture[str]) -> None:
    """uvicorn sets up its loggers with text handlers before the app is imported (as in the image)."""
    loggers = [logging.getLogger(name) for name in UVICORN_LOGGERS]
    saved = [(logger.handlers[:], logger.propagate, logger.level) for logger in loggers]
    root = logging.getLogger()
    root_handlers, root_level = root.handlers[:], root.level
    error_logger = logging.getLogger("uvicorn.error")
    error_level = error_logger.level
    error_logger.setLevel(logging.NOTSET)
    plain = logging.StreamHandler()
    for logger in loggers:
        logger.handlers[:] = [plain]
        logger.propagate = False
        logger.setLevel(logging.NOTSET)  # as uvicorn leaves them, whatever a server earlier in the run set
    try:
        configure_logging("INFO", "json")
        access = ("127.0.0.1:5000", "GET", "/health/live", "1.1", 200)
        logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', *access)
        logging.getLogger("uvicorn.error").info("Shutting down")
    finally:
        for logger, (handlers, propagate, level) in zip(loggers, saved, strict=True):
            logger.handlers[:] = handlers
            logger.propagate = propagate
            logger.setLevel(level)
        root.handlers[:] = root_handlers
        root.setLevel(root_level)
        error_logger.setLevel(error_level)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["logger"], line["message"]) for line in lines] == [
        ("uvicorn.access", '127.0.0.1:5000 - "GET /health/live HTTP/1.1" 200'),
        ("uvicorn.error", "Shutting down"),
    ]


def test_outside_a_task_the_attempt_is_a_dash_in_text_and_absent_from_json() -> None:
    with log_context(task_id="t-3", request_id="r-3", task_type="process_image"):
        text = TextFormatter().format(record("accepted"))
        line = json.loads(JsonFormatter().format(record("accepted")))
    assert "[task=t-3 type=process_image attempt=- request=r-3] accepted" in text
    assert "attempt" not in line
    idle = TextFormatter().format(record("idle"))
    assert "attempt=0" not in idle
    assert "attempt=-" in idle
