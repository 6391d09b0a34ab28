"""In-memory doubles of the broker, for fast unit tests. Integration tests use the real broker."""

from __future__ import annotations
{%- set is_async = cookiecutter.consumer == "async" %}

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from {{ cookiecutter.project_slug }}.brokers import BrokerUnavailable, OutcomeUnknown
from {{ cookiecutter.project_slug }}.messages import TaskMessage, encode
from {{ cookiecutter.project_slug }}.processing import Outcome, Processor, Verdict


@dataclass
class Envelope:
    body: bytes
    headers: dict[str, str]
    retries: int = 0


@dataclass
class InMemoryBroker:
    """A Publisher that keeps messages in a list, and a drain that applies the consumer's rules."""

    available: bool = True
    hang: bool = False
    unconfirmed: bool = False  # a publish is written, and then the connection drops before the confirm
    queue: deque[Envelope] = field(default_factory=deque)
    dead_letters: list[tuple[Envelope, str]] = field(default_factory=list)
    published: list[TaskMessage] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)  # the delay_seconds of each published message
    started: bool = False
    closed: bool = False

    async def start(self) -> None:
        self.started = True

    async def publish(self, message: TaskMessage, headers: Mapping[str, str], delay_seconds: float = 0.0) -> None:
        await self.ping()
        self.published.append(message)
        self.delays.append(delay_seconds)
        self.queue.append(Envelope(encode(message), dict(headers)))
        if self.unconfirmed:
            raise OutcomeUnknown("in-memory broker: the connection dropped before the confirm")

    async def ping(self) -> None:
        if self.hang:
            await asyncio.Event().wait()  # a broker that never answers
        if not self.available:
            raise BrokerUnavailable("in-memory broker is down")

    async def close(self) -> None:
        self.closed = True

    def put_raw(self, body: bytes) -> None:
        """A message from another program: any bytes at all."""
        self.queue.append(Envelope(body, {}))
{%- if is_async %}

    async def drain(self, processor: Processor) -> list[Outcome]:
{%- else %}

    def drain(self, processor: Processor) -> list[Outcome]:
{%- endif %}
        """Process until the queue is empty; retried messages go to the back, as on the real broker."""
        outcomes = []
        while self.queue:
            envelope = self.queue.popleft()
{%- if is_async %}
            verdict = await processor.process(envelope.body, envelope.retries, envelope.headers)
{%- else %}
            verdict = processor.process(envelope.body, envelope.retries, envelope.headers)
{%- endif %}
            outcomes.append(verdict.outcome)
            if verdict.outcome is Outcome.RETRIED:
                self.queue.append(Envelope(envelope.body, envelope.headers, envelope.retries + 1))
            elif verdict.outcome is Outcome.DEAD_LETTERED:
                self.dead_letters.append((envelope, verdict.reason))
        return outcomes


@dataclass
class StubConsumer:
    """A Consumer whose health the test sets."""

    running: bool = True
    stopped: bool = False

    async def start(self) -> None:
        pass

    def is_running(self) -> bool:
        return self.running

    async def stop(self) -> None:
        self.stopped = True


def process(processor: Processor, body: bytes, retries: int = 0, headers: dict[str, str] | None = None) -> Outcome:
    """Run one message through the processor from a plain (synchronous) test."""
    return verdict_of(processor, body, retries, headers).outcome


def verdict_of(processor: Processor, body: bytes, retries: int = 0, headers: dict[str, str] | None = None) -> Verdict:
{%- if is_async %}
    return asyncio.run(processor.process(body, retries, headers))
{%- else %}
    return processor.process(body, retries, headers)
{%- endif %}


def drain(broker: InMemoryBroker, processor: Processor) -> list[Outcome]:
{%- if is_async %}
    return asyncio.run(broker.drain(processor))
{%- else %}
    return broker.drain(processor)
{%- endif %}
