"""Unit tests of the pika publisher's honesty: refused before anything is written while RabbitMQ
blocks the connection (503), a publish written but not confirmed when the connection goes is
OutcomeUnknown (504), never a plain refusal, and a nack is a refusal after which it connects again."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from types import SimpleNamespace

import pytest
from pika.spec import Basic

from {{ cookiecutter.project_slug }}.brokers import BrokerUnavailable, OutcomeUnknown
from {{ cookiecutter.project_slug }}.brokers.rabbitmq.threaded import BrokerPublisher, Request
from {{ cookiecutter.project_slug }}.brokers.rabbitmq.topology import NACKED
from {{ cookiecutter.project_slug }}.messages import TaskMessage
from {{ cookiecutter.project_slug }}.settings import Settings

SETTINGS = Settings(broker_url="amqp://h1:5672,h2:5672/%2F")


def test_a_blocked_connection_refuses_at_once_without_writing() -> None:
    publisher = BrokerPublisher(SETTINGS)
    publisher._ready.set()  # connected, as far as callers can tell
    blocked = SimpleNamespace(method=SimpleNamespace(reason="low on memory"))
    publisher._on_blocked(None, blocked)
    message = TaskMessage(id="t-1", type="record", payload={})
    with pytest.raises(BrokerUnavailable, match="blocked") as raised:
        asyncio.run(publisher.publish(message, {}))
    assert not isinstance(raised.value, OutcomeUnknown)
    assert not publisher._waiting, "the publish was queued for writing"
    with pytest.raises(BrokerUnavailable, match="blocked"):
        asyncio.run(publisher.ping())  # /health/ready: not ready

    publisher._on_unblocked(None, None)
    assert not publisher._blocked.is_set()


def test_a_lost_connection_fails_what_was_written_as_unknown_and_the_rest_as_refused() -> None:
    publisher = BrokerPublisher(SETTINGS)
    written: Future[None] = Future()
    written.set_running_or_notify_cancel()
    publisher._unconfirmed[1] = ("t-1", written)
    waiting: Future[None] = Future()
    publisher._waiting.append((Request(b"{}", None), waiting))

    publisher._fail_all("the connection to RabbitMQ was lost")

    assert isinstance(written.exception(), OutcomeUnknown)
    refused = waiting.exception()
    assert isinstance(refused, BrokerUnavailable)
    assert not isinstance(refused, OutcomeUnknown)


def test_every_node_of_the_url_gets_its_own_parameters_in_order() -> None:
    publisher = BrokerPublisher(SETTINGS)
    assert [(node.host, node.port) for node in publisher._nodes] == [("h1", 5672), ("h2", 5672)]


def test_a_nack_refuses_the_task_and_closes_the_connection_to_connect_again() -> None:
    publisher = BrokerPublisher(SETTINGS)
    closed: list[bool] = []
    publisher._connection = SimpleNamespace(is_open=True, close=lambda: closed.append(True))
    acked: Future[None] = Future()
    nacked: Future[None] = Future()
    for tag, future in enumerate((acked, nacked), start=1):
        future.set_running_or_notify_cancel()
        publisher._unconfirmed[tag] = (f"t-{tag}", future)

    publisher._on_confirm(SimpleNamespace(method=Basic.Ack(delivery_tag=1)))
    assert acked.result() is None
    assert closed == [], "an ack closed the connection"

    publisher._on_confirm(SimpleNamespace(method=Basic.Nack(delivery_tag=2)))
    refused = nacked.exception()
    assert isinstance(refused, BrokerUnavailable)
    assert not isinstance(refused, OutcomeUnknown)
    assert closed == [True]
    assert publisher._lost is not None
    assert publisher._lost.args == (NACKED,)  # what keep_connected reports
