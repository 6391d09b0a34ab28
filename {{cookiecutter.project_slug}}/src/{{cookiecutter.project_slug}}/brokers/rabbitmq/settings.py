"""RabbitMQ's own settings, mixed into the service's Settings."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from ..base import broker_url_field, check_scheme

MESSAGING_SYSTEM = "rabbitmq"  # as OpenTelemetry names it
BROKER_SCHEMES = {"amqp": 5672, "amqps": 5671}  # scheme: default port
DEFAULT_BROKER_URL = "amqp://localhost:5672/%2F"


class BrokerSettings(BaseSettings):
    broker_url: str = broker_url_field(DEFAULT_BROKER_URL)
    heartbeat_seconds: int = Field(
        30, ge=1, description="Heartbeat interval; a dead peer is noticed within about two of them."
    )

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        return check_scheme(value, BROKER_SCHEMES)
