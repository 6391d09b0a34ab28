"""Unit tests of how the Kafka publisher reads a failed delivery: a refusal, for which the API
answers 503 (the task will not run), or an unknown outcome, 504 (the broker may have it)."""

from __future__ import annotations
{%- if cookiecutter.consumer == "async" %}

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NotEnoughReplicasError, RequestTimedOutError

from {{ cookiecutter.project_slug }}.brokers.base import BrokerUnavailable, OutcomeUnknown
from {{ cookiecutter.project_slug }}.brokers.kafka.asynchronous import BrokerPublisher
from {{ cookiecutter.project_slug }}.messages import TaskMessage
from {{ cookiecutter.project_slug }}.settings import Settings


class Producer:
    """What the publisher calls of an AIOKafkaProducer: `send` fails itself, or returns a failed delivery."""

    def __init__(self, on_send: Exception | None = None, on_delivery: Exception | None = None) -> None:
        self.on_send, self.on_delivery = on_send, on_delivery

    async def send(self, topic: str, **_: Any) -> asyncio.Future[None]:
        if self.on_send is not None:
            raise self.on_send
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivered.set_exception(self.on_delivery or RuntimeError("no failure given"))
        return delivered


def publish_with(producer: Producer) -> None:
    publisher = BrokerPublisher(Settings())
    publisher._producer = producer
    publisher._reach.answered()
    asyncio.run(publisher.publish(TaskMessage(id="t-1", type="record", payload={}), {}))


@pytest.mark.parametrize("error", [NotEnoughReplicasError(), KafkaConnectionError()])
def test_a_message_refused_or_never_sent_is_not_accepted(error: Exception) -> None:
    producer = Producer(on_delivery=error) if isinstance(error, NotEnoughReplicasError) else Producer(on_send=error)
    with pytest.raises(BrokerUnavailable) as raised:
        publish_with(producer)
    assert not isinstance(raised.value, OutcomeUnknown)


@pytest.mark.parametrize("error", [RequestTimedOutError(), KafkaTimeoutError(), KafkaConnectionError()])
def test_a_message_sent_and_not_acknowledged_has_an_unknown_outcome(error: Exception) -> None:
    with pytest.raises(OutcomeUnknown):
        publish_with(Producer(on_delivery=error))


def test_after_an_unanswered_publish_the_next_is_refused_at_once_until_a_probe_answers() -> None:
    publisher = BrokerPublisher(Settings())
    publisher._producer = Producer(on_delivery=RequestTimedOutError())
    publisher._reach.answered()
    message = TaskMessage(id="t-1", type="record", payload={})
    with pytest.raises(OutcomeUnknown):
        asyncio.run(publisher.publish(message, {}))
    publisher._producer = Producer(on_send=AssertionError("a message was handed to the client"))
    with pytest.raises(BrokerUnavailable, match="unreachable") as raised:
        asyncio.run(publisher.publish(message, {}))
    assert not isinstance(raised.value, OutcomeUnknown)
{%- else %}

import asyncio

import pytest
from confluent_kafka import KafkaError

from {{ cookiecutter.project_slug }}.brokers.base import BrokerUnavailable, OutcomeUnknown
from {{ cookiecutter.project_slug }}.brokers.kafka.threaded_publisher import BrokerPublisher, delivery_failure
from {{ cookiecutter.project_slug }}.messages import TaskMessage
from {{ cookiecutter.project_slug }}.settings import Settings


@pytest.mark.parametrize(
    "code", [KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.TOPIC_AUTHORIZATION_FAILED]
)
def test_a_message_the_broker_refused_is_not_accepted(code: int) -> None:
    assert not isinstance(delivery_failure(KafkaError(code)), OutcomeUnknown)


@pytest.mark.parametrize(
    "code",
    [
        KafkaError._MSG_TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    ],
)
def test_a_message_sent_and_not_acknowledged_has_an_unknown_outcome(code: int) -> None:
    assert isinstance(delivery_failure(KafkaError(code)), OutcomeUnknown)


def test_a_publisher_that_has_not_reached_the_brokers_refuses_at_once_without_sending() -> None:
    """Nothing answered yet (its thread has not probed): a 503 now beats a 504 for a message never sent."""
    publisher = BrokerPublisher(Settings(broker_url="kafka://127.0.0.1:1"))
    with pytest.raises(BrokerUnavailable, match="unreachable") as raised:
        asyncio.run(publisher.publish(TaskMessage(id="t-1", type="record", payload={}), {}))
    assert not isinstance(raised.value, OutcomeUnknown)
{%- endif %}
