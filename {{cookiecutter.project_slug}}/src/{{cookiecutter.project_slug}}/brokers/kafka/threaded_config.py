"""The configuration of every confluent-kafka client: where the brokers are, how soon a stuck
connection is dropped, and the logging that keeps an outage to a line a minute."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError

from .threaded_logging import ClientLog

if TYPE_CHECKING:
    from ...settings import Settings

REQUEST_TIMEOUT_MARGIN_MS = 5000  # over the session timeout: a JoinGroup may be held that long


def client_config(
    settings: Settings, name: str, on_fatal: Callable[[KafkaError], None] | None = None
) -> dict[str, Any]:
    log = ClientLog(name, on_fatal)
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": f"{settings.queue_name}-{name}",
        "reconnect.backoff.max.ms": 2000,  # back within seconds of the broker's return, not librdkafka's 10
        # A request unanswered this long means a stuck connection: librdkafka drops it and reconnects.
        "socket.timeout.ms": int(settings.session_timeout_seconds * 1000) + REQUEST_TIMEOUT_MARGIN_MS,
        "logger": log,
        "error_cb": log.on_error,
        # Topics are the service's, with its partitions: a typo'd or deleted one must not come back with defaults.
        "allow.auto.create.topics": False,
    }


def producer_config(
    settings: Settings, name: str, timeout_seconds: float, on_fatal: Callable[[KafkaError], None]
) -> dict[str, Any]:
    return {
        **client_config(settings, name, on_fatal),
        "enable.idempotence": settings.producer_idempotence,
        "acks": "all",
        # The producer gives up about when its caller does, so a message answered with 503 is rarely written later.
        "message.timeout.ms": max(1, int(timeout_seconds * 1000)),
    }
