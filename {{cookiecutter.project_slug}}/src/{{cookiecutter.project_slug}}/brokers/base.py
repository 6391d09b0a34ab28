"""What the app needs from any broker: a publisher and a consumer, both driven from asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterable, Mapping
from typing import Protocol

from ..messages import TaskMessage


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


class Publisher(Protocol):
    async def start(self) -> None:
        """Begin connecting in the background; never fails because the broker is down."""

    async def publish(self, message: TaskMessage, headers: Mapping[str, str]) -> None:
        """Return once the broker has durably accepted the message; raise BrokerUnavailable otherwise."""

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


async def sleep_unless_stopping(stopping: asyncio.Event, delay: float) -> None:
    """Sleep for `delay` seconds, or less if `stopping` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), delay)
