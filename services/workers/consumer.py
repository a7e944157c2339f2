"""The consumer loop every role shares: batch, process, then commit; dead-letter poison.

Order of effects per batch: decode (undecodable → dead-letter topic), hand the valid
events to the role's handler (its side effect must be durable and idempotent when it
returns), and only then commit offsets. A retriable failure (database or broker
away) retries the same batch with backoff and commits nothing; a record the handler
rejects as poison is dead-lettered and the partition moves on. On rebalance the
batches in hand finish and are committed before partitions are given up.

Two batches can be in a handler at once: while batch N is applied, batch N+1 may be
prepared (decoded rows encoded, COPied into a session's staging table), then it
awaits its *turn*: the moment batch N is stored. Everything with an effect others
can see happens in turn, and offsets are committed batch after batch, so writes and
commits stay strictly in order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from prometheus_client import Counter

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


class BatchAbandoned(Exception):
    """An earlier batch was left unstored (stopping while the database is away), so
    this one must not be stored either: its offsets would skip the earlier records."""


class PartitionsMoved(Exception):
    """A partition of the batch was revoked while the batch waited for its turn."""


Turn = Awaitable[None]
"""Resolves when every earlier batch is stored and the batch's partitions are still
ours; may be awaited any number of times. Raises BatchAbandoned or
PartitionsMoved otherwise (the loop handles both)."""

Handler = Callable[[Sequence[Item], Turn], Awaitable[None]]
"""Stores a batch: may prepare it first, must await the turn before any visible effect."""

Step = Callable[[Sequence[Item]], Awaitable[None]]


def in_turn(step: Step) -> Handler:
    """A handler whose whole work is ordered (nothing to prepare before its turn)."""

    async def handle(items: Sequence[Item], turn: Turn) -> None:
        await turn
        await step(items)

    return handle


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


class _TurnOf:
    """The turn of one batch: the previous batch's outcome, then an ownership check."""

    def __init__(self, previous: asyncio.Future[None], owned: Callable[[], bool]) -> None:
        self._previous = previous
        self._owned = owned
        self.granted_at: float | None = None

    def __await__(self) -> Generator[Any, None, None]:
        return self._wait().__await__()

    async def _wait(self) -> None:
        await asyncio.shield(self._previous)
        if not self._owned():
            raise PartitionsMoved
        if self.granted_at is None:
            self.granted_at = time.perf_counter()


@dataclass(frozen=True)
class _Chain:
    """How one batch went, for the batch behind it: stored, then offsets committed."""

    applied: asyncio.Future[None]
    committed: asyncio.Future[None]

    @classmethod
    def start(cls) -> _Chain:
        """The chain before the first batch: nothing to wait for."""
        chain = cls.pending()
        chain.applied.set_result(None)
        chain.committed.set_result(None)
        return chain

    @classmethod
    def pending(cls) -> _Chain:
        loop = asyncio.get_running_loop()
        return cls(loop.create_future(), loop.create_future())

    def abandon(self) -> None:
        """Whatever is not done yet will not be: the next batch must not do it either."""
        for step in (self.applied, self.committed):
            if not step.done():
                step.set_exception(BatchAbandoned())
                step.exception()  # retrieved: the next batch may not be there to ask


