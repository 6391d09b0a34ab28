"""Every knob of the service, read once from the environment (or a .env file)."""

from __future__ import annotations

{% if cookiecutter.broker == "redis" -%}
import os
import socket
{% endif -%}
from functools import lru_cache
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

{% if cookiecutter.broker == "rabbitmq" -%}
BROKER_SCHEMES = {"amqp": 5672, "amqps": 5671}  # scheme: default port
DEFAULT_BROKER_URL = "amqp://localhost:5672/%2F"
{% elif cookiecutter.broker == "redis" -%}
BROKER_SCHEMES = {"redis": 6379, "rediss": 6379}  # scheme: default port
DEFAULT_BROKER_URL = "redis://localhost:6379/0"


def default_consumer_name() -> str:
    """Unique per process; the same for a container restarted in place (same host name, pid 1)."""
    return f"{socket.gethostname()}-{os.getpid()}"
{% elif cookiecutter.broker == "kafka" -%}
BROKER_SCHEMES = {"kafka": 9092}  # scheme: default port
DEFAULT_BROKER_URL = "kafka://localhost:9092"
{% endif %}

class Settings(BaseSettings):
    """Configuration; each field maps to the upper-case environment variable of its name."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    broker_url: str = Field(
        DEFAULT_BROKER_URL,
        description="Where the broker is; credentials belong here, in the environment only.",
    )
    queue_name: str = Field("tasks", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    consumer_enabled: bool = Field(True, description="Whether the API process also consumes.")
    max_retries: int = Field(3, ge=0, description="Retries of a failing message before it is dead-lettered.")
    prefetch_count: int = Field(100, ge=1, le=65535, description="Messages a consumer holds unacknowledged.")
{%- if cookiecutter.consumer == "threaded" %}
    handler_threads: int = Field(8, ge=1, le=256, description="Threads that run handlers in one consumer.")
{%- endif %}
    publish_timeout_seconds: float = Field(
        3.0, gt=0, le=4.5, description="How long POST /tasks waits for the broker before answering 503."
    )
    ready_timeout_seconds: float = Field(2.0, gt=0, description="How long /health/ready waits for the broker.")
    shutdown_timeout_seconds: float = Field(
        20.0, gt=0, description="How long a stopping consumer lets messages in hand finish."
    )
{%- if cookiecutter.broker == "rabbitmq" %}
    heartbeat_seconds: int = Field(
        30, ge=1, description="Heartbeat interval; a dead peer is noticed within about two of them."
    )
{%- elif cookiecutter.broker == "redis" %}
    consumer_group: str = Field("workers", min_length=1, description="The consumer group every worker joins.")
    consumer_name: str = Field(
        default_factory=default_consumer_name, min_length=1, description="This consumer's name in the group."
    )
    claim_idle_seconds: float = Field(
        30.0,
        gt=0,
        description="A message pending this long (its consumer died, or its handler failed) is delivered again.",
    )
{%- elif cookiecutter.broker == "kafka" %}
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
{%- endif %}
    log_level: str = Field("INFO", pattern=r"^(CRITICAL|ERROR|WARNING|INFO|DEBUG)$")
    log_format: str = Field("text", pattern=r"^(text|json)$", description="text for a terminal, json for containers.")
    metrics_port: int = Field(
        9100, ge=0, le=65535, description="Where `python -m ...worker` serves /metrics; 0 turns it off."
    )
    tracing_enabled: bool = Field(False, description="OpenTelemetry tracing; needs the `tracing` extra.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in BROKER_SCHEMES:
            raise ValueError(f"BROKER_URL must start with {' or '.join(s + '://' for s in BROKER_SCHEMES)}")
        return value

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue_name}.dlq"

    @property
    def broker_address(self) -> str:
        """Where the broker is, safe to log (no credentials)."""
        parts = urlsplit(self.broker_url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
{%- if cookiecutter.broker == "kafka" %}

    @property
    def bootstrap_servers(self) -> str:
        """`host:port,host:port` from `kafka://host:port,host:port`."""
        return ",".join(
            address if ":" in address else f"{address}:{BROKER_SCHEMES['kafka']}"
            for address in urlsplit(self.broker_url).netloc.rpartition("@")[2].split(",")
        )

    @property
    def group_id(self) -> str:
        return self.consumer_group or f"{self.queue_name}.workers"
{%- endif %}


@lru_cache
def get_settings() -> Settings:
    return Settings()
