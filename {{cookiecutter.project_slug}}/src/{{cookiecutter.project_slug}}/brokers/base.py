"""What the app needs from any broker, and what every broker's transport hands the runner."""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from pydantic import Field

from ..messages import TaskMessage


def broker_url_field(default: str) -> Any:
    """The BROKER_URL setting of every broker's settings."""
    return Field(default, description="Where the broker is; credentials belong here, in the environment only.")


def check_scheme(url: str, schemes: Mapping[str, int]) -> str:
    """`url`, if its scheme is one of the broker's (or memory://, for a first look); a clear error otherwise."""
    if urlsplit(url).scheme not in {*schemes, "memory"}:
        allowed = [scheme + "://" for scheme in schemes]
        raise ValueError(f"BROKER_URL must start with {' or '.join(allowed)} (or be memory:// for a first look)")
    return url


def text_headers(items: Iterable[tuple[str | bytes, object]]) -> dict[str, str]:
    """A message's headers as text, whatever the client hands over (bytes, str, numbers)."""
    return {
        key.decode(errors="replace") if isinstance(key, bytes) else key: (
            value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        )
        for key, value in items
        if value is not None
    }


class BrokerUnavailable(Exception):
    """The broker did not durably accept the message; nothing was promised to the caller."""


class OutcomeUnknown(BrokerUnavailable):
    """The message was sent but its confirmation did not come: the broker may have it (a 504, not a 503)."""


@dataclass(frozen=True, eq=False)
class Delivery:
    """One message as a transport received it: what the processor reads, and what the broker
    needs back to settle it (`handle`: a delivery tag, a stream entry, a record)."""

    body: bytes
    headers: Mapping[str, str]
    retries: int
    handle: Any
    # Deliveries of one lane (a partition of a topic) are handled one at a time, in order; None: any order.
    lane: Hashable | None = None
    # What the broker may want again when settling: the original headers, a delivery count, ...
    extra: Mapping[str, Any] = field(default_factory=dict)


class Publisher(Protocol):
    async def start(self) -> None:
        """Begin connecting in the background; never fails because the broker is down."""

    async def publish(self, message: TaskMessage, headers: Mapping[str, str], delay_seconds: float = 0.0) -> None:
        """Return once the broker has durably accepted the message, to be delivered once `delay_seconds`
        are over (it waits on the broker); raise BrokerUnavailable otherwise."""

    async def ping(self) -> None:
        """Ask the broker for a reply; raise BrokerUnavailable when it does not answer."""

    async def close(self) -> None: ...


class Consumer(Protocol):
    async def start(self) -> None:
        """Begin consuming in the background; keeps reconnecting until stopped."""

    def is_running(self) -> bool:
        """True while connected to the broker and subscribed."""

    async def stop(self) -> None:
        """Take no new messages, let those in hand finish (within the shutdown timeout), disconnect."""


class Backoff:
    """Exponential reconnect delays with full jitter, so a fleet does not reconnect in step."""

    def __init__(self, initial: float = 0.2, maximum: float = 5.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * 2**self._attempt)
        self._attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0