class _CommitOnRevoke(ConsumerRebalanceListener):
    def __init__(self, loop: ConsumerLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # The batches in hand finish (and commit) before the partitions move on.
        while self._loop.in_flight:
            await asyncio.wait(set(self._loop.in_flight))

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
        #: Writes not finished yet (at most two: one applied, one prepared behind it).
        self.in_flight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish the batches in hand, commit them, and return from run()."""
        self._stopping.set()

    async def run(self) -> None:
        """Fetch, decode and write in a pipeline until stop() is called.

        While batch N is written (the database's CPU), batch N+1 is fetched, decoded
        and handed to the handler to prepare (Python CPU), then N+2 is fetched and
        decoded; a batch applies only in its turn.
        """
        self.consumer.subscribe(self.topics, listener=_CommitOnRevoke(self))
        writes: deque[asyncio.Task[None]] = deque()
        previous = _Chain.start()
        try:
            while not self._stopping.is_set():
                records = await self._next_batch()
                while writes and writes[0].done():
                    writes.popleft().result()  # a write that crashed stops the loop
                if not records:
                    continue
                items, undecodable = await self._decode(records)
                if len(writes) == 2:
                    await asyncio.shield(writes[0])
                    writes.popleft().result()
                mine = _Chain.pending()
                task = asyncio.create_task(self._write(records, items, undecodable, previous, mine))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)
                writes.append(task)
                previous = mine
        finally:
            for outcome in await asyncio.gather(*writes, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome

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
        for n, r in enumerate(records, start=1):
            try:
                items.append(Item(r, decode(r.value or b"")))
            except DeadLetterError as exc:
                undecodable.append((r, str(exc), "undecodable"))
            if n % 250 == 0:
                await asyncio.sleep(0)
        self._count(metrics.CONSUMED, records)
        return items, undecodable

    async def _write(
        self,
        records: list[ConsumerRecord],
        items: list[Item],
        undecodable: list[tuple[ConsumerRecord, str, str]],
        previous: _Chain,
        mine: _Chain,
    ) -> None:
        """Store one batch in its turn, then commit its offsets after the previous
        batch's; ``mine`` tells the next batch how each step went."""
        try:
            kept = await self._apply(records, items, undecodable, previous.applied)
            if kept is None:
                mine.abandon()
                return
            mine.applied.set_result(None)  # the next batch may apply while we commit
            if await self._commit(kept, previous.committed):
                mine.committed.set_result(None)
            else:
                mine.abandon()
        except BaseException:
            mine.abandon()
            raise

    def _owned(self, records: list[ConsumerRecord]) -> set[tuple[str, int]]:
        """The batch's partitions this member still owns."""
        owned = self.consumer.assignment()
        fetched = {TopicPartition(t, p) for t, p in {(r.topic, r.partition) for r in records}}
        return {(tp.topic, tp.partition) for tp in fetched & owned}

    def _owns_all(self, partitions: frozenset[tuple[str, int]]) -> bool:
        owned = self.consumer.assignment()
        return all(TopicPartition(t, p) in owned for t, p in partitions)

    async def _apply(
        self,
        records: list[ConsumerRecord],
        items: list[Item],
        undecodable: list[tuple[ConsumerRecord, str, str]],
        previous: asyncio.Future[None],
    ) -> list[ConsumerRecord] | None:
        """Store the batch (and dead-letter its poison) after every earlier batch.

        Returns the records stored (those of partitions still ours), or None when the
        batch was abandoned.
        """
        attempt = 0
        while True:
            # Partitions revoked since this batch was fetched belong to another member
            # now, which will read these records again: leave them to it.
            keep = self._owned(records)
            if len(keep) < len({(r.topic, r.partition) for r in records}):
                records = [r for r in records if (r.topic, r.partition) in keep]
                items = [i for i in items if (i.record.topic, i.record.partition) in keep]
                undecodable = [u for u in undecodable if (u[0].topic, u[0].partition) in keep]
            turn = _TurnOf(previous, functools.partial(self._owns_all, frozenset(keep)))
            try:
                rejected = await self._handle(items, turn)
                await turn
                await self._dead_letter([*undecodable, *rejected])
                return records
            except BatchAbandoned:
                return None
            except PartitionsMoved:
                continue  # drop the moved partitions' records and go again
            except (RetriableError, KafkaError, OSError) as exc:
                if not await self._back_off("batch", len(records), exc, attempt := attempt + 1):
                    return None

    async def _commit(self, records: list[ConsumerRecord], previous: asyncio.Future[None]) -> bool:
        """Commit the stored batch's offsets after the previous batch's; False if not."""
        try:
            await asyncio.shield(previous)
        except BatchAbandoned:
            return False  # committing past the earlier records would skip them
        offsets: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        attempt = 0
        while offsets:
            try:
                await self.consumer.commit(offsets)
                break
            except (KafkaError, OSError) as exc:
                if not await self._back_off("commit", len(records), exc, attempt := attempt + 1):
                    return False
                owned = self.consumer.assignment()  # a rebalance may have moved some
                offsets = {tp: o for tp, o in offsets.items() if tp in owned}
        self._count(metrics.PROCESSED, records)
        return True

    def _count(self, counter: Counter, records: list[ConsumerRecord]) -> None:
        """Add the records to a per-role, per-topic counter."""
        for topic, count in collections.Counter(r.topic for r in records).items():
            counter.labels(self.role, topic).inc(count)

    async def _back_off(self, what: str, size: int, exc: BaseException, attempt: int) -> bool:
        """Wait before retry ``attempt``; False when stopping instead.

        Stopping while the database or broker is away leaves the batch uncommitted (it
        is read again after a restart) instead of retrying until they come back.
        """
        if self._stopping.is_set():
            log.warning(
                "%s: stopping with a %s of %d not done (%s); it stays uncommitted",
                self.role,
                what,
                size,
                exc,
            )
            return False
        metrics.RETRIES.labels(self.role).inc()
        delay = min(self.max_backoff_s, 0.2 * 2**attempt) * (0.5 + random.random())
        log.warning(
            "%s: %s of %d failed (%s); retrying in %.1fs", self.role, what, size, exc, delay
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        return True

    async def _handle(
        self, items: list[Item], turn: _TurnOf
    ) -> list[tuple[ConsumerRecord, str, str]]:
        """Run the handler; poison it names is set aside and the rest retried at once."""
        pending = list(items)
        rejected: list[tuple[ConsumerRecord, str, str]] = []
        while pending:
            started = time.perf_counter()
            try:
                await self.handler(pending, turn)
            except PoisonRecords as bad:
                bad_ids = {id(i) for i in bad.items}
                if not bad_ids:
                    raise
                rejected.extend((i.record, bad.reason, "rejected") for i in bad.items)
                pending = [i for i in pending if id(i) not in bad_ids]
                continue
            metrics.BATCH_SIZE.labels(self.role).observe(len(pending))
            # From the turn on: the wait behind the previous batch is not this write's.
            since = max(started, turn.granted_at or started)
            metrics.WRITE_SECONDS.labels(self.role).observe(time.perf_counter() - since)
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
