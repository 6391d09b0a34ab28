"""What happens to one message: run its handler, then decide to ack, retry or dead-letter.

The runner calls `Processor.process`; settlement.py turns the verdict into the broker's action.
"""
{%- set is_async = cookiecutter.consumer == "async" %}

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from prometheus_client import Histogram
from pydantic import ValidationError

from .logs import log_context
from .messages import PUBLISHED_AT_HEADER, REQUEST_ID_HEADER, InvalidMessage, decode
from .metrics import HANDLER_DURATION, QUEUE_WAIT, TASKS_IN_HAND, TASKS_PROCESSED
from .tasks import TaskRegistry
from .tracing import handle_span, record_error

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"


# One child per outcome, made once: a labels() lookup per message costs more than the increment.
PROCESSED = {outcome: TASKS_PROCESSED.labels(outcome=outcome.value) for outcome in Outcome}


@dataclass(frozen=True)
class Verdict:
    """What the broker module must do with the message: ack it, or republish it then ack it."""

    outcome: Outcome
    reason: str = ""


class Processor:
    def __init__(self, registry: TaskRegistry, max_retries: int) -> None:
        self.registry = registry
        self.max_retries = max_retries
{%- if is_async %}

    async def process(self, body: bytes, retries: int, headers: Mapping[str, str] | None = None) -> Verdict:
{%- else %}

    def process(self, body: bytes, retries: int, headers: Mapping[str, str] | None = None) -> Verdict:
{%- endif %}
        """Never raises for a bad message or a failing handler: each becomes a verdict."""
        TASKS_IN_HAND.inc()
        try:
{%- if is_async %}
            verdict = await self._run(body, retries, headers or {})
{%- else %}
            verdict = self._run(body, retries, headers or {})
{%- endif %}
        finally:
            TASKS_IN_HAND.dec()
        PROCESSED[verdict.outcome].inc()
        return verdict
{%- if is_async %}

    async def _run(self, body: bytes, retries: int, headers: Mapping[str, str]) -> Verdict:
{%- else %}

    def _run(self, body: bytes, retries: int, headers: Mapping[str, str]) -> Verdict:
{%- endif %}
        try:
            message = decode(body)
        except InvalidMessage as error:
            logger.warning("dead-lettering a malformed message: %s", error)
            return Verdict(Outcome.DEAD_LETTERED, str(error))
        context = log_context(
            task_id=message.id, request_id=headers.get(REQUEST_ID_HEADER), task_type=message.type, attempt=retries + 1
        )
        with context:
            task_type = self.registry.get(message.type)
            if task_type is None:
                logger.warning("dead-lettering a message of unknown type %r", message.type)
                return Verdict(Outcome.DEAD_LETTERED, f"unknown task type {message.type!r}")
            try:
                payload = task_type.payload_model.model_validate(message.payload)
            except ValidationError as error:
                reason = f"invalid payload for {message.type!r}: {error.error_count()} error(s)"
                logger.warning("dead-lettering: %s", reason)
                return Verdict(Outcome.DEAD_LETTERED, reason)
            if retries == 0:
                observe_queue_wait(headers)
            started = time.perf_counter()
            with handle_span(message.type, headers):
                try:
{%- if is_async %}
                    await task_type.handler(payload, message)
{%- else %}
                    task_type.handler(payload, message)
{%- endif %}
                except Exception as error:
                    record_error(error)
                    verdict = self._failed(error, retries)
                else:
                    # DEBUG: at thousands a second, success is for metrics and traces; failures are logged.
                    logger.debug("task %s succeeded (attempt %d)", message.type, retries + 1)
                    verdict = Verdict(Outcome.SUCCEEDED)
            elapsed = time.perf_counter() - started
            handler_duration(message.type, verdict.outcome).observe(elapsed)
            return verdict

    def _failed(self, error: Exception, retries: int) -> Verdict:
        reason = f"{type(error).__name__}: {error}"
        if retries < self.max_retries:
            logger.warning("handler failed, retry %d of %d: %s", retries + 1, self.max_retries, reason)
            return Verdict(Outcome.RETRIED, reason)
        logger.error("handler failed after %d retries, dead-lettering: %s", retries, reason, exc_info=error)
        return Verdict(Outcome.DEAD_LETTERED, f"failed after {retries} retries: {reason}")


@functools.cache  # task types are the registry's, so the children are few
def handler_duration(task_type: str, outcome: Outcome) -> Histogram:
    return HANDLER_DURATION.labels(type=task_type, outcome=outcome.value)


def observe_queue_wait(headers: Mapping[str, str]) -> None:
    """Time since publish, where the publisher stamped it (other programs may not)."""
    try:
        published_at = float(headers[PUBLISHED_AT_HEADER])
    except (KeyError, ValueError):
        return
    if math.isfinite(published_at):
        QUEUE_WAIT.observe(max(0.0, time.time() - published_at))
