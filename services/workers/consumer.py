"""The consumer loop every role shares: batch, process, then commit; dead-letter poison.

Order of effects per batch: decode (undecodable → dead-letter topic), hand the valid
events to the role's handler (its side effect must be durable and idempotent when it
returns), and only then commit offsets. A retriable failure (database or broker
away) retries the same batch with backoff and commits nothing; a record the handler
rejects as poison is dead-lettered and the partition moves on. On rebalance the
batch in hand finishes and is committed before partitions are given up.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from services.workers import metrics
from shared.errors import DeadLetterError, RetriableError
from shared.events import DeadLetter, Envelope, decode
from shared.kafka import EventPublisher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """A decoded record: the event and where it came from."""

    record: ConsumerRecord
    event: Envelope


class PoisonRecords(DeadLetterError):
    """Raised by a handler: these items can never be processed (the rest of the batch can)."""

    def __init__(self, items: Sequence[Item], reason: str) -> None:
        super().__init__(reason)
        self.items = list(items)
        self.reason = reason


Handler = Callable[[Sequence[Item]], Awaitable[None]]


class _CommitOnRevoke(ConsumerRebalanceListener):
    def __init__(self, loop: ConsumerLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # The batch in hand finishes (and commits) before the partitions move on.
        async with self._loop.batch_lock:
            pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info(
            "%s assigned %s", self._loop.role, sorted((tp.topic, tp.partition) for tp in assigned)
        )


class ConsumerLoop:
    """One member of a role's consumer group."""

    def __init__(
        self,
        *,
        role: str,
        consumer: AIOKafkaConsumer,
        topics: Sequence[str],
        handler: Handler,
        dead_letters: EventPublisher,
        batch_size: int,
        linger_ms: int,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.role = role
        self.consumer = consumer
        self.topics = list(topics)
        self.handler = handler
        self.dead_letters = dead_letters
        self.batch_size = batch_size
        self.linger_ms = linger_ms
        self.max_backoff_s = max_backoff_s
        self.batch_lock = asyncio.Lock()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish the batch in hand, commit it, and return from run()."""
        self._stopping.set()

    async def run(self) -> None:
        self.consumer.subscribe(self.topics, listener=_CommitOnRevoke(self))
        while not self._stopping.is_set():
            batch = await self.consumer.getmany(
                timeout_ms=self.linger_ms, max_records=self.batch_size
            )
            records = [r for rs in batch.values() for r in rs]
            if not records:
                continue
            async with self.batch_lock:
                await self._process(records)
            await self._report_lag()

    async def _process(self, records: list[ConsumerRecord]) -> None:
        for r in records:
            metrics.CONSUMED.labels(self.role, r.topic).inc()
        items: list[Item] = []
        undecodable: list[tuple[ConsumerRecord, str, str]] = []
        for r in records:
            try:
                items.append(Item(r, decode(r.value or b"")))
            except DeadLetterError as exc:
                undecodable.append((r, str(exc), "undecodable"))
        attempt = 0
        while True:
            try:
                rejected = await self._handle(items)
                await self._dead_letter([*undecodable, *rejected])
                offsets: dict[TopicPartition, int] = {}
                for r in records:
                    tp = TopicPartition(r.topic, r.partition)
                    offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
                await self.consumer.commit(offsets)
                break
            except (RetriableError, KafkaError, OSError) as exc:
                attempt += 1
                metrics.RETRIES.labels(self.role).inc()
                delay = min(self.max_backoff_s, 0.2 * 2**attempt) * (0.5 + random.random())
                log.warning(
                    "%s: batch of %d failed (%s); retrying in %.1fs",
                    self.role,
                    len(records),
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
        for r in records:
            metrics.PROCESSED.labels(self.role, r.topic).inc()

    async def _handle(self, items: list[Item]) -> list[tuple[ConsumerRecord, str, str]]:
        """Run the handler; poison it names is set aside and the rest retried at once."""
        pending = list(items)
        rejected: list[tuple[ConsumerRecord, str, str]] = []
        while pending:
            started = time.perf_counter()
            try:
                await self.handler(pending)
            except PoisonRecords as bad:
                bad_ids = {id(i) for i in bad.items}
                if not bad_ids:
                    raise
                rejected.extend((i.record, bad.reason, "rejected") for i in bad.items)
                pending = [i for i in pending if id(i) not in bad_ids]
                continue
            metrics.BATCH_SIZE.labels(self.role).observe(len(pending))
            metrics.WRITE_SECONDS.labels(self.role).observe(time.perf_counter() - started)
            break
        return rejected

    async def _dead_letter(self, poison: list[tuple[ConsumerRecord, str, str]]) -> None:
        """Publish each poison record with its reason and coordinates (at least once)."""
        for record, reason, kind in poison:
            await self.dead_letters.publish(
                DeadLetter(
                    reason=reason[:2000],
                    error_class=kind,
                    consumer_group=self.consumer_group,
                    source_topic=record.topic,
                    source_partition=record.partition,
                    source_offset=record.offset,
                    source_timestamp_ms=record.timestamp,
                    original_key=record.key,
                    original_value=record.value or b"",
                )
            )
            metrics.DEAD_LETTERED.labels(self.role, record.topic, kind).inc()

    @property
    def consumer_group(self) -> str | None:
        return getattr(self.consumer, "_group_id", None)

    async def _report_lag(self) -> None:
        for tp in self.consumer.assignment():
            end = self.consumer.highwater(tp)
            if end is None:
                continue
            try:
                position = await self.consumer.position(tp)
            except KafkaError:
                continue
            metrics.LAG.labels(self.role, tp.topic, str(tp.partition)).set(max(0, end - position))
