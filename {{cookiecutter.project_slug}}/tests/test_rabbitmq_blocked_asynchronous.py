"""Unit tests of the aio-pika publisher's honesty: while RabbitMQ blocks the connection it refuses
before anything is written (503), it can tell a blocked connection from aiormq's state, and a nack
is a refusal after which it connects again."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aiormq
import pytest

from {{ cookiecutter.project_slug }}.brokers import BrokerUnavailable, OutcomeUnknown
from {{ cookiecutter.project_slug }}.brokers.rabbitmq.asynchronous import BrokerPublisher, is_blocked
from {{ cookiecutter.project_slug }}.messages import TaskMessage
from {{ cookiecutter.project_slug }}.settings import Settings


def connection_of(underlay: Any) -> Any:
    """An aio-pika connection as is_blocked reads it: `transport.connection` is aiormq's."""
    return SimpleNamespace(transport=SimpleNamespace(connection=underlay), is_closed=False)


def test_aiormq_still_tracks_blocking_where_we_read_it() -> None:
    async def check() -> None:
        underlay = aiormq.Connection("amqp://localhost/")  # not connected: only its state is read
        unblocked = underlay._Connection__connection_unblocked  # type: ignore[attr-defined]
        assert isinstance(unblocked, asyncio.Event)
        unblocked.set()
        assert not is_blocked(connection_of(underlay))
        unblocked.clear()  # what aiormq does on connection.blocked
        assert is_blocked(connection_of(underlay))

    asyncio.run(check())


def publisher_on(exchange: object, blocked: bool) -> BrokerPublisher:
    """A publisher as its session leaves it: a channel with `exchange` as its default exchange, on a
    connection RabbitMQ has blocked or not."""
    unblocked = asyncio.Event()  # cleared: blocked, as aiormq keeps it
    if not blocked:
        unblocked.set()
    publisher = BrokerPublisher(Settings(broker_url="amqp://localhost/"))
    publisher._channel = SimpleNamespace(is_closed=False, default_exchange=exchange)  # type: ignore[assignment]
    publisher._connection = connection_of(SimpleNamespace(_Connection__connection_unblocked=unblocked))
    return publisher


def test_a_blocked_connection_refuses_at_once_without_writing() -> None:
    async def check() -> None:
        publisher = publisher_on(None, blocked=True)  # no exchange: a write would fail, so refusing comes first
        message = TaskMessage(id="t-1", type="record", payload={})
        with pytest.raises(BrokerUnavailable, match="blocked") as raised:
            await publisher.publish(message, {})
        assert not isinstance(raised.value, OutcomeUnknown)
        with pytest.raises(BrokerUnavailable, match="blocked"):
            await publisher.ping()  # /health/ready: not ready

    asyncio.run(check())


def test_a_nack_refuses_the_task_and_ends_the_session_to_connect_again() -> None:
    async def check() -> None:
        async def nack(*_: Any, **__: Any) -> None:
            raise aiormq.exceptions.DeliveryError(None, aiormq.spec.Basic.Nack(delivery_tag=1))

        publisher = publisher_on(SimpleNamespace(publish=nack), blocked=False)
        message = TaskMessage(id="t-1", type="record", payload={})
        with pytest.raises(BrokerUnavailable, match="refused") as raised:
            await publisher.publish(message, {})
        assert not isinstance(raised.value, OutcomeUnknown)
        assert publisher._nacked.is_set(), "the session goes on with the channel that was nacked"

    asyncio.run(check())
