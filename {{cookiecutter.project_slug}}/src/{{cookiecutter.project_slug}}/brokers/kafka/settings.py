"""Kafka's own settings, mixed into the service's Settings."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from ..base import broker_url_field, check_scheme

MESSAGING_SYSTEM = "kafka"  # as OpenTelemetry names it
BROKER_SCHEMES = {"kafka": 9092}  # scheme: default port
DEFAULT_BROKER_URL = "kafka://localhost:9092"


class BrokerSettings(BaseSettings):
    broker_url: str = broker_url_field(DEFAULT_BROKER_URL)
    consumer_group: str = Field(
        "", description="The consumer group id every worker joins; empty means '<QUEUE_NAME>.workers'."
    )
    topic_partitions: int = Field(
        3, ge=1, description="Partitions of a topic the service creates: the most workers that share the load."
    )
    topic_replication: int = Field(1, ge=1, description="Replicas of a topic the service creates; 3 in production.")
    session_timeout_seconds: float = Field(
        10.0, gt=0, description="A consumer silent this long is dropped from the group; its partitions move on."
    )
    producer_idempotence: bool = Field(
        True, description="Idempotent producer: a retried send is written once. Keep it on against Apache Kafka."
    )

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        if urlsplit(check_scheme(value, BROKER_SCHEMES)).scheme == "kafka":
            servers(value)  # a server the client cannot use fails here, not in its endless retries
        return value

    @property
    def bootstrap_servers(self) -> str:
        """`host:port,host:port` from `kafka://host:port,host:port`."""
        return ",".join(f"{host}:{port}" for host, port in servers(self.broker_url))


def servers(url: str) -> list[tuple[str, int]]:
    """The (host, port) of each bootstrap server in `kafka://host[:port],host[:port]`; ValueError for one unusable."""
    found = []
    for server in urlsplit(url).netloc.rpartition("@")[2].split(","):
        host, colon, port = server.rpartition(":") if ":" in server else (server, "", "")
        if not host or (colon and not (port.isdigit() and 0 < int(port) < 65536)):
            raise ValueError(f"BROKER_URL names a server Kafka clients cannot use: {server!r} (host:port expected)")
        found.append((host, int(port) if colon else BROKER_SCHEMES["kafka"]))
    return found
