"""The in-memory queue for the asyncio runner: its transport's calls, awaitable. A fetch waits in
a worker thread, so the event loop is never blocked."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ..base import Delivery
from . import MemoryTransport


class BrokerTransport:
    """MemoryTransport's calls, as the asyncio runner awaits them."""

    errors: tuple[type[BaseException], ...] = ()
    finish_unstarted = True

    def __init__(self, transport: MemoryTransport) -> None:
        self._transport = transport
        self.capacity = transport.capacity

    async def open(self) -> str:
        return self._transport.open()

    async def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        return await asyncio.to_thread(self._transport.fetch, max_count, wait_seconds)

    async def unsubscribe(self) -> int:
        return self._transport.unsubscribe()

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._transport.ack(deliveries)

    async def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        self._transport.retry(delivery, delay_seconds)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._transport.dead_letter(delivery, reason)

    async def close(self) -> None:
        self._transport.close()
