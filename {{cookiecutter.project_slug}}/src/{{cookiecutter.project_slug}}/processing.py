"""What happens to one message: run its handler, then decide to ack, retry or dead-letter.

Broker modules call `Processor.process` and carry out the verdict; the rules live here once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from pydantic import ValidationError

from .logs import log_context
from .messages import InvalidMessage, decode
from .metrics import TASKS_PROCESSED
from .tasks import TaskRegistry

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"


for _outcome in Outcome:
    TASKS_PROCESSED.labels(outcome=_outcome.value)


@dataclass(frozen=True)
class Verdict:
    """What the broker module must do with the message: ack it, or republish it then ack it."""

    outcome: Outcome
    reason: str = ""


class Processor:
    def __init__(self, registry: TaskRegistry, max_retries: int) -> None:
        self.registry = registry
        self.max_retries = max_retries

    {% if cookiecutter.consumer == "async" %}async {% endif %}def process(self, body: bytes, retries: int, request_id: str | None = None) -> Verdict:
        """Never raises for a bad message or a failing handler: each becomes a verdict."""
        verdict = {% if cookiecutter.consumer == "async" %}await {% endif %}self._run(body, retries, request_id)
        TASKS_PROCESSED.labels(outcome=verdict.outcome.value).inc()
        return verdict

    {% if cookiecutter.consumer == "async" %}async {% endif %}def _run(self, body: bytes, retries: int, request_id: str | None) -> Verdict:
        try:
            message = decode(body)
        except InvalidMessage as error:
            logger.warning("dead-lettering a malformed message: %s", error)
            return Verdict(Outcome.DEAD_LETTERED, str(error))
        with log_context(task_id=message.id, request_id=request_id):
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
            try:
                {% if cookiecutter.consumer == "async" %}await {% endif %}task_type.handler(payload, message)
            except Exception as error:
                return self._failed(error, retries)
            logger.info("task %s succeeded (attempt %d)", message.type, retries + 1)
            return Verdict(Outcome.SUCCEEDED)

    def _failed(self, error: Exception, retries: int) -> Verdict:
        reason = f"{type(error).__name__}: {error}"
        if retries < self.max_retries:
            logger.warning("handler failed, retry %d of %d: %s", retries + 1, self.max_retries, reason)
            return Verdict(Outcome.RETRIED, reason)
        logger.error("handler failed after %d retries, dead-lettering: %s", retries, reason, exc_info=error)
        return Verdict(Outcome.DEAD_LETTERED, f"failed after {retries} retries: {reason}")
