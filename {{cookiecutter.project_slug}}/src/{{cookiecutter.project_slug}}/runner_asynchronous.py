"""The consumer for every broker, written once: an asyncio task that owns the broker's transport,
a task per message in hand, and the rules for reconnecting, holding, settling and draining.
Brokers supply only a `Transport` (brokers/<broker>/asynchronous.py)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Protocol

from .brokers.base import Backoff, Delivery
from .metrics import TASKS_IN_HAND
from .processing import Processor
from .runner_base import OutageLog, describe, log_stopped, refill_size
from .settlement import settlement

if TYPE_CHECKING:
    from .settings import Settings

logger = logging.getLogger(__name__)

IDLE_FETCH_SECONDS = 1.0  # how long a fetch waits for a message; the loop checks for a stop between fetches
JOIN_MARGIN_SECONDS = 5.0  # over the shutdown timeout, for closing the connection
# A place free this long is filled even if a batch's worth is not: handlers that wait on I/O free
# places one at a time, and an idle place costs them more than a fetch for fewer messages.
REFILL_WAIT_SECONDS = 0.001


class Transport(Protocol):
    """What one broker supplies: its connection, and its own bookkeeping (retry counts, offsets).
    Every method but `close` may raise one of `errors`."""

    errors: tuple[type[BaseException], ...]  # the connection is gone: the runner reconnects
    capacity: int  # the most deliveries in hand at once
    finish_unstarted: bool  # on stop, handle what was fetched but not started: the broker would hold it back

    async def open(self) -> str:
        """Connect, declare, subscribe; return what is consumed, for the log."""

    async def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        """Up to `max_count` deliveries; waits up to `wait_seconds` for the first."""

    async def unsubscribe(self) -> int:
        """Take no new messages (those in hand can still be settled); return how many fetched
        ones it gave back unhandled."""

    async def ack(self, deliveries: Sequence[Delivery]) -> None: ...

    async def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        """Have the broker hold it for `delay_seconds`, then deliver it again with one retry more;
        settles the original."""

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move it to the dead letters with the reason; settles the original."""

    async def close(self) -> None:
        """Disconnect; what is not settled comes back to a consumer. Never raises."""


async def sleep_unless_stopping(stopping: asyncio.Event, delay: float) -> bool:
    """Sleep for `delay` seconds, or less if `stopping` is set meanwhile; True if it was."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), delay)
    return stopping.is_set()


async def keep_connected(
    session: Callable[[Callable[[], None]], Awaitable[None]],
    stopping: asyncio.Event,
    errors: tuple[type[BaseException], ...],
    what: str,
) -> None:
    """Run `session` until `stopping` is set; when it fails, wait a jittered backoff and run it
    again. `session` calls its argument once connected. The broker's errors are an outage, said
    a few times a minute at most; any other error is a bug, logged with its traceback, and the
    loop carries on."""
    backoff = Backoff()
    outage = OutageLog(what)

    def connected() -> None:
        backoff.reset()
        outage.connected()

    while not stopping.is_set():
        try:
            await session(connected)
        except errors as error:
            outage.failed(error)
        except Exception:
            logger.exception("%s failed unexpectedly; starting over", what)
        await sleep_unless_stopping(stopping, backoff.next_delay())


def connect_in_background(
    session: Callable[[Callable[[], None]], Awaitable[None]],
    stopping: asyncio.Event,
    errors: tuple[type[BaseException], ...],
    what: str,
) -> asyncio.Task[None]:
    """A publisher's connecting, kept going by keep_connected in a task of its own."""
    return asyncio.create_task(keep_connected(session, stopping, errors, what), name="broker-publisher-connect")


