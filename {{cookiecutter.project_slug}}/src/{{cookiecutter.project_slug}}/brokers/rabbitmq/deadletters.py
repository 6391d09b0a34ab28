"""The dead-letter tool's side of RabbitMQ, what both styles share: the dead letters are the
messages of the queue `<QUEUE_NAME>.dlq`. The tool takes them with basic.get, unacknowledged;
what it replays is published back with confirms and only then acknowledged, and what it leaves
goes back to the queue, in its place, as the channel gives it back."""

from __future__ import annotations
{%- set style = "asynchronous" if cookiecutter.consumer == "async" else "threaded" %}

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ...deadletters import DeadLetter, described
from .topology import DEAD_LETTERED_AT_HEADER, REASON_HEADER, RETRIES_HEADER, retries_of

if TYPE_CHECKING:
    from ...deadletters import DeadLetterQueue
    from ...settings import Settings

# What a dead letter carries that a replayed task must not: its retries, why and when it died.
DEAD_LETTER_ONLY = {
    RETRIES_HEADER,
    REASON_HEADER,
    DEAD_LETTERED_AT_HEADER,
    "x-death",
    *(f"x-{which}-death-{what}" for which in ("first", "last") for what in ("exchange", "queue", "reason")),
}


def open_dead_letters(settings: Settings) -> DeadLetterQueue:
    from .{{ style }}_deadletters import open_queue  # the client of this project's style

    return open_queue(settings)


def letter(body: bytes, headers: Mapping[str, Any] | None, message_id: str | None, handle: Any) -> DeadLetter:
    """A dead letter from the message's body and headers (ours, or RabbitMQ's own `x-death`)."""
    headers = headers or {}
    deaths = headers.get("x-death") or [{}]
    reason = headers.get(REASON_HEADER) or f"{deaths[0].get('reason', 'unknown')} by RabbitMQ"
    when: Any = headers.get(DEAD_LETTERED_AT_HEADER) or deaths[0].get("time")
    if isinstance(when, datetime):
        when = when.timestamp()
    fallback = message_id or "sha256:" + hashlib.sha256(body).hexdigest()[:16]
    at = float(when) if isinstance(when, int | float) else None
    return described(body, fallback, str(reason), retries_of(headers) + 1, at, handle)


def replayed_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """A dead letter's headers, as a new task's: its retries reset."""
    return {key: value for key, value in (headers or {}).items() if key not in DEAD_LETTER_ONLY}
