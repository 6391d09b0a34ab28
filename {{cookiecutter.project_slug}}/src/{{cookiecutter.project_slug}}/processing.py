"""What happens to one message: run its handler, then decide to ack, retry or dead-letter.

The runner calls `Processor.process`; settlement.py turns the verdict into the broker's action.
Every message passes through here, thousands a second: the path of a good message is kept lean
(one validation pass, one context variable, metric children made once, no span unless tracing).
"""
{%- set is_async = cookiecutter.consumer == "async" %}

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram
from pydantic import BaseModel, ValidationError

from . import tracing
from .logs import LogContext, context_var
from .messages import PUBLISHED_AT_HEADER, REQUEST_ID_HEADER, InvalidMessage, TaskMessage, decode
from .metrics import HANDLER_DURATION, QUEUE_WAIT, TASKS_PROCESSED
from .tasks import Reject, Retry, TaskRegistry, TaskType

if TYPE_CHECKING:
    from .settings import Settings
{%- if cookiecutter.task_store != "none" %}
    from .store.writer import RecordWriter
{%- endif %}

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"


# One child per outcome, made once: a labels() lookup per message costs more than the increment.
PROCESSED = {outcome: TASKS_PROCESSED.labels(outcome=outcome.value) for outcome in Outcome}


RETRY_JITTER = 0.05  # each wait is within ±5 % of its nominal value (brokers that round add theirs)


@dataclass(frozen=True)
class Verdict:
    """What the broker must do with the message: ack it, retry it after `delay_seconds`, or
    dead-letter it with `reason`. `result` is what a handler that succeeded returned."""

    outcome: Outcome
    reason: str = ""
    delay_seconds: float = 0.0
    result: Any = None


@dataclass(frozen=True)
class RetryDelays:
    """The wait before each retry: `first`, doubled for each next one, never over `longest`, with
    a jitter so that messages that failed together do not all come back at once."""

    first: float = 1.0
    longest: float = 300.0

    def before(self, retry: int) -> float:
        """Seconds before retry number `retry` (1, 2, ...)."""
        nominal = min(self.longest, self.first * 2.0 ** (retry - 1))
        return nominal * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)


SUCCEEDED = Verdict(Outcome.SUCCEEDED)  # one for all: most verdicts are this one