class Runner:
    """A Consumer: consumes as an asyncio task that owns the transport; each message in hand is a task."""

    def __init__(self, transport: Transport, processor: Processor, settings: Settings) -> None:
        self._transport = transport
        self._processor = processor
        self._settings = settings
        self._stopping = asyncio.Event()
        self._consuming = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="broker-consumer")

    def is_running(self) -> bool:
        return self._consuming and self._task is not None and not self._task.done()

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is None:
            return
        bound = self._settings.shutdown_timeout_seconds + IDLE_FETCH_SECONDS + JOIN_MARGIN_SECONDS
        try:
            await asyncio.wait_for(asyncio.shield(self._task), bound)
        except TimeoutError:
            logger.warning("the consumer did not stop within %.0f s; cancelling it", bound)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        what = f"consumer ({self._settings.broker_address})"
        await keep_connected(self._session, self._stopping, self._transport.errors, what)

    async def _session(self, connected: Callable[[], None]) -> None:
        """One connection: consume until stopping (then drain) or until the connection fails."""
        in_hand = InHand(lambda delivery: self._handle(delivery, acks))
        acks = Acknowledger(self._transport, in_hand.release)
        try:
            source = await self._transport.open()
            connected()
            self._consuming = True
            logger.info("consuming %s", source)
            while not self._stopping.is_set():
                await self._step(in_hand)
            await self._drain(in_hand)
        finally:
            self._consuming = False
            in_hand.cancel()  # after a lost connection: what is in hand is delivered again anyway
            acks.cancel()
            await self._transport.close()

    async def _step(self, in_hand: InHand) -> None:
        """Take what there is room for, once there is room for a batch or a place has been free a while."""
        if in_hand.lane_broken and not self._stopping.is_set():  # stopping: the drain follows
            raise RuntimeError("a message of an ordered lane was not settled; reading it again from the broker")
        capacity, batch = self._transport.capacity, refill_size(self._transport.capacity)
        free = capacity - len(in_hand)
        if free == 0:
            await in_hand.wait_for_room(capacity - 1, IDLE_FETCH_SECONDS, self._stopping)
            return
        if free < batch:
            await in_hand.wait_for_room(capacity - batch, REFILL_WAIT_SECONDS, self._stopping)
            if self._stopping.is_set():
                return
            free = capacity - len(in_hand)
        for delivery in await self._transport.fetch(free, IDLE_FETCH_SECONDS):
            in_hand.add(delivery)

    async def _handle(self, delivery: Delivery, acks: Acknowledger) -> Settling:
        """Process, then settle: a retry or a dead letter at once, an acknowledgement in the next batch."""
        verdict = await self._processor.process(delivery.body, delivery.retries, delivery.headers)
        plan = settlement([(delivery, verdict)])
        if plan.acks:
            acks.add(delivery)
            return Settling.ACKING
        try:
            for retried, delay in plan.retries:
                await self._transport.retry(retried, delay)
            for dead, reason in plan.dead_letters:
                await self._transport.dead_letter(dead, reason)
        except self._transport.errors as error:
            logger.warning("could not settle a message; it will be delivered again: %s", describe(error))
            return Settling.LEFT
        return Settling.DONE

    async def _drain(self, in_hand: InHand) -> None:
        """Take nothing new; finish what runs; leave the rest unsettled, so the broker delivers it again."""
        unstarted = await self._transport.unsubscribe()
        if not self._transport.finish_unstarted:
            unstarted += in_hand.drop_waiting()
        held = len(in_hand)
        await in_hand.wait_empty(time.monotonic() + self._settings.shutdown_timeout_seconds)
        interrupted = in_hand.cancel()  # neither acked nor rejected: the broker delivers them again
        log_stopped(held - interrupted, unstarted, interrupted)


class Settling(enum.Enum):
    """Where a handled delivery stands."""

    DONE = "settled"
    ACKING = "in the next acknowledgement"  # in hand until the Acknowledger releases it
    LEFT = "left unsettled"  # the broker delivers it again


