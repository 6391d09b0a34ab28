"""Talks to Redis directly, as another program would, to set up and inspect integration tests."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import redis

GROUP = "workers"


@dataclass(frozen=True)
class Received:
    body: bytes
    headers: dict[str, str]  # the entry's other fields


def received(fields: dict[bytes, bytes]) -> Received:
    headers = {key.decode(): value.decode(errors="replace") for key, value in fields.items() if key != b"body"}
    return Received(body=fields.get(b"body", b""), headers=headers)


class Probe:
    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)

    def check(self) -> None:
        """Raise if the broker cannot be reached."""
        self._client.ping()

    def publish(self, stream: str, *bodies: bytes) -> None:
        pipeline = self._client.pipeline(transaction=False)
        for body in bodies:
            pipeline.xadd(stream, {b"body": body})
        pipeline.execute()

    def count(self, stream: str, group: str = GROUP) -> int:
        """Messages not yet acknowledged by the group: pending, plus not yet delivered."""
        if not self._client.exists(stream):
            raise LookupError(f"no stream {stream!r}")
        [info] = [g for g in self._client.xinfo_groups(stream) if g["name"].decode() == group]
        after_last_delivered = f"({info['last-delivered-id'].decode()}"
        undelivered = len(cast("list[Any]", self._client.xrange(stream, min=after_last_delivered, max="+")))
        return int(info["pending"]) + undelivered

    def take(self, stream: str, expected: int, timeout: float = 15.0) -> list[Received]:
        """Read and delete entries until `expected` arrived or the deadline passed."""
        taken: list[Received] = []
        deadline = time.monotonic() + timeout
        while len(taken) < expected and time.monotonic() < deadline:
            entries = cast(
                "list[tuple[bytes, dict[bytes, bytes]]]", self._client.xrange(stream, count=expected - len(taken))
            )
            if not entries:
                time.sleep(0.05)  # polling an empty stream until the deadline
                continue
            for entry_id, fields in entries:
                self._client.xdel(stream, entry_id)
                taken.append(received(fields))
        return taken

    def create_group(self, stream: str, group: str = GROUP) -> None:
        """What the service declares at start-up, declared here first."""
        self._client.xgroup_create(stream, group, id="0", mkstream=True)

    def read_as(self, stream: str, consumer: str, count: int, group: str = GROUP) -> list[bytes]:
        """Read entries as `consumer` and never acknowledge them: a consumer that then dies."""
        response = cast(
            "list[tuple[bytes, list[tuple[bytes, Any]]]]",
            self._client.xreadgroup(group, consumer, {stream: ">"}, count=count),
        )
        return [entry_id for _, entries in response or [] for entry_id, _ in entries]

    def consumers(self, stream: str, group: str = GROUP) -> list[str]:
        """The names of the group's consumers."""
        return [consumer["name"].decode() for consumer in self._client.xinfo_consumers(stream, group)]

    def create_consumer(self, stream: str, name: str, group: str = GROUP) -> None:
        """A consumer that joins the group and never reads again: a worker gone for good."""
        self._client.xgroup_createconsumer(stream, group, name)

    def delete(self, *keys: str) -> None:
        self._client.delete(*keys)
