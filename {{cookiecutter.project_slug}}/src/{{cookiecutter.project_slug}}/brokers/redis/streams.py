"""Redis Streams for both consumer styles, written once: what a consumer says to Redis and
what it makes of the replies. Each conversation is a generator that yields the commands to
send (a `Batch`, one round trip) and receives their replies; the module of the consumer style
only carries the batches to its client, blocking or awaited.

A retry waits in a sorted set, `<QUEUE_NAME>.delayed`, scored by when it is due (Redis's own
clock): one script adds it and acknowledges the original, and another, which every consumer
runs before its reads, moves what is due back into the stream. Each script is atomic, so a
retry is always in the stream, the set, or both for an instant never seen by a reader."""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from prometheus_client import Gauge
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, ResponseError
from redis.typing import EncodableT, FieldT

from ..base import BrokerUnavailable, Delivery, OutcomeUnknown, text_headers

if TYPE_CHECKING:
    from ...settings import Settings

T = TypeVar("T")
Fields = dict[FieldT, EncodableT]
Entry = tuple[bytes, dict[bytes, bytes] | None]  # an entry's fields are None once it was deleted

BODY_FIELD = b"body"
RETRIES_FIELD = b"x-retries"  # on an entry put back after a wait: the retries it had
IDLE_BLOCK_MILLISECONDS = 1000  # XREADGROUP's longest wait; shorter than the socket timeout
MOVE_INTERVAL_SECONDS = 0.5  # how often a consumer looks for due retries (other workers add some too)
MOVE_BATCH = 100  # due retries moved back into the stream by one script call at most

# KEYS[1]: the delayed set. ARGV[1]: the delay (ms), ARGV[2]: the member. Due by Redis's clock.
_ADD_DELAYED = """
local now = redis.call('TIME')
local due = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], due, ARGV[2])
"""
# A delayed task. KEYS: the delayed set. ARGV: the delay (ms), the member.
DELAY_SCRIPT = _ADD_DELAYED + "return 1\n"
# A retry. KEYS: the delayed set, the stream. ARGV: the delay (ms), the member, the group, the entry id.
WAIT_SCRIPT = _ADD_DELAYED + "return redis.call('XACK', KEYS[2], ARGV[3], ARGV[4])\n"
# KEYS: the delayed set, the stream. ARGV: how many at most.
# Returns {moved, ms until the next is due or -1, how many still wait}.
MOVE_SCRIPT = """
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', unpack(cjson.decode(member)['fields']))
  redis.call('ZREM', KEYS[1], member)
end
local moved = #due
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local waiting = redis.call('ZCARD', KEYS[1])
if head[2] then
  return {moved, math.max(0, tonumber(head[2]) - now_ms), waiting}
end
return {moved, -1, waiting}
"""
# The client logs every reconnect attempt at length; ours say it once.
CLIENT_LOGGERS = ("redis",)
TASKS_WAITING = Gauge(
    "tasks_waiting", "Retries and delayed tasks waiting in the delayed set, as this consumer last counted them."
)


@dataclass(frozen=True)
class Batch:
    """Commands for one round trip: (method name, arguments, keyword arguments) of redis-py's client."""

    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]
    transaction: bool = False  # MULTI/EXEC: all or nothing
    raise_on_error: bool = True  # False: an error reply comes back as the exception, in its place


@dataclass(frozen=True)
class Done:
    value: Any


Steps = Generator[Batch, list[Any], T]


def call(name: str, *args: Any, **kwargs: Any) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    return name, args, kwargs


def advance(steps: Steps[Any], replies: list[Any] | None) -> Batch | Done:
    """The conversation's next batch, given the replies to the last one (None to begin)."""
    try:
        return steps.send(replies) if replies is not None else next(steps)
    except StopIteration as finished:
        return Done(finished.value)


def pipeline_of(client: Any, batch: Batch) -> Any:
    """The batch queued on a pipeline of `client`, sync or asyncio alike; the caller executes it."""
    pipeline = client.pipeline(transaction=batch.transaction)
    for name, args, kwargs in batch.calls:
        getattr(pipeline, name)(*args, **kwargs)
    return pipeline


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


def task_fields(body: bytes, headers: Mapping[str, str]) -> dict[bytes, bytes]:
    """A new task's entry: the JSON in `body`; each header in a field of its own."""
    return {**{key.encode(): value.encode() for key, value in headers.items()}, BODY_FIELD: body}


def dead_letter_fields(
    fields: Mapping[bytes, bytes], entry_id: bytes, reason: str, deliveries: int, attempts: int
) -> Fields:
    """The original body, untouched, with why and where it came from, and how often it was tried."""
    return {
        BODY_FIELD: fields.get(BODY_FIELD, b""),
        b"reason": reason.encode(),
        b"source_id": entry_id,
        b"deliveries": str(deliveries).encode(),
        b"attempts": str(attempts).encode(),
    }


