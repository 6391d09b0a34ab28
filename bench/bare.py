"""The practical ceiling: drain a pre-filled queue with the same client library as the generated
consumer and the same guarantees (acknowledge only after handling, the same prefetch / batch of
100), and nothing else: no retries, dead letters, logs, metrics or shutdown handling.

    python bench/bare.py BROKER STYLE QUEUE COUNT [KAFKA_BOOTSTRAP]

Prints {"first": t, "last": t, "count": n}: when the first and the last message were handled.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

from clock import Clock

PREFETCH = 100
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
REDIS_URL = "redis://127.0.0.1:6379/0"
GROUP = "workers"


def pika_loop(queue: str, clock: Clock) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=PREFETCH)

    def on_message(channel, method, _properties, body):  # type: ignore[no-untyped-def]
        clock.handle(body)
        channel.basic_ack(method.delivery_tag)
        if clock.done:
            channel.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    connection.close()


async def aio_pika_loop(queue: str, clock: Clock) -> None:
    import aio_pika

    connection = await aio_pika.connect(RABBIT_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    source = await channel.get_queue(queue, ensure=False)
    async with source.iterator() as messages:
        async for message in messages:
            clock.handle(message.body)
            await message.ack()
            if clock.done:
                break
    await connection.close()


def handle_entries(reply: Any, clock: Clock) -> list[bytes]:
    """Handle every entry of an XREADGROUP reply; their ids, to acknowledge in one XACK."""
    ids = []
    for _, entries in reply or []:
        for entry_id, fields in entries:
            clock.handle(fields[b"body"])
            ids.append(entry_id)
    return ids


def redis_loop(stream: str, clock: Clock) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    while not clock.done:
        ids = handle_entries(client.xreadgroup(GROUP, "bare", {stream: ">"}, count=PREFETCH, block=1000), clock)
        if ids:
            client.xack(stream, GROUP, *ids)
    client.close()


async def redis_asyncio_loop(stream: str, clock: Clock) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS_URL)
    while not clock.done:
        reply = await client.xreadgroup(GROUP, "bare", {stream: ">"}, count=PREFETCH, block=1000)
        ids = handle_entries(reply, clock)
        if ids:
            await client.xack(stream, GROUP, *ids)
    await client.aclose()


def confluent_consumer(bootstrap: str) -> Any:
    """A group of its own, offsets committed by hand; the generated worker's group settings where
    they matter on tansu (session 3 s, heartbeat 1 s) and, as it, the client's default fetch settings."""
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bare-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 3000,
            "heartbeat.interval.ms": 1000,
        }
    )


def aiokafka_consumer(bootstrap: str, topic: str) -> Any:
    """As confluent_consumer, with aiokafka: subscribed to `topic`, records fetched PREFETCH at most."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=PREFETCH,
        session_timeout_ms=3000,
        heartbeat_interval_ms=1000,
    )


def confluent_loop(bootstrap: str, topic: str, clock: Clock) -> None:
    consumer = confluent_consumer(bootstrap)
    consumer.subscribe([topic])
    while not clock.done:
        records = consumer.consume(PREFETCH, timeout=1.0)
        for record in records:
            if record.error() is None:
                clock.handle(record.value())
        if records:
            consumer.commit(asynchronous=False)  # after the batch was handled, as the generated consumer
    consumer.close()


async def aiokafka_loop(bootstrap: str, topic: str, clock: Clock) -> None:
    consumer = aiokafka_consumer(bootstrap, topic)
    await consumer.start()
    try:
        while not clock.done:
            batch = await consumer.getmany(timeout_ms=1000, max_records=PREFETCH)
            for records in batch.values():
                for record in records:
                    clock.handle(record.value)
            if batch:
                await consumer.commit()  # after the batch was handled, as the generated consumer
    finally:
        await consumer.stop()


def main() -> None:
    broker, style, queue, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    clock = Clock(count)
    if (broker, style) == ("rabbitmq", "threaded"):
        pika_loop(queue, clock)
    elif (broker, style) == ("rabbitmq", "async"):
        asyncio.run(aio_pika_loop(queue, clock))
    elif (broker, style) == ("redis", "threaded"):
        redis_loop(queue, clock)
    elif (broker, style) == ("redis", "async"):
        asyncio.run(redis_asyncio_loop(queue, clock))
    elif (broker, style) == ("kafka", "threaded"):
        confluent_loop(sys.argv[5], queue, clock)
    else:
        asyncio.run(aiokafka_loop(sys.argv[5], queue, clock))
    print(clock.result(), flush=True)


if __name__ == "__main__":
    main()