class Processor:
{%- if cookiecutter.task_store == "none" %}
    def __init__(self, registry: TaskRegistry, max_retries: int, delays: RetryDelays | None = None) -> None:
{%- else %}
    def __init__(
        self,
        registry: TaskRegistry,
        max_retries: int,
        delays: RetryDelays | None = None,
        records: RecordWriter | None = None,
    ) -> None:
        self.records = records  # where each attempt's start and end are written, off this path
{%- endif %}
        self.registry = registry
        self.max_retries = max_retries
        self.delays = delays or RetryDelays()
        self._durations: dict[tuple[str, Outcome], Histogram] = {}  # children by task type and outcome
{%- if is_async %}

    async def process(self, body: bytes, retries: int, headers: Mapping[str, str] | None = None) -> Verdict:
{%- else %}

    def process(self, body: bytes, retries: int, headers: Mapping[str, str] | None = None) -> Verdict:
{%- endif %}
        """Never raises for a bad message or a failing handler: each becomes a verdict."""
        headers = headers or {}
        parsed = self.registry.parse(body)
        if parsed is None:
            verdict = self._refuse(body, retries, headers)
        else:
            task_type, message, payload = parsed
            token = context_var.set(log_fields(message, retries, headers))
            try:
                if retries == 0:
                    observe_queue_wait(headers)
{%- if cookiecutter.task_store != "none" %}
                if self.records is not None:
                    self.records.started(message.id, retries + 1)
{%- endif %}
                started = time.perf_counter()
                if tracing.active():
{%- if is_async %}
                    verdict = await self._traced(task_type, message, payload, retries, headers)
                else:
                    verdict = await self._call(task_type, message, payload, retries)
{%- else %}
                    verdict = self._traced(task_type, message, payload, retries, headers)
                else:
                    verdict = self._call(task_type, message, payload, retries)
{%- endif %}
                self._duration(message.type, verdict.outcome).observe(time.perf_counter() - started)
{%- if cookiecutter.task_store != "none" %}
                if self.records is not None:
                    self.records.finished(message.id, retries + 1, verdict)
{%- endif %}
            finally:
                context_var.reset(token)
        PROCESSED[verdict.outcome].inc()
        return verdict
{%- if is_async %}

    async def _traced(
{%- else %}

    def _traced(
{%- endif %}
        self,
        task_type: TaskType[Any],
        message: TaskMessage,
        payload: BaseModel,
        retries: int,
        headers: Mapping[str, str],
    ) -> Verdict:
        with tracing.handle_span(message.type, headers):
{%- if is_async %}
            return await self._call(task_type, message, payload, retries)

    async def _call(self, task_type: TaskType[Any], message: TaskMessage, payload: BaseModel, retries: int) -> Verdict:
        try:
            result = await task_type.handler(payload, message)
{%- else %}
            return self._call(task_type, message, payload, retries)

    def _call(self, task_type: TaskType[Any], message: TaskMessage, payload: BaseModel, retries: int) -> Verdict:
        try:
            result = task_type.handler(payload, message)
{%- endif %}
        except Retry as asked:
            tracing.record_error(asked)
            return self._retry("handler asked for a retry", asked.reason, retries, asked.delay_seconds, None)
        except Reject as rejected:
            tracing.record_error(rejected)
            logger.warning("handler rejected the task, dead-lettering: %s", rejected.reason)
            return Verdict(Outcome.DEAD_LETTERED, f"rejected: {rejected.reason}")
        except Exception as error:
            tracing.record_error(error)
            reason = f"{type(error).__name__}: {error}"
            return self._retry("handler failed", reason, retries, self.delays.before(retries + 1), error)
        # DEBUG: at thousands a second, success is for metrics and traces; failures are logged.
        logger.debug("task %s succeeded (attempt %d)", message.type, retries + 1)
        return SUCCEEDED if result is None else Verdict(Outcome.SUCCEEDED, result=result)

    def _retry(self, what: str, reason: str, retries: int, delay: float, error: Exception | None) -> Verdict:
        """Retry after `delay` seconds, or dead-letter once MAX_RETRIES are spent."""
        if retries < self.max_retries:
            logger.warning("%s, retry %d of %d in %.1f s: %s", what, retries + 1, self.max_retries, delay, reason)
            return Verdict(Outcome.RETRIED, reason, delay)
        logger.error("%s after %d retries, dead-lettering: %s", what, retries, reason, exc_info=error)
        return Verdict(Outcome.DEAD_LETTERED, f"failed after {retries} retries: {reason}")

    def _refuse(self, body: bytes, retries: int, headers: Mapping[str, str]) -> Verdict:
        """A message that is not a valid task of a registered type: say what is wrong with it, once."""
        try:
            message = decode(body)
        except InvalidMessage as error:
            logger.warning("dead-lettering a malformed message: %s", error)
            return Verdict(Outcome.DEAD_LETTERED, str(error))
        token = context_var.set(log_fields(message, retries, headers))
        try:
            verdict = self._refusal(message)
{%- if cookiecutter.task_store != "none" %}
            if self.records is not None:
                self.records.finished(message.id, retries + 1, verdict)
{%- endif %}
        finally:
            context_var.reset(token)
        return verdict

    def _refusal(self, message: TaskMessage) -> Verdict:
        """Why a message in the task shape is refused: its type is unknown, or its payload invalid."""
        task_type = self.registry.get(message.type)
        if task_type is None:
            logger.warning("dead-lettering a message of unknown type %r", message.type)
            return Verdict(Outcome.DEAD_LETTERED, f"unknown task type {message.type!r}")
        try:
            task_type.payload_model.model_validate(message.payload)
        except ValidationError as error:
            reason = f"invalid payload for {message.type!r}: {error.error_count()} error(s)"
            logger.warning("dead-lettering: %s", reason)
            return Verdict(Outcome.DEAD_LETTERED, reason)
        # Valid after all (the one-pass model and these two disagree): refuse rather than guess.
        logger.error("dead-lettering a message that only the one-pass validation refused")
        return Verdict(Outcome.DEAD_LETTERED, "refused by the task type's message model")

    def _duration(self, task_type: str, outcome: Outcome) -> Histogram:
        child = self._durations.get((task_type, outcome))
        if child is None:  # once per task type and outcome: task types are the registry's, so few
            child = self._durations[task_type, outcome] = HANDLER_DURATION.labels(type=task_type, outcome=outcome.value)
        return child
{%- if cookiecutter.task_store == "none" %}


def processor_for(settings: Settings, registry: TaskRegistry) -> Processor:
    """The Processor configured as the settings say."""
    delays = RetryDelays(settings.retry_delay_seconds, settings.retry_delay_max_seconds)
    return Processor(registry, settings.max_retries, delays)
{%- else %}


def processor_for(settings: Settings, registry: TaskRegistry, records: RecordWriter | None = None) -> Processor:
    """The Processor configured as the settings say, writing task records to `records` where given."""
    delays = RetryDelays(settings.retry_delay_seconds, settings.retry_delay_max_seconds)
    return Processor(registry, settings.max_retries, delays, records)
{%- endif %}


def log_fields(message: TaskMessage, retries: int, headers: Mapping[str, str]) -> LogContext:
    """What each log line of one attempt at `message` says of it."""
    return (message.id, message.type, retries + 1, headers.get(REQUEST_ID_HEADER) or "-")


def observe_queue_wait(headers: Mapping[str, str]) -> None:
    """Time since publish, where the publisher stamped it (other programs may not)."""
    try:
        published_at = float(headers[PUBLISHED_AT_HEADER])
    except (KeyError, ValueError):
        return
    if math.isfinite(published_at):
        QUEUE_WAIT.observe(max(0.0, time.time() - published_at))
