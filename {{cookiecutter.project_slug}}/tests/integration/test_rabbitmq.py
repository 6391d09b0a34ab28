"""What RabbitMQ itself must hold: durable queues, persistent JSON messages, dead-lettering."""

from __future__ import annotations

from fastapi.testclient import TestClient

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from .helpers import publish_only, wait_ready
from .probes import Probe


def test_published_messages_are_persistent_json_with_the_id(
    settings: Settings, registry: TaskRegistry, probe: Probe
) -> None:
    task_id = publish_only(settings, registry, "req-7")
    [message] = probe.take(settings.queue_name, 1)
    assert message.persistent
    assert message.content_type == "application/json"
    assert message.message_id == task_id
    assert message.headers["x-request-id"] == "req-7"


def test_the_task_queue_dead_letters_into_the_dlq(settings: Settings, registry: TaskRegistry, probe: Probe) -> None:
    settings = settings.model_copy(update={"consumer_enabled": False})
    with TestClient(create_app(settings, registry=registry)) as client:
        wait_ready(client)  # the service has declared its queues
    probe.publish(settings.queue_name, b'{"id": "r-1", "type": "record", "payload": {}}')
    rejected = probe.reject_one(settings.queue_name)
    [dead] = probe.take(settings.dead_letter_queue, 1)
    assert dead.body == rejected