def delayed_member(fields: Mapping[bytes, bytes], origin: str, retries: int | None = None) -> str:
    """What the delayed set holds for one retry or delayed task: its fields (for a retry, with its
    retries counted), as the flat list XADD takes. Unique: `origin`, the entry a retry came from (a
    retry is a new entry each time) or a new task's id."""
    kept = {**fields} if retries is None else {**fields, RETRIES_FIELD: str(retries).encode()}
    flat = [part.decode() for key, value in kept.items() for part in (key, value)]
    return json.dumps({"from": origin, "fields": flat})


def delayed_set(settings: Settings) -> str:
    """Where retries and delayed tasks wait: a sorted set, scored by when each is due."""
    return f"{settings.queue_name}.delayed"


def delay_arguments(
    settings: Settings, body: bytes, headers: Mapping[str, str], task_id: str, delay_seconds: float
) -> tuple[Any, ...]:
    """EVAL's arguments that put a new task in the delayed set, due in `delay_seconds`."""
    member = delayed_member(task_fields(body, headers), task_id)
    return (DELAY_SCRIPT, 1, delayed_set(settings), round(delay_seconds * 1000), member)


def publish_commands(
    settings: Settings, body: bytes, headers: Mapping[str, str], task_id: str, delay_seconds: float
) -> list[tuple[Any, ...]]:
    """What a publisher sends, on one connection: XADD (or the delay script), then, with
    REDIS_WAIT_REPLICAS, WAIT for that many replicas to hold it (WAIT counts this connection's writes)."""
    if delay_seconds > 0:
        commands: list[tuple[Any, ...]] = [("EVAL", *delay_arguments(settings, body, headers, task_id, delay_seconds))]
    else:
        flat = [part for key, value in task_fields(body, headers).items() for part in (key, value)]
        commands = [("XADD", settings.queue_name, "*", *flat)]
    if settings.redis_wait_replicas:
        commands.append(("WAIT", settings.redis_wait_replicas, wait_milliseconds(settings)))
    return commands


def wait_milliseconds(settings: Settings) -> int:
    """WAIT's timeout: half the publish deadline, so a short count is answered (504) before the deadline is."""
    return max(1, int(settings.publish_timeout_seconds * 500))


def judge(settings: Settings, replies: list[Any]) -> None:
    """Raise unless the replies to publish_commands say Redis holds the task (and enough replicas do)."""
    first = replies[0]
    if isinstance(first, ResponseError):
        raise refused(settings, first)
    if settings.redis_wait_replicas:
        held_by = replies[1]
        if isinstance(held_by, ResponseError) or int(held_by) < settings.redis_wait_replicas:
            raise OutcomeUnknown(
                f"Redis at {settings.broker_address} holds the task but {held_by} of the"
                f" {settings.redis_wait_replicas} replicas asked for acknowledged it within"
                f" {wait_milliseconds(settings)} ms: a failover now could lose it"
            )


def refused(settings: Settings, error: RedisError) -> BrokerUnavailable:
    """An error reply (out of memory, READONLY, ...): Redis did not apply the command."""
    return BrokerUnavailable(f"Redis at {settings.broker_address} refused the task: {type(error).__name__}: {error}")


def unsent(settings: Settings, error: RedisError) -> BrokerUnavailable:
    """No connection, or the command could not be written whole: Redis cannot have applied it."""
    return BrokerUnavailable(f"Redis at {settings.broker_address} unreachable, the task not sent: {error!r}")


def unanswered(settings: Settings, error: RedisError) -> OutcomeUnknown:
    """The command went out and its reply did not come: Redis may hold the task."""
    return OutcomeUnknown(f"Redis at {settings.broker_address} sent no reply to the task ({error!r}): outcome unknown")


def read_failure(settings: Settings, error: RedisError, first: bool) -> BrokerUnavailable:
    """What a failed read of a reply means: Sentinel's client turns READONLY (a demoted primary that
    did not apply the command) into a ConnectionError, which is still a refusal; anything else may not be."""
    if first and isinstance(error.__context__, ResponseError):
        return refused(settings, error.__context__)
    return unanswered(settings, error)


def entries_of(response: Any) -> list[Entry]:
    """The entries of an XREADGROUP reply for one stream (redis-py types it loosely)."""
    return [entry for _, entries in cast("list[tuple[bytes, list[Entry]]]", response or []) for entry in entries]


