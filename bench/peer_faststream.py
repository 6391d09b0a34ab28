"""FastStream peer: a subscriber whose handler does nothing but count, on the same broker and
workload (the service's JSON messages), acknowledging after the handler (AckPolicy.REJECT_ON_ERROR:
ack on success), with a prefetch / batch of 100 and FastStream's default logging (INFO: a line
when a message arrives and one when it is processed).

    BENCH_KIND=rabbitmq|redis|kafka BENCH_URL=... BENCH_QUEUE=q BENCH_COUNT=N BENCH_RESULT=file \
        python bench/peer_faststream.py
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from clock import Clock
from faststream import AckPolicy

KIND = os.environ["BENCH_KIND"]
URL = os.environ["BENCH_URL"]
QUEUE = os.environ["BENCH_QUEUE"]
clock = Clock(int(os.environ["BENCH_COUNT"]), os.environ["BENCH_RESULT"])
ACK = AckPolicy.REJECT_ON_ERROR


async def handle(body: dict[str, Any]) -> None:
    clock.tick()


def make_broker() -> Any:
    if KIND == "rabbitmq":
        from faststream.rabbit import Channel, RabbitBroker, RabbitQueue

        broker = RabbitBroker(URL, default_channel=Channel(prefetch_count=100))
        broker.subscriber(RabbitQueue(QUEUE, durable=True), ack_policy=ACK)(handle)
    elif KIND == "redis":
        from faststream.redis import RedisBroker, StreamSub

        broker = RedisBroker(URL)
        stream = StreamSub(QUEUE, group="workers", consumer="faststream", max_records=100)
        broker.subscriber(stream=stream, ack_policy=ACK)(handle)
    else:
        from faststream.kafka import KafkaBroker

        broker = KafkaBroker(URL)
        broker.subscriber(
            QUEUE,
            group_id=f"faststream-{uuid.uuid4().hex}",
            auto_offset_reset="earliest",
            max_records=100,
            session_timeout_ms=3000,
            heartbeat_interval_ms=1000,
            ack_policy=ACK,
        )(handle)
    return broker


async def main() -> None:
    broker = make_broker()
    async with broker:
        await broker.start()
        print("faststream subscriber started", flush=True)
        await asyncio.Event().wait()  # until the benchmark stops us


if __name__ == "__main__":
    asyncio.run(main())
