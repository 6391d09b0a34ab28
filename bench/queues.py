"""Fill a queue, stream or topic with N messages in the service's wire format (CONTRACT section 5)
before a consumer drains it, and delete it afterwards: the brokers are shared with other users.

The service's queue arguments are declared here exactly as the generated brokers/rabbitmq/
declare them (quorum queues, dead-lettering into `<queue>.dlq`); FastStream and Celery declare
plain classic queues.
A Kafka topic gets its records round robin, the same share on each partition: a partition's
records are handled one at a time, so a fuller one would set the pace.
"""

from __future__ import annotations

import contextlib
import json
import time

import pika
import redis
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
REDIS_URL = "redis://127.0.0.1:6379/0"
GROUP = "workers"  # the generated service's default CONSUMER_GROUP
PARTITIONS = 3  # the generated service's default TOPIC_PARTITIONS


def message(index: int, image_url: str = "https://example.com/a.png", task_type: str = "process_image") -> bytes:
    """One task as POST /tasks would publish it (another `task_type` takes the example's payload too)."""
    return json.dumps({"id": f"bench-{index}", "type": task_type, "payload": {"image_url": image_url}}).encode()


def service_arguments(queue: str) -> dict[str, str]:
    """The task queue's, with the generated default QUEUE_TYPE=quorum (topology.queue_arguments)."""
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": f"{queue}.dlq",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def fill(
    broker: str,
    queue: str,
    count: int,
    kafka: str | None = None,
    *,
    service: bool = True,
    task_type: str = "process_image",
    partitions: int = PARTITIONS,
) -> None:
    """Declare as the consumer will (`service`: the generated one's arguments), then put `count`
    messages of `task_type`; a Kafka topic made with `partitions`."""
    if broker == "rabbitmq":
        fill_rabbitmq(queue, count, service_arguments(queue) if service else None, task_type)
    elif broker == "redis":
        fill_redis(queue, count, task_type)
    else:
        assert kafka is not None
        fill_kafka(kafka, queue, count, task_type, partitions)


def fill_rabbitmq(queue: str, count: int, arguments: dict[str, str] | None, task_type: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    try:
        channel = connection.channel()
        if arguments:
            channel.queue_declare(f"{queue}.dlq", durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_declare(queue, durable=True, arguments=arguments)
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        for index in range(count):
            channel.basic_publish("", queue, message(index, task_type=task_type), properties)
        # Unconfirmed publishes: wait until the broker has them all in the queue.
        deadline = time.monotonic() + 60
        while channel.queue_declare(queue, passive=True).method.message_count < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ queue {queue} never reached {count} messages")
            time.sleep(0.05)
    finally:
        connection.close()


def fill_redis(stream: str, count: int, task_type: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        with contextlib.suppress(redis.ResponseError):  # BUSYGROUP
            client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        for start in range(0, count, 1000):
            pipeline = client.pipeline(transaction=False)
            for index in range(start, min(count, start + 1000)):
                pipeline.xadd(stream, {"body": message(index, task_type=task_type)})
            pipeline.execute()
    finally:
        client.close()


def fill_kafka(bootstrap: str, topic: str, count: int, task_type: str, partitions: int) -> None:
    create_topic(bootstrap, topic, partitions)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    for index in range(count):
        body = message(index, task_type=task_type)
        while True:
            try:
                producer.produce(topic, value=body, key=f"bench-{index}".encode(), partition=index % partitions)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError(f"Kafka topic {topic}: not every message was acknowledged")


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, partitions, 1)])
    for future in futures.values():
        with contextlib.suppress(Exception):  # already there
            future.result(30)


def delete(broker: str, queue: str, kafka: str | None = None) -> None:
    """Best effort: the queue and its dead-letter queue; a failure here must not hide the figures."""
    with contextlib.suppress(Exception):
        if broker == "rabbitmq":
            connection = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
            channel = connection.channel()
            for name in (queue, f"{queue}.dlq"):
                channel.queue_delete(name)
            connection.close()
        elif broker == "redis":
            client = redis.Redis.from_url(REDIS_URL)
            client.delete(queue, f"{queue}.dlq")
            client.close()
        elif kafka is not None:
            admin = AdminClient({"bootstrap.servers": kafka})
            for future in admin.delete_topics([queue, f"{queue}.dlq"]).values():
                with contextlib.suppress(Exception):
                    future.result(10)
