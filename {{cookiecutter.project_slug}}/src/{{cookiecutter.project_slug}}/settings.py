"""Every knob of the service, read once from the environment (or a .env file)."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

{% if cookiecutter.task_store == "none" -%}
from pydantic import Field, ValidationError, field_validator
{% else -%}
from pydantic import Field, ValidationError, field_validator, model_validator
{% endif -%}
from pydantic_settings import SettingsConfigDict

from .brokers import BROKER_SCHEMES, DEFAULT_BROKER_URL, BrokerSettings

__all__ = ["BROKER_SCHEMES", "DEFAULT_BROKER_URL", "Settings", "get_settings"]


class Settings(BrokerSettings):
    """Configuration; each field maps to the upper-case environment variable of its name. The
    broker's own fields (BROKER_URL among them) come from brokers/<broker>/settings.py."""

    # A refused value is not repeated in the error: a BROKER_URL carries its password.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    queue_name: str = Field("tasks", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    consumer_enabled: bool = Field(True, description="Whether the API process also consumes.")
    max_retries: int = Field(3, ge=0, description="Retries of a failing message before it is dead-lettered.")
    retry_delay_seconds: float = Field(1.0, ge=0, le=86_400, description="The wait before a first retry.")
    retry_delay_max_seconds: float = Field(
        300.0, ge=0, le=86_400, description="The longest wait between two attempts; each next one waits twice as long."
    )
    max_delay_seconds: float = Field(
        86_400.0, ge=0, le=86_400 * 30, description="The longest delay_seconds a POST /tasks may ask for."
    )
    prefetch_count: int = Field(100, ge=1, le=65535, description="Messages a consumer holds unacknowledged.")
{%- if cookiecutter.consumer == "threaded" %}
    handler_threads: int = Field(8, ge=1, le=256, description="Threads that run handlers in one consumer.")
{%- endif %}
    publish_timeout_seconds: float = Field(
        3.0, gt=0, le=4.5, description="How long POST /tasks waits for the broker before answering 504."
    )
    ready_timeout_seconds: float = Field(2.0, gt=0, description="How long /health/ready waits for the broker.")
    shutdown_timeout_seconds: float = Field(
        20.0, gt=0, description="How long a stopping consumer lets messages in hand finish."
    )
    log_level: str = Field("INFO", pattern=r"^(CRITICAL|ERROR|WARNING|INFO|DEBUG)$")
    log_format: str = Field("text", pattern=r"^(text|json)$", description="text for a terminal, json for containers.")
    metrics_port: int = Field(
        9100, ge=0, le=65535, description="Where `python -m ...worker` serves /metrics; 0 turns it off."
    )
    tracing_enabled: bool = Field(False, description="OpenTelemetry tracing; needs the `tracing` extra.")
{%- if cookiecutter.task_store == "redis" %}
    task_store_url: str = Field(
        "redis://localhost:6379/0", pattern=r"^(rediss?|memory)://", description="Where the task records are kept."
    )
{%- elif cookiecutter.task_store == "postgresql" %}
    task_store_url: str = Field(
        "postgresql://postgres@localhost:5432/postgres",
        pattern=r"^(postgres(ql)?|memory)://",
        description="Where the task records are kept; the password may come from PGPASSWORD, as for libpq.",
    )
{%- endif %}
{%- if cookiecutter.task_store != "none" %}
    task_record_ttl_seconds: float = Field(
        604_800.0, ge=60, le=86_400 * 366, description="How long a task record and its idempotency key are kept."
    )
{%- endif %}

{%- if cookiecutter.task_store != "none" %}

    @model_validator(mode="after")
    def _records_outlive_delays(self) -> Settings:
        if self.task_record_ttl_seconds <= self.max_delay_seconds:
            raise ValueError(
                f"TASK_RECORD_TTL_SECONDS ({self.task_record_ttl_seconds:g}) must be longer than MAX_DELAY_SECONDS"
                f" ({self.max_delay_seconds:g}): a delayed task would outlive its record"
            )
        return self
{%- endif %}

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue_name}.dlq"

    @property
    def broker_address(self) -> str:
        """Where the broker is, safe to log (no credentials)."""
        return address(self.broker_url)
{%- if cookiecutter.task_store != "none" %}

    @property
    def task_store_address(self) -> str:
        """Where the task store is, safe to log (no credentials)."""
        return address(self.task_store_url)
{%- endif %}


def address(url: str) -> str:
    """Scheme, hosts and ports of `url`, without the credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


@lru_cache
def get_settings() -> Settings:
    """The settings from the environment; a value the service cannot use stops it in one line."""
    try:
        return Settings()
    except ValidationError as error:
        raise SystemExit(f"invalid configuration: {one_line(error)}") from None


def one_line(error: ValidationError) -> str:
    """`NAME: what is wrong` for each setting refused, as the environment spells its name."""
    lines = []
    for each in error.errors():
        name, what = "_".join(map(str, each["loc"])).upper() or "settings", each["msg"].removeprefix("Value error, ")
        lines.append(what if what.startswith(name) else f"{name}: {what}")
    return "; ".join(lines)
