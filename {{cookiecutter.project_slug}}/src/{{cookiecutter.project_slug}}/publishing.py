"""Publish a request's task and turn the broker's answer into HTTP: 503 when the broker certainly
did not take it, 504 when it was sent and not confirmed in time (the broker may have it)."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import HTTPException

from .brokers import BrokerUnavailable, OutcomeUnknown, Publisher
from .logs import current_request_id
from .messages import PUBLISHED_AT_HEADER, REQUEST_ID_HEADER, TaskMessage
from .metrics import PUBLISH_FAILURES, TASKS_PUBLISHED
from .settings import Settings
from .tracing import publish_span

logger = logging.getLogger(__name__)

NOT_ACCEPTED = "broker unavailable, task not accepted; retry later"
{%- if cookiecutter.task_store == "none" %}
OUTCOME_UNKNOWN = "the broker did not confirm the task in time: outcome unknown, the task may run"
{%- else %}
OUTCOME_UNKNOWN = (
    "the broker did not confirm the task in time: outcome unknown, the task may run; "
    "retry with the same Idempotency-Key"
)
{%- endif %}


class PublishFailed(HTTPException):
    """A 503: the broker certainly did not take the message. `outcome_unknown`, a 504: it was sent
    and its confirmation did not come in time, so the broker may have it."""

    def __init__(self, outcome_unknown: bool) -> None:
        if outcome_unknown:
            super().__init__(status_code=504, detail=OUTCOME_UNKNOWN)
        else:
            super().__init__(status_code=503, detail=NOT_ACCEPTED)
        self.outcome_unknown = outcome_unknown


async def publish(message: TaskMessage, delay_seconds: float, settings: Settings, publisher: Publisher) -> None:
    """Return once the broker has durably accepted the message; PublishFailed otherwise."""
    request_id = current_request_id()
    # A delayed task's time in the queue counts from when it is due, not from now.
    headers = {REQUEST_ID_HEADER: request_id, PUBLISHED_AT_HEADER: f"{time.time() + delay_seconds:.6f}"}
    try:
        with publish_span(settings.queue_name, headers):
            publishing = publisher.publish(message, headers, delay_seconds)
            await asyncio.wait_for(publishing, timeout=settings.publish_timeout_seconds)
    except (BrokerUnavailable, TimeoutError) as error:
        # The publisher knows whether it wrote the message; a publish still going at the deadline may have.
        unknown = isinstance(error, (OutcomeUnknown, TimeoutError))
        reason = "timeout" if unknown else "unavailable"
        PUBLISH_FAILURES.labels(reason=reason).inc()
        logger.warning("task not accepted (%s): %s", reason, error or "no answer in time")
        raise PublishFailed(outcome_unknown=unknown) from None
    TASKS_PUBLISHED.inc()
    logger.info("task %s accepted", message.type)
