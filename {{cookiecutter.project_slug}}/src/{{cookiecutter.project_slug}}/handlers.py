"""Task handlers. Add one: a payload model and a function registered under its type name."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, HttpUrl

from .messages import TaskMessage
from .tasks import TaskRegistry

logger = logging.getLogger(__name__)

registry = TaskRegistry()


class ProcessImagePayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_url: HttpUrl


@registry.task("process_image", ProcessImagePayload)
{%- if cookiecutter.consumer == "async" %}
async def process_image(payload: ProcessImagePayload, message: TaskMessage) -> None:
{%- else %}
def process_image(payload: ProcessImagePayload, message: TaskMessage) -> None:
{%- endif %}
    """The example: validates and logs. A real handler must be idempotent; `message.id` is the key."""
    logger.info("processing image %s", payload.image_url)