@dataclass
class StreamConsumer:
    """One named consumer of the group: what it holds, and where it is in its own pending list."""

    settings: Settings
    in_hand: set[bytes] = field(default_factory=set)  # fetched, not yet settled
    unsent_acks: list[bytes] = field(default_factory=list)  # handled; XACK goes with the next round trip
    own_pending: bytes | None = b"0"  # after a (re)connect, first finish our own pending list
    next_claim: float = 0.0
    next_forget: float = 0.0
    next_move: float = 0.0  # when to look for due retries next (time.monotonic())

    @property
    def stream(self) -> str:
        return self.settings.queue_name

    @property
    def group(self) -> str:
        return self.settings.consumer_group

    @property
    def name(self) -> str:
        return self.settings.consumer_name

    @property
    def delayed(self) -> str:
        return delayed_set(self.settings)

    def describe(self) -> str:
        return f"{self.stream!r} as {self.name!r} in group {self.group!r}"

    def declare(self) -> Steps[None]:
        """Idempotent: the stream and the group; a new group starts at the stream's first entry."""
        self.in_hand.clear()
        self.own_pending, self.next_claim = b"0", 0.0
        [reply] = yield Batch(
            [call("xgroup_create", self.stream, self.group, id="0", mkstream=True)], raise_on_error=False
        )
        if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
            raise reply

    def fetch(self, max_count: int, wait_seconds: float) -> Steps[list[Delivery]]:
        """Abandoned messages first (now and then), then our own pending list, then new ones."""
        deliveries: list[Delivery] = []
        if time.monotonic() >= self.next_claim:
            deliveries = yield from self._reclaim(max_count)
            self.next_claim = time.monotonic() + claim_interval(self.settings)
        if time.monotonic() >= self.next_forget:
            yield from self._forget_idle()
            self.next_forget = time.monotonic() + min(60.0, self.settings.consumer_forget_seconds)
        free = max_count - len(deliveries)
        if free <= 0:
            return deliveries
        # Due retries go back into the stream in the read's round trip, just ahead of it.
        moving = [call("eval", MOVE_SCRIPT, 2, self.delayed, self.stream, MOVE_BATCH)]
        if time.monotonic() < self.next_move:
            moving = []
        if self.own_pending is not None:
            read = call("xreadgroup", self.group, self.name, {self.stream: self.own_pending}, free)
            *moved, reply = yield from self._send([*moving, read])
            entries = entries_of(reply)
            self.own_pending = entries[-1][0] if entries else None
            deliveries += yield from self._delivered(entries)
        else:
            # Blocked no longer than the next look for due retries (this one's, when it moves now).
            until_next_move = MOVE_INTERVAL_SECONDS if moving else max(0.0, self.next_move - time.monotonic())
            wait_ms = min(wait_seconds, until_next_move) * 1000
            block = max(1, min(IDLE_BLOCK_MILLISECONDS, int(wait_ms)))
            read = call("xreadgroup", self.group, self.name, {self.stream: ">"}, free, block)
            *moved, reply = yield from self._send([*moving, read])
            deliveries += [self._delivery(entry, 1) for entry in entries_of(reply)]
        if moved:
            self._moved(moved[0])
        return deliveries

    def _moved(self, reply: list[int]) -> None:
        """After the move script: look again when the next retry is due, or a little later anyway."""
        count, next_due_ms, waiting = reply
        TASKS_WAITING.set(waiting)
        wait = MOVE_INTERVAL_SECONDS if next_due_ms < 0 else min(MOVE_INTERVAL_SECONDS, next_due_ms / 1000)
        self.next_move = time.monotonic() + (0.0 if count >= MOVE_BATCH else wait)

    def _reclaim(self, free: int) -> Steps[list[Delivery]]:
        """Keep our own long handlers from looking abandoned; take over what others abandoned."""
        calls = []
        if self.in_hand:
            # JUSTID: resets the idle time without counting a delivery.
            calls.append(call("xclaim", self.stream, self.group, self.name, 0, sorted(self.in_hand), justid=True))
        idle_ms = int(self.settings.claim_idle_seconds * 1000)
        calls.append(call("xautoclaim", self.stream, self.group, self.name, idle_ms, "0-0", count=free))
        replies = yield from self._send(calls)
        _, claimed, *_ = replies[-1]
        entries = [(entry_id, fields) for entry_id, fields in claimed if entry_id not in self.in_hand]
        return (yield from self._delivered(entries))

    def _forget_idle(self) -> Steps[None]:
        """Remove the consumers of workers gone for good (their names pile up across restarts):
        idle for CONSUMER_FORGET_SECONDS, nothing pending. One still alive is back on its next read."""
        [consumers] = yield Batch([call("xinfo_consumers", self.stream, self.group)])
        idle_ms = self.settings.consumer_forget_seconds * 1000
        gone = [
            consumer["name"]
            for consumer in consumers
            if int(consumer["pending"]) == 0
            and int(consumer["idle"]) >= idle_ms
            and consumer["name"] != self.name.encode()
        ]
        if gone:
            yield Batch([call("xgroup_delconsumer", self.stream, self.group, name) for name in gone])

    def leave(self) -> Steps[None]:
        """On a clean stop: take our name out of the group, unless messages are still pending under it."""
        mine = call("xpending_range", self.stream, self.group, "-", "+", 1, consumername=self.name)
        [pending] = yield from self._send([mine])
        if not pending:
            yield Batch([call("xgroup_delconsumer", self.stream, self.group, self.name)])

    def _delivered(self, entries: list[Entry]) -> Steps[list[Delivery]]:
        """Deliveries for entries read again, with how often each was delivered (the pending list's count)."""
        if not entries:
            return []
        replies = yield Batch(
            [call("xpending_range", self.stream, self.group, entry_id, entry_id, 1) for entry_id, _ in entries]
        )
        return [
            self._delivery(entry, int(pending[0]["times_delivered"]) if pending else 1)
            for entry, pending in zip(entries, replies, strict=True)
        ]

    def _delivery(self, entry: Entry, deliveries: int) -> Delivery:
        entry_id, fields = entry
        fields = fields or {}
        self.in_hand.add(entry_id)
        headers = text_headers((key, value) for key, value in fields.items() if key != BODY_FIELD)
        extra = {"fields": fields, "deliveries": deliveries}
        retries = retries_of(fields) + deliveries - 1
        return Delivery(fields.get(BODY_FIELD, b""), headers, retries, entry_id, extra=extra)

    def ack(self, deliveries: list[Delivery]) -> Steps[None]:
        if deliveries:
            ids = [delivery.handle for delivery in deliveries]
            self.in_hand.difference_update(ids)
            yield Batch([call("xack", self.stream, self.group, *ids)])

    def ack_later(self, deliveries: list[Delivery]) -> None:
        """Acknowledge with the next round trip (`flush`, or a fetch's read) instead of one of its own."""
        for delivery in deliveries:
            self.in_hand.discard(delivery.handle)
            self.unsent_acks.append(delivery.handle)

    def flush(self) -> Steps[None]:
        """Send what `ack_later` holds, if anything."""
        if self.unsent_acks:
            yield from self._send([])

    def _send(self, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> Steps[list[Any]]:
        """One round trip, with the acknowledgements not yet sent ahead of `calls`. They are
        forgotten only once Redis replied: after a lost connection they go with the next session's
        first round trip, before its read of our own pending list (which would deliver them again)."""
        if not self.unsent_acks:
            return (yield Batch(calls))
        sent = len(self.unsent_acks)
        replies = yield Batch([call("xack", self.stream, self.group, *self.unsent_acks), *calls])
        del self.unsent_acks[:sent]
        return replies[1:]

    def retry(self, delivery: Delivery, delay_seconds: float) -> Steps[None]:
        """Into the delayed set, due in `delay_seconds`, and the original acknowledged, at once."""
        self.in_hand.discard(delivery.handle)
        member = delayed_member(delivery.extra["fields"], delivery.handle.decode(), delivery.retries + 1)
        delay_ms = max(0, round(delay_seconds * 1000))
        script = call("eval", WAIT_SCRIPT, 2, self.delayed, self.stream, delay_ms, member, self.group, delivery.handle)
        yield Batch([script])
        self.next_move = min(self.next_move, time.monotonic() + delay_seconds)

    def dead_letter(self, delivery: Delivery, reason: str) -> Steps[None]:
        """The dead letter written and the original acknowledged, together or not at all."""
        self.in_hand.discard(delivery.handle)
        deliveries = delivery.extra["deliveries"]
        fields = dead_letter_fields(delivery.extra["fields"], delivery.handle, reason, deliveries, delivery.retries + 1)
        yield Batch(
            [
                call("xadd", self.settings.dead_letter_queue, fields),
                call("xack", self.stream, self.group, delivery.handle),
            ],
            transaction=True,
        )


class StreamTransport:
    """What both Redis transports tell the runner, and the consumer state they share."""

    errors: tuple[type[BaseException], ...] = (RedisError,)
    finish_unstarted = True  # what is left pending is claimed again only after CLAIM_IDLE_SECONDS

    def __init__(self, settings: Settings, capacity: int) -> None:
        self._stream = StreamConsumer(settings)
        self.capacity = capacity
        self._leaving = False  # stopping for good: leave the group on close


def retries_of(fields: Mapping[bytes, bytes]) -> int:
    """The retries an entry put back after a wait carries; none for any other (or a mangled count)."""
    try:
        return max(0, int(fields.get(RETRIES_FIELD, b"0")))
    except ValueError:
        return 0


def claim_interval(settings: Settings) -> float:
    """How often to look for messages abandoned by dead consumers, and to refresh our own."""
    return max(0.1, min(5.0, settings.claim_idle_seconds / 3))
