"""Redis's own settings, mixed into the service's Settings."""

from __future__ import annotations

import os
import socket

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from ..base import broker_url_field, check_scheme

MESSAGING_SYSTEM = "redis"  # as OpenTelemetry names it
BROKER_SCHEMES = {"redis": 6379, "rediss": 6379}  # scheme: default port
DEFAULT_BROKER_URL = "redis://localhost:6379/0"


def default_consumer_name() -> str:
    """Unique per process; the same for a container restarted in place (same host name, pid 1)."""
    return f"{socket.gethostname()}-{os.getpid()}"


class BrokerSettings(BaseSettings):
    broker_url: str = broker_url_field(DEFAULT_BROKER_URL)
    consumer_group: str = Field("workers", min_length=1, description="The consumer group every worker joins.")
    consumer_name: str = Field(
        default_factory=default_consumer_name, min_length=1, description="This consumer's name in the group."
    )
    consumer_forget_seconds: float = Field(
        3600.0,
        gt=0,
        description="A consumer of the group idle this long with nothing pending is removed (a worker gone for good).",
    )
    claim_idle_seconds: float = Field(
        30.0,
        gt=0,
        description="A message pending this long (its consumer died, or its handler failed) is delivered again.",
    )

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        return check_scheme(value, BROKER_SCHEMES)
