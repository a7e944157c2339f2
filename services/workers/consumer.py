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
import contextlib
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


def dead_letter_of(
    record: ConsumerRecord, reason: str, *, kind: str, consumer_group: str | None
) -> DeadLetter:
    """The dead letter of one record: its reason, where it came from, its original bytes."""
    return DeadLetter(
        reason=reason[:2000],
        error_class=kind,
        consumer_group=consumer_group,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        source_timestamp_ms=record.timestamp,
        original_key=record.key,
        original_value=record.value or b"",
    )


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
        """Fetch, decode and write in a pipeline until stop() is called.

        Batch N+1 is fetched and decoded (Python CPU) while batch N is written (the
        database's CPU); writes and commits stay strictly in order.
        """
        self.consumer.subscribe(self.topics, listener=_CommitOnRevoke(self))
        writing: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                records = await self._next_batch()
                decoded = await self._decode(records) if records else None
                if writing is not None:
                    await asyncio.shield(writing)
                    writing = None
                if decoded is not None:
                    writing = asyncio.create_task(self._write(records, *decoded))
        finally:
            if writing is not None:
                await writing

    async def _next_batch(self) -> list[ConsumerRecord]:
        """Up to batch_size records, waiting at most linger_ms after the first one arrived."""
        loop = asyncio.get_running_loop()
        records: list[ConsumerRecord] = []
        deadline: float | None = None
        while len(records) < self.batch_size:
            if deadline is None:
                wait_ms = 500  # returns as soon as a record arrives; bounds a stop()'s wait
            else:
                wait_ms = int(max(0.0, deadline - loop.time()) * 1000)
            fetched = await self.consumer.getmany(
                timeout_ms=wait_ms, max_records=self.batch_size - len(records)
            )
            got = [r for rs in fetched.values() for r in rs]
            if got:
                records.extend(got)
                if deadline is None:
                    deadline = loop.time() + self.linger_ms / 1000
            if not got or (deadline is not None and loop.time() >= deadline):
                break
        return records

    async def _decode(
        self, records: list[ConsumerRecord]
    ) -> tuple[list[Item], list[tuple[ConsumerRecord, str, str]]]:
        """Validate every record; yields to the loop now and then so the batch being
        written can send its next statement meanwhile."""
        items: list[Item] = []
        undecodable: list[tuple[ConsumerRecord, str, str]] = []
        per_topic: dict[str, int] = {}
        for n, r in enumerate(records, start=1):
            per_topic[r.topic] = per_topic.get(r.topic, 0) + 1
            try:
                items.append(Item(r, decode(r.value or b"")))
            except DeadLetterError as exc:
                undecodable.append((r, str(exc), "undecodable"))
            if n % 250 == 0:
                await asyncio.sleep(0)
        for topic, count in per_topic.items():
            metrics.CONSUMED.labels(self.role, topic).inc(count)
        return items, undecodable

    async def _write(
        self,
        records: list[ConsumerRecord],
        items: list[Item],
        undecodable: list[tuple[ConsumerRecord, str, str]],
    ) -> None:
        async with self.batch_lock:
            # Partitions revoked since this batch was fetched now belong to another
            # member, which will read these records again: leave them to it.
            owned = self.consumer.assignment()
            fetched = {TopicPartition(t, p) for t, p in {(r.topic, r.partition) for r in records}}
            if not fetched <= owned:
                keep = {(tp.topic, tp.partition) for tp in fetched & owned}
                records = [r for r in records if (r.topic, r.partition) in keep]
                items = [i for i in items if (i.record.topic, i.record.partition) in keep]
                undecodable = [u for u in undecodable if (u[0].topic, u[0].partition) in keep]
            if records:
                await self._process(records, items, undecodable)

    async def _process(
        self,
        records: list[ConsumerRecord],
        items: list[Item],
        undecodable: list[tuple[ConsumerRecord, str, str]],
    ) -> None:
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
                if self._stopping.is_set():
                    # Stopping while the database or broker is away: leave the batch
                    # uncommitted (it is read again after a restart) instead of retrying
                    # until they come back.
                    log.warning(
                        "%s: stopping with a batch of %d not stored (%s); it stays uncommitted",
                        self.role,
                        len(records),
                        exc,
                    )
                    return
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
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        per_topic: dict[str, int] = {}
        for r in records:
            per_topic[r.topic] = per_topic.get(r.topic, 0) + 1
        for topic, count in per_topic.items():
            metrics.PROCESSED.labels(self.role, topic).inc(count)

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
                dead_letter_of(record, reason, kind=kind, consumer_group=self.consumer_group)
            )
            metrics.DEAD_LETTERED.labels(self.role, record.topic, kind).inc()

    @property
    def consumer_group(self) -> str | None:
        return getattr(self.consumer, "_group_id", None)

    async def report_lag(self) -> None:
        """Set the lag gauge of each assigned partition (run before a metrics scrape)."""
        for tp in self.consumer.assignment():
            end = self.consumer.highwater(tp)
            if end is None:
                continue
            try:
                position = await self.consumer.position(tp)
            except KafkaError:
                continue
            metrics.LAG.labels(self.role, tp.topic, str(tp.partition)).set(max(0, end - position))
