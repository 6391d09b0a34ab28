"""What both Redis consumer styles share: stream names, entry fields, and the dead-letter entry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from redis.backoff import ExponentialBackoff
from redis.typing import EncodableT, FieldT

from ..settings import Settings
from .base import text_headers

Fields = dict[FieldT, EncodableT]
Entry = tuple[bytes, dict[bytes, bytes] | None]  # an entry's fields are None once it was deleted

BODY_FIELD = b"body"
BLOCK_MILLISECONDS = 1000  # XREADGROUP's wait; shorter than the socket timeout, so an idle stream never times out
# The client logs every reconnect attempt at length; ours say it once.
CLIENT_LOGGERS = ("redis",)


def client_options(name: str) -> dict[str, Any]:
    """Connection options of every client, sync or asyncio (each adds its own `retry`)."""
    return {
        "socket_timeout": 5.0,
        "socket_connect_timeout": 2.0,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "client_name": name,
    }


def retry_backoff() -> ExponentialBackoff:
    """A couple of quick retries on a dropped connection; the consumer loops back off for longer."""
    return ExponentialBackoff(cap=0.5, base=0.05)


def group_exists_error(error: Exception) -> bool:
    return "BUSYGROUP" in str(error)


def entries_of(response: Any) -> list[Entry]:
    """The entries of an XREADGROUP reply for one stream (redis-py types it loosely)."""
    return [entry for _, entries in cast("list[tuple[bytes, list[Entry]]]", response or []) for entry in entries]


def publish_fields(body: bytes, headers: Mapping[str, str]) -> Fields:
    """The JSON in `body`; each header in a field of its own."""
    fields: Fields = {key.encode(): value.encode() for key, value in headers.items()}
    fields[BODY_FIELD] = body
    return fields


def headers_of(fields: dict[bytes, bytes]) -> dict[str, str]:
    return text_headers((key, value) for key, value in fields.items() if key != BODY_FIELD)


def dead_letter_fields(fields: dict[bytes, bytes], entry_id: bytes, reason: str, deliveries: int) -> Fields:
    """The original body, untouched, with why and where it came from."""
    return {
        BODY_FIELD: fields.get(BODY_FIELD, b""),
        b"reason": reason.encode(),
        b"source_id": entry_id,
        b"deliveries": str(deliveries).encode(),
    }


def claim_interval(settings: Settings) -> float:
    """How often to look for messages abandoned by dead consumers, and to refresh our own."""
    return max(0.1, min(5.0, settings.claim_idle_seconds / 3))