class InHand:
    """The deliveries one connection holds, from fetch to settle, each handled in a task; the
    deliveries of one lane one at a time, in the order they came."""

    def __init__(self, handle: Callable[[Delivery], Awaitable[Settling]]) -> None:
        self._handle = handle
        self._tasks: set[asyncio.Task[None]] = set()
        self._lanes: dict[Hashable, collections.deque[Delivery]] = {}  # lanes busy, with what waits in each
        self._broken: set[Hashable] = set()  # lanes that left a message unsettled: nothing more of them runs
        self._count = 0
        self._room = asyncio.Event()
        self._room_at = 0  # set `_room` once no more than this many are in hand
        TASKS_IN_HAND.set_function(self.__len__)  # read when /metrics is: nothing to update per message

    def __len__(self) -> int:
        return self._count

    @property
    def lane_broken(self) -> bool:
        """A lane lost a message unsettled: nothing after it may be settled."""
        return bool(self._broken)

    def add(self, delivery: Delivery) -> None:
        lane = delivery.lane
        if lane in self._broken:
            return  # not settled: it is delivered again, after the message its lane left unsettled
        self._count += 1
        if lane is not None:
            if lane in self._lanes:
                self._lanes[lane].append(delivery)
                return
            self._lanes[lane] = collections.deque()
        task = asyncio.create_task(self._run(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, delivery: Delivery | None) -> None:
        """One delivery, then the rest of its lane. A delivery is in hand until it is settled; the
        lane goes on while its acknowledgement is under way."""
        while delivery is not None:
            settling = Settling.LEFT
            try:
                settling = await self._handle(delivery)
            finally:
                if settling is not Settling.ACKING:
                    self.release(1)
            delivery = self._next_in_lane(delivery.lane, failed=settling is Settling.LEFT)

    def release(self, count: int) -> None:
        """`count` deliveries are settled, or will be delivered again: no longer in hand."""
        self._count -= count
        if self._count <= self._room_at:
            self._room.set()

    def _next_in_lane(self, lane: Hashable | None, failed: bool) -> Delivery | None:
        if lane is None:
            return None
        waiting = self._lanes[lane]
        if failed:
            # Not settled: what comes after it in the lane must not be settled before it is delivered again.
            self._broken.add(lane)
            self.release(len(waiting))
            waiting.clear()
        if waiting:
            return waiting.popleft()
        del self._lanes[lane]
        return None

    async def wait_for_room(self, most: int, wait_seconds: float, stopping: asyncio.Event | None = None) -> None:
        """Until no more than `most` are in hand, or `stopping` is set, for `wait_seconds` at most."""
        self._room_at = most
        if self._count <= most:
            return
        self._room.clear()
        waits = {asyncio.ensure_future(self._room.wait())}
        if stopping is not None:
            waits.add(asyncio.ensure_future(stopping.wait()))
        _, pending = await asyncio.wait(waits, timeout=wait_seconds, return_when=asyncio.FIRST_COMPLETED)
        for waiting in pending:
            waiting.cancel()

    def drop_waiting(self) -> int:
        """Drop what waits in a lane, unstarted; return how many."""
        dropped = sum(len(waiting) for waiting in self._lanes.values())
        for waiting in self._lanes.values():
            waiting.clear()
        self.release(dropped)
        return dropped

    async def wait_empty(self, deadline: float) -> None:
        while self._count > 0 and (left := deadline - time.monotonic()) > 0:
            await self.wait_for_room(0, left)

    def cancel(self) -> int:
        """Cancel every task still running; return how many deliveries they held."""
        held = self._count
        for task in self._tasks:
            task.cancel()
        return held


class Acknowledger:
    """Acknowledges in batches, one batch at a time: each holds what was handled while the one
    before was under way. An idle consumer acknowledges at once; a busy one once per round trip,
    not once per message. The runner's bound on messages in hand bounds the batch."""

    def __init__(self, transport: Transport, release: Callable[[int], None]) -> None:
        self._transport = transport
        self._release = release  # called with how many left hand: acknowledged, or to be delivered again
        self._waiting: list[Delivery] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, delivery: Delivery) -> None:
        self._waiting.append(delivery)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._send(), name="broker-acks")

    async def _send(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await self._transport.ack(batch)
            except self._transport.errors as error:
                logger.warning(
                    "could not acknowledge %d message(s); they will be delivered again: %s", len(batch), describe(error)
                )
            finally:
                self._release(len(batch))

    def cancel(self) -> None:
        """The connection is gone: what waits is delivered again."""
        if self._task is not None:
            self._task.cancel()
        self._release(len(self._waiting))
        self._waiting.clear()
