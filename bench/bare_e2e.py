"""The bare Kafka client's own end-to-end latency on this broker, what the generated worker's
(POST /tasks to its handler, services.end_to_end) is compared with: tansu may answer a fetch late
whatever the client, and then no worker can be faster than the client it is built on.

    python bench/bare_e2e.py STYLE BOOTSTRAP TOPIC RATE COUNT

One process sends COUNT records at RATE a second to TOPIC (made beforehand with queues.PARTITIONS
partitions, each record keyed by its id as the generated publisher keys a task) and consumes them
in a group of its own, with the same client library as the generated worker of STYLE and, as it,
the client's default fetch settings (it sets none); its group settings are bare.py's (session 3 s,
heartbeat 1 s, as the bench gives the generated worker):
- threaded: confluent-kafka; a Producer with acks=all, each record produced with a delivery
  callback and flushed before the next; a Consumer polled by a thread of its own, consume(1,
  timeout) and then what is already fetched, as the generated worker fetches;
- async: aiokafka; AIOKafkaProducer(acks="all", enable_idempotence=False), send_and_wait in a task
  per record; AIOKafkaConsumer.getmany in the same event loop.
Records are sent only once the consumer owns the partitions. Each carries its send time
(time.time()); its latency is the time the consumer got it less that. Offsets are committed after
each batch, as the generated worker does (in the background in the threaded style, as it does).
Prints {"latencies": [seconds, ...]} as its last line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import bare
import queues
from bake import Combo
from procs import BenchError, running, wait_until

ASSIGN_TIMEOUT = 30.0  # seconds for the consumer to join its group (tansu takes half the session timeout)
DELIVERY_TIMEOUT = 10.0  # seconds for one record's acks=all


def record(index: int) -> tuple[bytes, bytes]:
    """A record's key and value: its id, and its send time."""
    return f"bare-e2e-{index}".encode(), json.dumps({"index": index, "sent": time.time()}).encode()


def take(value: bytes, now: float, latencies: dict[int, float]) -> None:
    """One record got at `now`: its latency (the first time it came, should a rebalance bring it twice)."""
    body = json.loads(value)
    latencies.setdefault(body["index"], now - body["sent"])


def deadline_for(rate: float, count: int) -> float:
    """When every record must have come: the sends' own time, and half a minute."""
    return time.monotonic() + ASSIGN_TIMEOUT + count / rate


def confluent_receive(consumer: Any, count: int, deadline: float, latencies: dict[int, float]) -> None:
    """The consumer thread: the first record may take up to a second, the rest is what is already fetched."""
    while len(latencies) < count and time.monotonic() < deadline:
        records = consumer.consume(1, timeout=1.0)
        if records:
            records += consumer.consume(bare.PREFETCH - 1, timeout=0)
        now = time.time()
        for message in records:
            if message.error() is None:
                take(message.value(), now, latencies)
        if records:
            consumer.commit(asynchronous=True)


def confluent_e2e(bootstrap: str, topic: str, rate: float, count: int) -> dict[int, float]:
    from confluent_kafka import Producer

    latencies: dict[int, float] = {}
    assigned = threading.Event()
    deadline = deadline_for(rate, count)

    def consume() -> None:
        consumer = bare.confluent_consumer(bootstrap)
        consumer.subscribe([topic], on_assign=lambda _consumer, _partitions: assigned.set())
        try:
            while not assigned.is_set() and time.monotonic() < deadline:
                for message in consumer.consume(1, timeout=0.1):  # nothing is sent before the assignment
                    if message.error() is None:
                        take(message.value(), time.time(), latencies)
            confluent_receive(consumer, count, deadline, latencies)
        finally:
            consumer.close()

    receiver = threading.Thread(target=consume, name="consumer", daemon=True)
    receiver.start()
    if not assigned.wait(ASSIGN_TIMEOUT):
        raise SystemExit(f"the consumer got no partitions of {topic} in {ASSIGN_TIMEOUT:g} s")
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    failures: list[Any] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error)

    start = time.perf_counter()
    for index in range(count):
        time.sleep(max(0.0, start + index / rate - time.perf_counter()))
        key, value = record(index)
        producer.produce(topic, value=value, key=key, on_delivery=delivered)
        if producer.flush(DELIVERY_TIMEOUT) or failures:
            raise SystemExit(f"record {index} was not delivered: {failures or 'timed out'}")
    receiver.join(max(0.0, deadline - time.monotonic()) + 5)
    return latencies


async def aiokafka_e2e(bootstrap: str, topic: str, rate: float, count: int) -> dict[int, float]:
    from aiokafka import AIOKafkaProducer

    latencies: dict[int, float] = {}
    deadline = deadline_for(rate, count)
    consumer = bare.aiokafka_consumer(bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await consumer.start()
    await producer.start()
    try:
        while not consumer.assignment():  # it joins in the background
            if time.monotonic() > deadline:
                raise SystemExit(f"the consumer got no partitions of {topic} in time")
            await asyncio.sleep(0.05)

        async def receive() -> None:
            while len(latencies) < count and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=1000, max_records=bare.PREFETCH)
                now = time.time()
                for records in batch.values():
                    for message in records:
                        take(message.value, now, latencies)
                if batch:
                    await consumer.commit()

        async def send(index: int) -> None:
            key, value = record(index)
            await producer.send_and_wait(topic, value, key=key)

        receiving = asyncio.create_task(receive())
        start = time.perf_counter()
        sends = []
        for index in range(count):
            await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
            sends.append(asyncio.create_task(send(index)))
        await asyncio.gather(*sends)
        await receiving
    finally:
        await producer.stop()
        await consumer.stop()
    return latencies


def main() -> None:
    style, bootstrap, topic, rate, count = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
    if style == "threaded":
        latencies = confluent_e2e(bootstrap, topic, rate, count)
    else:
        latencies = asyncio.run(aiokafka_e2e(bootstrap, topic, rate, count))
    if len(latencies) < count:
        missing = sorted(set(range(count)) - set(latencies))
        raise SystemExit(f"{len(missing)} of {count} records never came, e.g. bare-e2e-{missing[0]}")
    print(json.dumps({"latencies": [latencies[index] for index in range(count)]}), flush=True)


def measure(combo: Combo, kafka: str, rate: float, count: int, logs: Path) -> list[float]:
    """Run this script for `combo`'s style on a topic of its own; each record's latency in seconds."""
    topic = f"bench-bare-e2e-{combo.name}-{uuid.uuid4().hex[:8]}"
    try:
        queues.create_topic(kafka, topic, queues.PARTITIONS)
        argv = [sys.executable, str(Path(__file__).resolve()), combo.consumer, kafka, topic, f"{rate:g}", str(count)]
        with running(argv, {}, logs / f"bare-e2e-{combo.name}.log") as child:
            timeout = 2 * ASSIGN_TIMEOUT + count / rate
            wait_until(lambda: child.process.poll() is not None, timeout, "the bare client's e2e", child)
        if child.process.returncode != 0:
            raise BenchError(f"the bare client's e2e failed:\n{child.output()[-3000:].decode(errors='replace')}")
        return [float(latency) for latency in json.loads(child.output().splitlines()[-1])["latencies"]]
    finally:
        queues.delete("kafka", topic, kafka)


if __name__ == "__main__":
    main()
