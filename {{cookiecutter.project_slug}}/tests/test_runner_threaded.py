"""Unit tests of the runner with an in-memory transport: what it takes, settles, retries, bounds,
and how it reconnects and drains. The real transports are tested against the real broker."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel

from {{ cookiecutter.project_slug }}.brokers.base import Delivery
from {{ cookiecutter.project_slug }}.messages import TaskMessage, encode
from {{ cookiecutter.project_slug }}.processing import Outcome, Processor, RetryDelays, Verdict
from {{ cookiecutter.project_slug }}.runner_threaded import InHand, Runner
from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from .helpers import Recorder

QUICK_RETRIES = RetryDelays(first=0.05)  # retries come back at once, near enough


class Lost(Exception):
    """The fake connection broke."""


class FakeTransport:
    """A queue in memory that records what the runner asked of it."""

    errors: tuple[type[BaseException], ...] = (Lost,)
    finish_unstarted = False
    handlers_may_hold_thread = True

    def __init__(self, bodies: Sequence[bytes], capacity: int = 4, lanes: int = 0) -> None:
        self.capacity = capacity
        self._lanes = itertools.cycle(range(lanes)) if lanes else None
        self._waiting = list(bodies)
        self._lock = threading.Lock()
        self.opened = 0
        self.fail_next_fetch = False
        self.acked: list[bytes] = []
        self.retried: list[tuple[bytes, int]] = []
        self.dead: list[tuple[bytes, str]] = []
        self.most_in_hand = 0
        self._in_hand = 0

    def open(self) -> str:
        self.opened += 1
        return "the fake queue"

    def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        if self.fail_next_fetch:
            self.fail_next_fetch = False
            raise Lost("cut")
        with self._lock:
            taken, self._waiting = self._waiting[:max_count], self._waiting[max_count:]
            self._in_hand += len(taken)
            self.most_in_hand = max(self.most_in_hand, self._in_hand)
        if not taken:
            time.sleep(wait_seconds)
        lane = (lambda: next(self._lanes)) if self._lanes else (lambda: None)
        return [Delivery(body, {}, 0, body, lane()) for body in taken]

    def pump(self) -> None:
        pass

    def unsubscribe(self) -> int:
        return 0

    def _settled(self) -> None:
        with self._lock:
            self._in_hand -= 1

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self.acked.append(delivery.body)
            self._settled()

    def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        self.retried.append((delivery.body, delivery.retries))
        self._settled()

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self.dead.append((delivery.body, reason))
        self._settled()

    def close(self) -> None:
        pass


def task(type_: str, task_id: str, seconds: float = 0.0) -> bytes:
    return encode(TaskMessage(id=task_id, type=type_, payload={"seconds": seconds}))


def settings(**overrides: object) -> Settings:
    return Settings(max_retries=2, shutdown_timeout_seconds=5, handler_threads=4).model_copy(update=overrides)


@pytest.fixture
def run(registry: TaskRegistry) -> Iterator[Callable[[FakeTransport], Runner]]:
    """Start a runner on a transport; it is stopped at the end of the test."""
    runners: list[Runner] = []

    def start(transport: FakeTransport) -> Runner:
        runner = Runner(transport, Processor(registry, 2, QUICK_RETRIES), settings())
        asyncio.run(runner.start())
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        asyncio.run(runner.stop())


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_every_message_is_handled_then_acknowledged(run: Callable[[FakeTransport], Runner], recorder: Recorder) -> None:
    bodies = [task("record", f"t-{n}") for n in range(20)]
    transport = FakeTransport(bodies)
    runner = run(transport)
    assert eventually(lambda: len(transport.acked) == 20)
    assert sorted(transport.acked) == sorted(bodies)
    assert sorted(recorder.finished) == sorted(f"t-{n}" for n in range(20))
    assert runner.is_running()


def test_no_more_than_the_capacity_is_ever_in_hand(run: Callable[[FakeTransport], Runner]) -> None:
    transport = FakeTransport([task("record", f"t-{n}", 0.02) for n in range(30)], capacity=3)
    run(transport)
    assert eventually(lambda: len(transport.acked) == 30)
    assert transport.most_in_hand == 3


def test_the_in_hand_gauge_counts_what_the_runner_holds(
    run: Callable[[FakeTransport], Runner], recorder: Recorder
) -> None:
    transport = FakeTransport([task("record", f"t-{n}", 0.5) for n in range(3)], capacity=4)
    run(transport)
    assert recorder.wait_started(3)
    assert REGISTRY.get_sample_value("tasks_in_hand") == 3
    assert eventually(lambda: len(transport.acked) == 3)
    assert eventually(lambda: REGISTRY.get_sample_value("tasks_in_hand") == 0)


def test_a_failing_message_goes_back_to_the_broker_or_to_the_dead_letters(
    run: Callable[[FakeTransport], Runner],
) -> None:
    transport = FakeTransport([task("explode", "bad"), b"not json"])
    run(transport)
    assert eventually(lambda: len(transport.retried) == 1 and len(transport.dead) == 1)
    assert transport.retried == [(task("explode", "bad"), 0)]
    assert "not a task message" in transport.dead[0][1]


def test_a_retry_in_a_lane_goes_back_to_the_broker_and_the_lane_goes_on(
    run: Callable[[FakeTransport], Runner], recorder: Recorder
) -> None:
    transport = FakeTransport([task("explode", "bad"), task("record", "good")], lanes=1)
    run(transport)
    assert eventually(lambda: transport.acked == [task("record", "good")])
    assert recorder.started == ["bad", "good"]
    assert transport.retried == [(task("explode", "bad"), 0)]


def test_a_lost_connection_is_opened_again_and_said_once(
    run: Callable[[FakeTransport], Runner], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    transport = FakeTransport([task("record", "after")])
    transport.fail_next_fetch = True
    run(transport)
    assert eventually(lambda: transport.acked == [task("record", "after")])
    assert transport.opened == 2
    lost = [record for record in caplog.records if "lost the broker" in record.getMessage()]
    assert len(lost) == 1
    assert lost[0].levelno == logging.WARNING


def test_stopping_finishes_what_runs_and_says_so(
    registry: TaskRegistry, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    transport = FakeTransport([task("record", f"slow-{n}", 0.3) for n in range(4)], capacity=4)
    runner = Runner(transport, Processor(registry, 2, QUICK_RETRIES), settings())
    asyncio.run(runner.start())
    assert recorder.wait_started(4)
    asyncio.run(runner.stop())
    assert len(transport.acked) == 4
    assert not runner.is_running()
    assert "consumer stopped: 4 message(s) finished while draining, 0 returned unstarted, 0 interrupted" in caplog.text


@pytest.mark.parametrize("threads", [2, 1], ids=["pool", "inline"])
def test_after_a_message_left_unsettled_nothing_more_of_its_lane_runs(threads: int) -> None:
    """What comes later in the lane, even fetched after the failure, waits to be delivered again."""
    handled: list[bytes] = []

    def handle(delivery: Delivery) -> tuple[Delivery, Verdict] | None:
        handled.append(delivery.body)
        return None if delivery.body == b"unsettled" else (delivery, Verdict(Outcome.SUCCEEDED))

    def settle_all(in_hand: InHand) -> list[bytes]:
        settled = []
        deadline = time.monotonic() + 5
        while len(in_hand) and time.monotonic() < deadline:
            settled += [delivery.body for delivery, _ in in_hand.finished(0.1)]
        return settled

    with ThreadPoolExecutor(threads) as pool:
        in_hand = InHand(pool if threads > 1 else None, threads, handle)
        in_hand.add([Delivery(b"unsettled", {}, 0, None, "lane"), Delivery(b"behind it", {}, 0, None, "lane")])
        assert settle_all(in_hand) == []
        in_hand.add([Delivery(b"fetched after it", {}, 0, None, "lane"), Delivery(b"another", {}, 0, None, "other")])
        assert settle_all(in_hand) == [b"another"]
    assert handled == [b"unsettled", b"another"]
    assert in_hand.lane_broken
    assert len(in_hand) == 0


class CountingPool(ThreadPoolExecutor):
    def __init__(self, threads: int) -> None:
        super().__init__(threads)
        self.submitted = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(*args, **kwargs)


def test_a_fetched_batch_is_handed_over_once_per_thread_not_per_message() -> None:
    def handle(delivery: Delivery) -> tuple[Delivery, Verdict]:
        return delivery, Verdict(Outcome.SUCCEEDED)

    with CountingPool(3) as pool:
        in_hand = InHand(pool, 3, handle)
        in_hand.add([Delivery(str(n).encode(), {}, 0, n, None) for n in range(30)])
        settled: list[Delivery] = []
        deadline = time.monotonic() + 5
        while len(settled) < 30 and time.monotonic() < deadline:
            settled += [delivery for delivery, _ in in_hand.finished(0.1)]
    assert sorted(delivery.handle for delivery in settled) == list(range(30))
    assert pool.submitted == 3
    assert len(in_hand) == 0


class NoPayload(BaseModel):
    pass


def where_handlers_run(registry: TaskRegistry, transport: FakeTransport, threads: int) -> set[str]:
    ran_in: set[str] = set()

    @registry.task("where", NoPayload)
    def where(payload: NoPayload, message: TaskMessage) -> None:
        ran_in.add(threading.current_thread().name)

    runner = Runner(transport, Processor(registry, 2, QUICK_RETRIES), settings(handler_threads=threads))
    asyncio.run(runner.start())
    try:
        assert eventually(lambda: len(transport.acked) == 5)
    finally:
        asyncio.run(runner.stop())
    return ran_in


def test_with_one_handler_thread_handlers_run_in_the_consumers_own(registry: TaskRegistry) -> None:
    transport = FakeTransport([task("where", f"t-{n}") for n in range(5)])
    assert where_handlers_run(registry, transport, threads=1) == {"broker-consumer"}


def test_a_connection_that_needs_its_thread_keeps_it_even_with_one_handler_thread(registry: TaskRegistry) -> None:
    transport = FakeTransport([task("where", f"t-{n}") for n in range(5)])
    transport.handlers_may_hold_thread = False  # a connection that sends heartbeats from that thread
    ran_in = where_handlers_run(registry, transport, threads=1)
    assert len(ran_in) == 1
    assert "broker-consumer" not in ran_in
