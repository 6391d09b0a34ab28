"""What both RabbitMQ styles share: the queues and their arguments, and the headers that count
retries and say why a message was dead-lettered."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ...messages import CONTENT_TYPE

if TYPE_CHECKING:
    from ...settings import Settings

RETRIES_HEADER = "x-retries"
REASON_HEADER = "x-dead-letter-reason"


def queue_arguments(settings: Settings) -> dict[str, Any]:
    """The task queue's: a rejected message goes to the dead-letter queue."""
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": settings.dead_letter_queue}


def retries_of(headers: Mapping[str, Any] | None) -> int:
    """How often this message was retried; a missing or mangled header counts as none."""
    value = (headers or {}).get(RETRIES_HEADER, 0)
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def retried_headers(headers: Mapping[str, Any] | None, retries: int) -> dict[str, Any]:
    return {**(headers or {}), RETRIES_HEADER: retries + 1}


def copied_properties(original: Any, headers: Mapping[str, Any]) -> dict[str, Any]:
    """The properties of a republished message, whichever client's: the original's, with new headers."""
    return {
        "content_type": original.content_type or CONTENT_TYPE,
        "message_id": original.message_id,
        "type": original.type,
        "timestamp": original.timestamp,
        "headers": dict(headers),
    }


def dead_letter_headers(headers: Mapping[str, Any] | None, reason: str) -> dict[str, Any]:
    return {**(headers or {}), REASON_HEADER: reason}
