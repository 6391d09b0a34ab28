"""The wire format: one UTF-8 JSON object per message, the same for every broker."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONTENT_TYPE = "application/json"
# Headers our publisher adds to every message, in the broker's own kind of header; all optional.
REQUEST_ID_HEADER = "x-request-id"
PUBLISHED_AT_HEADER = "x-published-at"  # Unix time in seconds, as text


class InvalidMessage(ValueError):
    """The bytes on the wire are not a task message; such a message is dead-lettered at once."""


class TaskMessage(BaseModel):
    """A task as it travels through the broker. Unknown fields are ignored, so producers may add some."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any]


def encode(message: TaskMessage) -> bytes:
    return message.model_dump_json().encode("utf-8")


def decode(body: bytes) -> TaskMessage:
    try:
        return TaskMessage.model_validate_json(body)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "message"
        raise InvalidMessage(f"not a task message: {where}: {first['msg']}") from None
