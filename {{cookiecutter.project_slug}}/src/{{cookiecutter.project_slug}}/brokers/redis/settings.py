"""Redis's own settings, mixed into the service's Settings; BROKER_URL is parsed here, once."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings
from redis import ConnectionPool

from ..base import broker_url_field, check_scheme

MESSAGING_SYSTEM = "redis"  # as OpenTelemetry names it
SENTINEL_SCHEMES = {"redis+sentinel": 26379, "rediss+sentinel": 26379}  # scheme: default port
BROKER_SCHEMES = {"redis": 6379, "rediss": 6379, **SENTINEL_SCHEMES}
DEFAULT_BROKER_URL = "redis://localhost:6379/0"
SENTINEL_FORM = "redis+sentinel://[user:password@]host:26379[,host:26379]/<master name>[/<db>]"


@dataclass(frozen=True)
class SentinelTarget:
    """A BROKER_URL that names a primary by the Sentinels that watch it."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def sentinel_target(url: str) -> SentinelTarget | None:
    """What a redis+sentinel:// URL names; None for any other URL; ValueError, saying why, if malformed."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        return None
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    sentinels = tuple(host_and_port(host, SENTINEL_SCHEMES[parts.scheme]) for host in hosts.split(","))
    master, _, db = parts.path.strip("/").partition("/")
    if not master:
        raise ValueError(f"a Sentinel URL names the primary by its master name: {SENTINEL_FORM}")
    if not db.isdigit() and db != "":
        raise ValueError(f"the database after the master name must be a number, not {db!r}: {SENTINEL_FORM}")
    return SentinelTarget(
        sentinels=sentinels,
        master=unquote(master),
        db=int(db or 0),
        username=unquote(username) or None,
        password=unquote(password) or None,
        tls=parts.scheme == "rediss+sentinel",
    )


def host_and_port(text: str, default_port: int) -> tuple[str, int]:
    """One `host[:port]` (`[v6 address][:port]`) of a list of Sentinels."""
    host, colon, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not colon:
        host, port = text, ""
    host = host.strip("[]")
    if not host:
        raise ValueError(f"a Sentinel's address is empty in {text!r}: {SENTINEL_FORM}")
    if port and not port.isdigit():
        raise ValueError(f"a Sentinel's port must be a number, not {port!r}: {SENTINEL_FORM}")
    return host, int(port or default_port)


def check_url(url: str) -> str:
    """`url` if the Redis client can use it; a ValueError that says why otherwise (at start-up, not at first use)."""
    check_scheme(url, BROKER_SCHEMES)
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        try:
            ConnectionPool.from_url(url)  # connects to nothing: checks the port and the options
            if parts.path.strip("/") and not parts.path.strip("/").isdigit():
                raise ValueError(f"the database must be a number, not {parts.path.strip('/')!r}")
        except ValueError as error:
            raise ValueError(f"BROKER_URL is not a Redis URL redis://[:password@]host:6379/db: {error}") from None
    else:
        sentinel_target(url)
    return url


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
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        le=100,
        description="Replicas that must hold a task (Redis WAIT after XADD) before POST /tasks answers 202; 0: off.",
    )

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        return check_url(value)
