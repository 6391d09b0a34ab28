"""The consumer for every broker, written once: a thread that owns the broker's transport, a pool
that runs handlers, and the rules for reconnecting, holding, settling and draining messages.
Brokers supply only a `Transport` (brokers/<broker>/threaded.py)."""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from .brokers.base import Backoff, Delivery
from .metrics import TASKS_IN_HAND
from .processing import Processor, Verdict
from .runner_base import OutageLog, log_stopped, refill_size
from .settlement import settlement

if TYPE_CHECKING:
    from .settings import Settings

logger = logging.getLogger(__name__)

IDLE_FETCH_SECONDS = 1.0  # how long a fetch waits for a message when nothing is in hand
BUSY_FETCH_SECONDS = 0.01  # ... and while handlers run: their results are settled this soon
JOIN_MARGIN_SECONDS = 5.0  # over the shutdown timeout, for closing the connection


class Transport(Protocol):
    """What one broker supplies: a connection owned by the consumer's thread, and its own
    bookkeeping (retry counts, offsets). Every method but `close` may raise one of `errors`."""

    errors: tuple[type[BaseException], ...]  # the connection is gone: the runner reconnects
    capacity: int  # the most deliveries in hand at once
    finish_unstarted: bool  # on stop, handle what was fetched but not started: the broker would hold it back
    # The connection lives through a handler holding the consumer's thread (nothing to send meanwhile):
    # with HANDLER_THREADS=1, handlers then run in that thread.
    handlers_may_hold_thread: bool

    def open(self) -> str:
        """Connect, declare, subscribe; return what is consumed, for the log."""

    def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        """Up to `max_count` deliveries; waits up to `wait_seconds` for the first."""

    def pump(self) -> None:
        """Serve the connection (heartbeats, delivery reports) without taking messages."""

    def unsubscribe(self) -> int:
        """Take no new messages (those in hand can still be settled); return how many fetched
        ones it gave back unhandled."""

    def ack(self, deliveries: Sequence[Delivery]) -> None: ...

    def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        """Have the broker hold it for `delay_seconds`, then deliver it again with one retry more;
        settles the original."""

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move it to the dead letters with the reason; settles the original."""

    def close(self) -> None:
        """Disconnect; what is not settled comes back to a consumer. Never raises."""


def keep_connected(
    session: Callable[[Callable[[], None]], None],
    stopping: threading.Event,
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
            session(connected)
        except errors as error:
            outage.failed(error)
        except Exception:
            logger.exception("%s failed unexpectedly; starting over", what)
        stopping.wait(backoff.next_delay())


class Runner:
    """A Consumer: consumes in a background thread that owns the transport; handlers run in a pool
    (or in that thread, with HANDLER_THREADS=1, where the transport allows)."""

    def __init__(self, transport: Transport, processor: Processor, settings: Settings) -> None:
        self._transport = transport
        self._processor = processor
        self._settings = settings
        self._stopping = threading.Event()
        self._consuming = threading.Event()
        # One handler thread: handlers run in the consumer's own, with no hand-over, where the
        # connection does not need that thread while they run (no heartbeats of its own to send).
        inline = settings.handler_threads == 1 and transport.handlers_may_hold_thread
        self._pool = None if inline else ThreadPoolExecutor(settings.handler_threads, thread_name_prefix="handler")
        self._thread = threading.Thread(target=self._run, name="broker-consumer", daemon=True)

    async def start(self) -> None:
        self._thread.start()

    def is_running(self) -> bool:
        return self._consuming.is_set() and self._thread.is_alive()

    async def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            bound = self._settings.shutdown_timeout_seconds + JOIN_MARGIN_SECONDS
            await asyncio.to_thread(self._thread.join, bound)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        what = f"consumer ({self._settings.broker_address})"
        keep_connected(self._session, self._stopping, self._transport.errors, what)

    def _session(self, connected: Callable[[], None]) -> None:
        """One connection: consume until stopping (then drain) or until the connection fails."""
        try:
            source = self._transport.open()
            connected()
            self._consuming.set()
            logger.info("consuming %s", source)
            in_hand = InHand(self._pool, self._settings.handler_threads, self._handle)
            while not self._stopping.is_set():
                self._step(in_hand)
            self._drain(in_hand)
        finally:
            self._consuming.clear()
            self._transport.close()

    def _step(self, in_hand: InHand) -> None:
        """Settle what finished, then take what there is room for (or only serve the connection)."""
        self._settle(in_hand.finished(0))
        if in_hand.lane_broken and not self._stopping.is_set():  # stopping: the drain follows
            raise RuntimeError("a message of an ordered lane was not settled; reading it again from the broker")
        free = self._transport.capacity - len(in_hand)
        if free < refill_size(self._transport.capacity):
            self._settle(in_hand.finished(BUSY_FETCH_SECONDS))
            self._transport.pump()
            return
        timeout = BUSY_FETCH_SECONDS if len(in_hand) else IDLE_FETCH_SECONDS
        in_hand.add(self._transport.fetch(free, timeout))

    def _settle(self, finished: list[tuple[Delivery, Verdict]]) -> None:
        """In the consumer's thread, which owns the connection. A failure ends the connection:
        what was not settled is delivered again."""
        if not finished:
            return
        plan = settlement(finished)
        for delivery, delay in plan.retries:
            self._transport.retry(delivery, delay)
        for delivery, reason in plan.dead_letters:
            self._transport.dead_letter(delivery, reason)
        self._transport.ack(plan.acks)

    def _handle(self, delivery: Delivery) -> tuple[Delivery, Verdict]:
        """Runs in a handler thread."""
        return delivery, self._processor.process(delivery.body, delivery.retries, delivery.headers)

    def _drain(self, in_hand: InHand) -> None:
        """Take nothing new; finish what runs; leave the rest unsettled, so the broker delivers it again."""
        unstarted = self._transport.unsubscribe()
        if not self._transport.finish_unstarted:
            unstarted += in_hand.cancel_unstarted()
        finished = 0
        deadline = time.monotonic() + self._settings.shutdown_timeout_seconds
        while len(in_hand) and time.monotonic() < deadline:
            done = in_hand.finished(BUSY_FETCH_SECONDS)
            self._settle(done)
            finished += len(done)
            self._transport.pump()
        log_stopped(finished, unstarted, len(in_hand))


class InHand:
    """The deliveries one connection holds, from fetch to settle. The consumer's thread adds and
    settles them; handler threads put each result on a queue as it is ready. A fetched batch is
    handed over at once: each thread set to work takes the next delivery itself, with no hop back
    to the consumer's thread per message. The deliveries of one lane run one at a time, in the
    order they came, in one thread. Without a pool, they run in the consumer's thread as added."""

    def __init__(
        self,
        pool: ThreadPoolExecutor | None,
        threads: int,
        handle: Callable[[Delivery], tuple[Delivery, Verdict] | None],
    ) -> None:
        self._pool = pool
        self._threads = threads
        self._handle = handle
        self._results: queue.SimpleQueue[tuple[Delivery, tuple[Delivery, Verdict] | None]] = queue.SimpleQueue()
        self._lock = threading.Lock()  # for what handler threads touch too: what waits, and who takes it
        self._unordered: collections.deque[Delivery] = collections.deque()  # of no lane, not yet started
        self._takers = 0  # runs taking from `_unordered`, at most one per thread
        self._lanes: dict[Hashable, collections.deque[Delivery]] = {}  # lanes busy, with what waits in each
        self._broken: set[Hashable] = set()  # lanes that left a message unsettled: nothing more of them runs
        self._count = 0  # the consumer's thread's alone
        self.lane_broken = False  # a lane lost a message unsettled: nothing after it may be settled
        TASKS_IN_HAND.set_function(self.__len__)  # read when /metrics is: nothing to update per message

    def __len__(self) -> int:
        return self._count

    def add(self, deliveries: Sequence[Delivery]) -> None:
        self._count += len(deliveries)
        runs: list[Hashable | None] = []  # a run per lane that was idle, and per taker of no lane
        with self._lock:
            for delivery in deliveries:
                lane = delivery.lane
                if lane is None:
                    self._unordered.append(delivery)
                elif lane in self._broken:
                    self._results.put((delivery, None))
                elif lane in self._lanes:
                    self._lanes[lane].append(delivery)
                else:
                    self._lanes[lane] = collections.deque([delivery])
                    runs.append(lane)
            takers = min(self._threads - self._takers, len(self._unordered))
            self._takers += takers
        runs += [None] * takers
        for lane in runs:
            if self._pool is None:
                self._run(lane)
            else:
                self._pool.submit(self._run, lane)

    def _run(self, lane: Hashable | None) -> None:
        """In a handler thread: the next delivery of `lane` (None: of no lane) until none waits."""
        while (delivery := self._take(lane)) is not None:
            try:
                outcome = self._handle(delivery)
            except Exception:
                # The processor never raises for a message; this is a bug, or the interpreter shutting down.
                logger.exception("processing crashed; the message will be delivered again")
                outcome = None
            self._results.put((delivery, outcome))
            if outcome is None and lane is not None:
                self._break(lane)
                return

    def _take(self, lane: Hashable | None) -> Delivery | None:
        with self._lock:
            if lane is None:
                if self._unordered:
                    return self._unordered.popleft()
                self._takers -= 1
                return None
            waiting = self._lanes[lane]
            if waiting:
                return waiting.popleft()
            del self._lanes[lane]
            return None

    def _break(self, lane: Hashable) -> None:
        """Not settled: what comes after it in the lane must not be settled before it is delivered again."""
        with self._lock:
            waiting = self._lanes.pop(lane)
            self._broken.add(lane)
        for dropped in waiting:
            self._results.put((dropped, None))

    def finished(self, timeout: float) -> list[tuple[Delivery, Verdict]]:
        """What handlers finished, waiting up to `timeout` for the first."""
        results = []
        try:
            results.append(self._results.get(timeout=timeout) if timeout else self._results.get_nowait())
            while True:
                results.append(self._results.get_nowait())
        except queue.Empty:
            pass
        settled = []
        for delivery, outcome in results:
            self._count -= 1
            if outcome is not None:
                settled.append(outcome)
            elif delivery.lane is not None:
                self.lane_broken = True
        return settled

    def cancel_unstarted(self) -> int:
        """Drop what no handler has started; return how many. A run set to work finds nothing left."""
        with self._lock:
            dropped = len(self._unordered) + sum(len(waiting) for waiting in self._lanes.values())
            self._unordered.clear()
            for waiting in self._lanes.values():
                waiting.clear()
        self._count -= dropped
        return dropped
