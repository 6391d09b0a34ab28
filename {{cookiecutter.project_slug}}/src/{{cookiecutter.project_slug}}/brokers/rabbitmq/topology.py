"""What both RabbitMQ styles share: the queues and their arguments, and the headers that count
retries and say why a message was dead-lettered.

A retry or a delayed task waits in a wait queue: durable, with a message TTL, dead-lettering into
the task queue when it expires. Every message of one wait queue waits as long, so the one at its
head always expires first and nothing waits behind a longer wait: a delay goes to the queue of
the shortest TTL that is no shorter (tiers 1.2 x apart, from 100 ms: up to 20 % longer), declared
on each connection when first used.

Every queue is of QUEUE_TYPE. A quorum queue dead-letters at least once (RabbitMQ 3.10+: the
message leaves the queue only once the target confirmed it, which needs `x-overflow:
reject-publish`), so a retry or a delay that expires, or a rejected task, is not lost on its
way; message TTL on quorum queues also needs 3.10."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ...messages import CONTENT_TYPE

if TYPE_CHECKING:
    from ...settings import Settings

# RabbitMQ tells a connection that it blocks publishing (a resource alarm) only once the connection
# publishes. A ping publishes this empty message, which no queue takes (none is named ""), so that
# /health/ready and the next publishes learn of an alarm before a task is written into it.
PROBE_ROUTING_KEY = ""
# Why a publish is refused while RabbitMQ blocks the connection, in either style.
BLOCKED = "RabbitMQ has blocked publishing (a memory or disk alarm): task not written"
# After a nack the publisher connects again, in either style. RabbitMQ 3.10 nacks every publish of a
# channel whose first publish to a quorum queue named a leader that had just died (the queue's record
# still names it for a moment after a failover); only a new channel asks for the current leader.
NACKED = "RabbitMQ refused a publish (nack); connecting again, for a channel that finds the queue's leader"

RETRIES_HEADER = "x-retries"
REASON_HEADER = "x-dead-letter-reason"
DEAD_LETTERED_AT_HEADER = "x-dead-lettered-at"  # Unix time, in seconds


def typed(settings: Settings, dead_letters_to: str | None = None) -> dict[str, Any]:
    """The arguments every queue has: its type and, where it dead-letters, how."""
    arguments: dict[str, Any] = {"x-queue-type": settings.queue_type}
    if dead_letters_to is not None:
        arguments |= {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead_letters_to}
        if settings.queue_type == "quorum":
            arguments |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    return arguments


def queue_arguments(settings: Settings) -> dict[str, Any]:
    """The task queue's: a rejected message goes to the dead-letter queue."""
    return typed(settings, dead_letters_to=settings.dead_letter_queue)


def dead_letter_queue_arguments(settings: Settings) -> dict[str, Any]:
    return typed(settings)


PRECONDITION_FAILED = 406


def mismatch_hint(settings: Settings, reply_code: int, reply_text: str) -> str | None:
    """What to do when RabbitMQ refused a declare because the queue exists with other arguments."""
    if reply_code != PRECONDITION_FAILED:
        return None
    hint = (
        "set QUEUE_TYPE=classic, or migrate the queue (README: Running on a cluster)"
        if "x-queue-type" in reply_text
        else "delete the queue or declare it as the service does (README: Messages on the wire)"
    )
    return f"RabbitMQ refused to declare the queues as QUEUE_TYPE={settings.queue_type} says ({reply_text}): {hint}"


WAIT_TIER_FIRST_MS = 100
WAIT_TIER_RATIO = 1.2


def wait_tier_ms(delay_seconds: float) -> int | None:
    """The TTL of the wait queue for `delay_seconds`: the first tier that is no shorter; None: no wait."""
    delay_ms = delay_seconds * 1000
    if delay_ms < 1:
        return None
    tier = max(0, math.ceil(math.log(delay_ms / WAIT_TIER_FIRST_MS, WAIT_TIER_RATIO) - 1e-9))
    return round(WAIT_TIER_FIRST_MS * WAIT_TIER_RATIO**tier)


def wait_queue(settings: Settings, ttl_ms: int) -> str:
    return f"{settings.queue_name}.wait.{ttl_ms}ms"


def wait_queue_arguments(settings: Settings, ttl_ms: int) -> dict[str, Any]:
    """A wait queue's: its messages expire after `ttl_ms` into the task queue."""
    return {"x-message-ttl": ttl_ms, **typed(settings, dead_letters_to=settings.queue_name)}


class WaitQueues:
    """The wait queues of one connection: where a message that is to wait goes, and whether the
    queue must be declared first (once per connection: it may have been deleted meanwhile)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._declared: set[str] = set()

    def route(self, delay_seconds: float) -> tuple[str, dict[str, Any] | None]:
        """The queue, and the arguments to declare it with first (None: declared, or the task queue)."""
        ttl_ms = wait_tier_ms(delay_seconds)
        if ttl_ms is None:
            return self._settings.queue_name, None
        name = wait_queue(self._settings, ttl_ms)
        return name, None if name in self._declared else wait_queue_arguments(self._settings, ttl_ms)

    def declared(self, name: str) -> None:
        self._declared.add(name)

    def clear(self) -> None:
        """A new connection: declare each again on first use."""
        self._declared.clear()


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
    return {**(headers or {}), REASON_HEADER: reason, DEAD_LETTERED_AT_HEADER: int(time.time())}
