"""Unit tests of RabbitMQ's settings: the nodes of a BROKER_URL, a URL no client could use refused
in one line at start-up, and the arguments QUEUE_TYPE gives every queue."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from {{ cookiecutter.project_slug }}.brokers.rabbitmq.settings import broker_nodes
from {{ cookiecutter.project_slug }}.brokers.rabbitmq.topology import (
    dead_letter_queue_arguments,
    mismatch_hint,
    queue_arguments,
    wait_queue_arguments,
)
from {{ cookiecutter.project_slug }}.settings import Settings


def test_one_node_is_the_url_itself() -> None:
    assert broker_nodes("amqp://guest:guest@localhost:5672/%2F") == ["amqp://guest:guest@localhost:5672/%2F"]


def test_several_nodes_share_the_credentials_vhost_and_options_in_their_order() -> None:
    url = "amqps://u:p%40ss@h1:5671,h2:5672, h3/prod?heartbeat=10"
    assert broker_nodes(url) == [
        "amqps://u:p%40ss@h1:5671/prod?heartbeat=10",
        "amqps://u:p%40ss@h2:5672/prod?heartbeat=10",
        "amqps://u:p%40ss@h3/prod?heartbeat=10",
    ]
    assert Settings(broker_url=url).broker_node_urls == broker_nodes(url)


def test_an_ipv6_node_keeps_its_brackets() -> None:
    assert broker_nodes("amqp://[::1]:5672,h2:5672/") == ["amqp://[::1]:5672/", "amqp://h2:5672/"]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("amqp://guest:guest@h1:56x2/%2F", "the port of node 'h1:56x2' is not a number"),
        ("amqp://h1:5672,h2:99999/", "the port of node 'h2:99999' is not a number"),
        ("amqp://h1:5672,,h2:5672/", "node '' names no host"),
        ("amqp://guest:guest@:5672/", "node ':5672' names no host"),
        ("http://h1:5672/", "BROKER_URL must start with amqp:// or amqps://"),
    ],
)
def test_a_url_no_client_could_use_is_refused_at_start_up_in_words(url: str, says: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(broker_url=url)
    assert says in str(raised.value)


def test_quorum_is_the_default_and_dead_letters_at_least_once() -> None:
    settings = Settings(broker_url="amqp://localhost/", queue_name="jobs")
    assert settings.queue_type == "quorum"
    assert queue_arguments(settings) == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "jobs.dlq",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",  # at-least-once dead-lettering needs it
    }
    assert dead_letter_queue_arguments(settings) == {"x-queue-type": "quorum"}


def test_classic_queues_keep_the_arguments_they_had() -> None:
    settings = Settings(broker_url="amqp://localhost/", queue_name="jobs", queue_type="classic")
    assert queue_arguments(settings) == {
        "x-queue-type": "classic",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "jobs.dlq",
    }
    assert dead_letter_queue_arguments(settings) == {"x-queue-type": "classic"}
    assert "x-dead-letter-strategy" not in wait_queue_arguments(settings, 100)


def test_an_unknown_queue_type_is_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(broker_url="amqp://localhost/", queue_type="stream")


def test_a_queue_of_the_other_type_is_explained_in_one_line() -> None:
    settings = Settings(broker_url="amqp://localhost/")
    text = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'tasks' in vhost '/'"
    hint = mismatch_hint(settings, 406, text)
    assert hint is not None
    assert "\n" not in hint
    assert "QUEUE_TYPE=classic" in hint
    assert mismatch_hint(settings, 404, "NOT_FOUND") is None
