"""The dead-letter tool's side of Kafka with aiokafka (see `deadletters`), driven from the
command line's one event loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from ...deadletters import Blocking, DeadLetter, Progress
from ..base import BrokerUnavailable
from .asynchronous import make_producer, start_producer
from .deadletters import Record, oldest_first, steps, tool_group

if TYPE_CHECKING:
    from ...settings import Settings

TIMEOUT_MS = 10_000  # for the broker to answer one request
IDLE_MS = 500  # a partition read to its end offset, then this long without a record, is read to its end


def open_queue(settings: Settings) -> Blocking:
    return Blocking(lambda: connect(settings))


async def connect(settings: Settings) -> DeadLetterQueue:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=tool_group(settings),
        client_id="deadletters",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=TIMEOUT_MS,
    )
    producer = make_producer(settings, "deadletters")
    try:
        await consumer.start()
        await start_producer(producer, settings)
        if settings.dead_letter_queue not in await consumer.topics():
            raise BrokerUnavailable(f"no topic {settings.dead_letter_queue!r}: has the service run yet?")
    except (KafkaError, OSError) as error:
        await consumer.stop()
        await producer.stop()
        raise BrokerUnavailable(f"cannot use Kafka at {settings.broker_address}: {error!r}") from error
    except BaseException:
        await consumer.stop()
        await producer.stop()
        raise
    return DeadLetterQueue(settings, consumer, producer)


class DeadLetterQueue:
    errors: tuple[type[BaseException], ...] = (KafkaError, OSError)

    def __init__(self, settings: Settings, consumer: Any, producer: Any) -> None:
        self._settings = settings
        self.name = settings.dead_letter_queue
        self._consumer = consumer
        self._producer = producer

    async def count(self) -> int:
        return sum(len(records) for records in (await self._live()).values())

    async def peek(self, limit: int | None) -> list[DeadLetter]:
        return oldest_first(await self._live(), limit)

    async def replay(self, ids: set[str] | None, progress: Progress) -> int:
        return await self._carry_out(ids, progress, replay=True)

    async def purge(self, ids: set[str] | None, progress: Progress) -> int:
        return await self._carry_out(ids, progress, replay=False)

    async def close(self) -> None:
        await self._producer.stop()
        await self._consumer.stop()

    async def _carry_out(self, ids: set[str] | None, progress: Progress, replay: bool) -> int:
        done = 0
        for partition, records in (await self._live()).items():
            for step in steps(self._settings, records, ids, replay):
                record = step.record
                if step.topic is not None:  # acknowledged before the commit
                    await self._producer.send_and_wait(
                        step.topic, value=record.value, key=record.key, headers=step.headers
                    )
                await self._consumer.commit({TopicPartition(self.name, partition): record.offset + 1})
                if step.topic != self.name:  # not a kept one
                    done += 1
                    progress(done)
        return done

    async def _live(self) -> dict[int, list[Record]]:
        """Each partition's records after the tool's committed offset, read to the partition's end."""
        partitions = [
            TopicPartition(self.name, p) for p in sorted(self._consumer.partitions_for_topic(self.name) or ())
        ]
        self._consumer.assign(partitions)
        ends = await self._consumer.end_offsets(partitions)
        live: dict[int, list[Record]] = {tp.partition: [] for tp in partitions}
        for tp in partitions:
            committed = await self._consumer.committed(tp)
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)
        caught_up = not await self._unread(partitions, ends)
        while True:
            # Past the end offsets, read on until nothing comes: some Kafka-compatible brokers
            # report end offsets that undercount batched writes.
            batch = await self._consumer.getmany(timeout_ms=IDLE_MS if caught_up else TIMEOUT_MS)
            if not batch:
                if caught_up:
                    return live  # still assigned: aiokafka commits only for assigned partitions
                raise KafkaError(f"{self.name!r} not read to its end within {TIMEOUT_MS} ms")
            for tp, records in batch.items():
                live[tp.partition] += [record_of(record) for record in records]
            caught_up = not await self._unread(partitions, ends)

    async def _unread(self, partitions: list[TopicPartition], ends: dict[TopicPartition, int]) -> bool:
        for tp in partitions:
            if await self._consumer.position(tp) < ends[tp]:
                return True
        return False


def record_of(record: Any) -> Record:
    headers = [(key, value or b"") for key, value in record.headers or ()]
    return Record(record.partition, record.offset, record.timestamp, record.key, record.value or b"", headers)
