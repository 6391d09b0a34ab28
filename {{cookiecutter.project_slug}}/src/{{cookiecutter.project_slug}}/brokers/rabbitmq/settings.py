"""RabbitMQ's own settings, mixed into the service's Settings."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from ..base import broker_url_field, check_scheme

MESSAGING_SYSTEM = "rabbitmq"  # as OpenTelemetry names it
BROKER_SCHEMES = {"amqp": 5672, "amqps": 5671}  # scheme: default port
DEFAULT_BROKER_URL = "amqp://localhost:5672/%2F"


def broker_nodes(url: str) -> list[str]:
    """Each node of BROKER_URL as a URL of its own, in the order given: `amqp://u:p@h1:5672,h2:5672/vhost`
    is `amqp://u:p@h1:5672/vhost` and `amqp://u:p@h2:5672/vhost`. A ValueError, in words, for a URL
    no client could use (no host, a port that is not a number)."""
    parts = urlsplit(url)
    credentials, at, hosts = parts.netloc.rpartition("@")
    nodes = []
    for host in hosts.split(","):
        node = parts._replace(netloc=f"{credentials}{at}{host.strip()}")
        try:
            port = node.port
        except ValueError:
            raise ValueError(f"BROKER_URL: the port of node {host.strip()!r} is not a number in 1-65535") from None
        if not node.hostname:
            raise ValueError(f"BROKER_URL: node {host.strip()!r} names no host (amqp://user:pass@host:5672/vhost)")
        if port == 0:
            raise ValueError(f"BROKER_URL: the port of node {host.strip()!r} is not a number in 1-65535")
        nodes.append(node.geturl())
    return nodes


class BrokerSettings(BaseSettings):
    broker_url: str = broker_url_field(DEFAULT_BROKER_URL)
    heartbeat_seconds: int = Field(
        30, ge=1, description="Heartbeat interval; a dead peer is noticed within about two of them."
    )
    queue_type: Literal["quorum", "classic"] = Field(
        "quorum",
        description="quorum: replicated over the cluster's nodes (Raft), survives losing a minority; "
        "classic: on one node. An existing queue keeps its type: see the README to migrate.",
    )

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        check_scheme(value, BROKER_SCHEMES)
        if urlsplit(value).scheme != "memory":
            broker_nodes(value)
        return value

    @property
    def broker_node_urls(self) -> list[str]:
        """BROKER_URL's nodes, to be tried in turn: see broker_nodes."""
        return broker_nodes(self.broker_url)
