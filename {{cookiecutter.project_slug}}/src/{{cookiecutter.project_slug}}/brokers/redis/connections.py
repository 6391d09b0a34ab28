"""How BROKER_URL becomes redis-py's clients: a direct connection, or the primary that Sentinel
names (found again on every reconnect, so a failover moves the clients to the promoted replica)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import redis
from redis.retry import Retry
from redis.sentinel import Sentinel

from . import streams
from .settings import SentinelTarget, sentinel_target

if TYPE_CHECKING:
    from ...settings import Settings


def sentinel_options(target: SentinelTarget) -> dict[str, Any]:
    """What the Sentinels themselves are asked with: short timeouts, TLS where the primary has it."""
    options: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
    if target.tls:
        options["ssl"] = True
    return options


def primary_options(target: SentinelTarget) -> dict[str, Any]:
    """What the primary is connected with, beyond every client's options: the URL's database and credentials."""
    options: dict[str, Any] = {"db": target.db, "username": target.username, "password": target.password}
    if target.tls:
        options["ssl"] = True
    return options


def blocking_client(settings: Settings, name: str, retries: int = 2) -> redis.Redis:
    """A redis-py client for BROKER_URL; `retries`: quick retries of a command whose connection dropped."""
    options = {**streams.client_options(name), "retry": Retry(streams.retry_backoff(), retries)}
    target = sentinel_target(settings.broker_url)
    if target is None:
        return redis.Redis.from_url(settings.broker_url, **options)
    sentinel = cast("Any", Sentinel)(list(target.sentinels), sentinel_kwargs=sentinel_options(target))  # untyped
    return cast("redis.Redis", sentinel.master_for(target.master, **options, **primary_options(target)))
