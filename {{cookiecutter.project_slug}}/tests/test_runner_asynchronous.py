"""Unit tests of the runner with an in-memory transport: what it takes, settles, retries, bounds,
and how it reconnects and drains. The real transports are tested against the real broker."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence

import pytest
from prometheus_client import REGISTRY

from {{ cookiecutter.project_slug }}.brokers.base import Delivery
from {{ cookiecutter.project_slug }}.messages import TaskMessage, encode
from {{ cookiecutter.project_slug }}.processing import Processor, RetryDelays
from {{ cookiecutter.project_slug }}.runner_asynchronous import Acknowledger, InHand, Runner, Settling
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

    def __init__(self, bodies: Sequence[bytes], capacity: int = 4, lanes: int = 0) -> None:
        self.capacity = capacity
        self._lanes = itertools.cycle(range(lanes)) if lanes else None
        self._waiting = list(bodies)
        self.opened = 0
        self.fail_next_fetch = False
        self.acked: list[bytes] = []
        self.retried: list[tuple[bytes, int]] = []
        self.dead: list[tuple[bytes, str]] = []
        self.most_in_hand = 0
        self._in_hand = 0

    async def open(self) -> str:
        self.opened += 1
        return "the fake queue"

    async def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        if self.fail_next_fetch:
            self.fail_next_fetch = False
            raise Lost("cut")
        taken, self._waiting = self._waiting[:max_count], self._waiting[max_count:]
        self._in_hand += len(taken)
        self.most_in_hand = max(self.most_in_hand, self._in_hand)
        if not taken:
            await asyncio.sleep(min(wait_seconds, 0.05))
        return [Delivery(body, {}, 0, body, next(self._lanes) if self._lanes else None) for body in taken]

    async def unsubscribe(self) -> int:
        return 0

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self.acked += [delivery.body for delivery in deliveries]
        self._in_hand -= len(deliveries)

    async def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        self.retried.append((delivery.body, delivery.retries))
        self._in_hand -= 1

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self.dead.append((delivery.body, reason))
        self._in_hand -= 1

    async def close(self) -> None:
        pass


def task(type_: str, task_id: str, seconds: float = 0.0) -> bytes:
    return encode(TaskMessage(id=task_id, type=type_, payload={"seconds": seconds}))


def running(
    registry: TaskRegistry, transport: FakeTransport, until: Callable[[], bool], timeout: float = 10.0
) -> Runner:
    """Run a runner on the transport until `until` holds (or the deadline), then stop it."""

    async def main() -> Runner:
        settings = Settings(max_retries=2, shutdown_timeout_seconds=5)
        runner = Runner(transport, Processor(registry, 2, QUICK_RETRIES), settings)
        await runner.start()
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a plain condition, with a deadline
            await asyncio.sleep(0.01)
        assert runner.is_running()
        await runner.stop()
        return runner

    return asyncio.run(main())


def test_every_message_is_handled_then_acknowledged(registry: TaskRegistry, recorder: Recorder) -> None:
    bodies = [task("record", f"t-{n}") for n in range(20)]
    transport = FakeTransport(bodies)
    running(registry, transport, lambda: len(transport.acked) == 20)
    assert sorted(transport.acked) == sorted(bodies)
    assert sorted(recorder.finished) == sorted(f"t-{n}" for n in range(20))


def test_no_more_than_the_capacity_is_ever_in_hand(registry: TaskRegistry) -> None:
    transport = FakeTransport([task("record", f"t-{n}", 0.02) for n in range(30)], capacity=3)
    running(registry, transport, lambda: len(transport.acked) == 30)
    assert len(transport.acked) == 30
    assert transport.most_in_hand == 3


def test_a_place_left_free_is_filled_without_waiting_for_a_batchs_worth(
    registry: TaskRegistry, recorder: Recorder
) -> None:
    """Capacity 8 refills by 2; slow handlers must not leave the one free place idle until a second frees."""
    slow = [task("record", f"slow-{n}", 1.5) for n in range(7)]
    transport = FakeTransport([*slow, task("record", "quick-1"), task("record", "quick-2")], capacity=8)
    running(registry, transport, lambda: len(recorder.finished) == 9)
    assert recorder.finished[:2] == ["quick-1", "quick-2"]  # handled while the slow ones ran, not after them
    assert transport.most_in_hand == 8


def test_a_failing_message_goes_back_to_the_broker_or_to_the_dead_letters(registry: TaskRegistry) -> None:
    transport = FakeTransport([task("explode", "bad"), b"not json"])
    running(registry, transport, lambda: len(transport.retried) == 1 and len(transport.dead) == 1)
    assert transport.retried == [(task("explode", "bad"), 0)]
    assert "not a task message" in transport.dead[0][1]


def test_a_retry_in_a_lane_goes_back_to_the_broker_and_the_lane_goes_on(
    registry: TaskRegistry, recorder: Recorder
) -> None:
    transport = FakeTransport([task("explode", "bad"), task("record", "good")], lanes=1)
    running(registry, transport, lambda: bool(transport.acked))
    assert transport.acked == [task("record", "good")]
    assert recorder.started == ["bad", "good"]
    assert transport.retried == [(task("explode", "bad"), 0)]


def test_a_lost_connection_is_opened_again_and_said_once(
    registry: TaskRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    transport = FakeTransport([task("record", "after")])
    transport.fail_next_fetch = True
    running(registry, transport, lambda: bool(transport.acked))
    assert transport.acked == [task("record", "after")]
    assert transport.opened == 2
    lost = [record for record in caplog.records if "lost the broker" in record.getMessage()]
    assert len(lost) == 1
    assert lost[0].levelno == logging.WARNING


def test_stopping_finishes_what_runs_and_says_so(
    registry: TaskRegistry, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    transport = FakeTransport([task("record", f"slow-{n}", 0.3) for n in range(4)], capacity=4)
    runner = running(registry, transport, lambda: len(recorder.started) == 4)
    assert len(transport.acked) == 4
    assert not runner.is_running()
    assert "consumer stopped: 4 message(s) finished while draining, 0 returned unstarted, 0 interrupted" in caplog.text


def test_after_a_message_left_unsettled_nothing_more_of_its_lane_runs() -> None:
    """What comes later in the lane, even fetched after the failure, waits to be delivered again."""
    handled: list[bytes] = []

    async def handle(delivery: Delivery) -> Settling:
        handled.append(delivery.body)
        return Settling.LEFT if delivery.body == b"unsettled" else Settling.DONE

    async def main() -> InHand:
        in_hand = InHand(handle)
        in_hand.add(Delivery(b"unsettled", {}, 0, None, "lane"))
        in_hand.add(Delivery(b"queued behind it", {}, 0, None, "lane"))
        await in_hand.wait_empty(time.monotonic() + 5)
        in_hand.add(Delivery(b"fetched after it", {}, 0, None, "lane"))
        in_hand.add(Delivery(b"another lane", {}, 0, None, "other"))
        await in_hand.wait_empty(time.monotonic() + 5)
        return in_hand

    in_hand = asyncio.run(main())
    assert handled == [b"unsettled", b"another lane"]
    assert in_hand.lane_broken
    assert len(in_hand) == 0


def test_what_is_handled_while_an_acknowledgement_is_under_way_goes_in_the_next_batch() -> None:
    class SlowAcks(FakeTransport):
        def __init__(self) -> None:
            super().__init__([])
            self.batches: list[list[bytes]] = []
            self.answer = asyncio.Event()

        async def ack(self, deliveries: Sequence[Delivery]) -> None:
            self.batches.append([delivery.body for delivery in deliveries])
            await self.answer.wait()
            self.answer.clear()

    transport = SlowAcks()
    released: list[int] = []

    async def main() -> None:
        acks = Acknowledger(transport, released.append)
        acks.add(Delivery(b"1", {}, 0, None))
        await asyncio.sleep(0)  # the first batch goes out
        acks.add(Delivery(b"2", {}, 0, None))
        acks.add(Delivery(b"3", {}, 0, None))
        assert released == []
        for answered in (1, 2):
            transport.answer.set()
            while len(released) < answered:  # noqa: ASYNC110 - each batch is released once answered
                await asyncio.sleep(0)

    asyncio.run(asyncio.wait_for(main(), 5))
    assert transport.batches == [[b"1"], [b"2", b"3"]]
    assert released == [1, 2]


def test_an_acknowledgement_that_fails_releases_its_batch_to_be_delivered_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class LostAcks(FakeTransport):
        async def ack(self, deliveries: Sequence[Delivery]) -> None:
            raise Lost("cut")

    released: list[int] = []

    async def main() -> None:
        acks = Acknowledger(LostAcks([]), released.append)
        acks.add(Delivery(b"1", {}, 0, None))
        while not released:  # noqa: ASYNC110 - released once the broker refused
            await asyncio.sleep(0)

    asyncio.run(asyncio.wait_for(main(), 5))
    assert released == [1]
    assert "could not acknowledge 1 message(s); they will be delivered again" in caplog.text


def test_a_message_stays_in_hand_until_it_is_acknowledged(registry: TaskRegistry) -> None:
    class HeldAcks(FakeTransport):
        def __init__(self, bodies: Sequence[bytes]) -> None:
            super().__init__(bodies, capacity=2)
            self.answer = asyncio.Event()
            self.asked = 0

        async def ack(self, deliveries: Sequence[Delivery]) -> None:
            self.asked += 1
            await self.answer.wait()
            await super().ack(deliveries)

    transport = HeldAcks([task("record", f"t-{n}") for n in range(6)])

    async def main() -> int:
        runner = Runner(transport, Processor(registry, 2, QUICK_RETRIES), Settings(shutdown_timeout_seconds=5))
        await runner.start()
        deadline = time.monotonic() + 5
        while transport.asked == 0 and time.monotonic() < deadline:  # noqa: ASYNC110 - a plain condition, with a deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # time to take more, were it (wrongly) allowed to
        fetched_while_held = transport.most_in_hand
        assert REGISTRY.get_sample_value("tasks_in_hand") == 2  # handled, but held until acknowledged
        transport.answer.set()
        while len(transport.acked) < 6 and time.monotonic() < deadline + 5:  # noqa: ASYNC110 - as above
            await asyncio.sleep(0.01)
        await runner.stop()
        return fetched_while_held

    assert asyncio.run(main()) == 2
    assert len(transport.acked) == 6
