"""The dead-letter topic made visible and recoverable: list it, replay from it, measure it.

Reading never joins a consumer group or commits: ``list`` and ``replay`` see every
partition from its first offset to the end offset it had when the call started.
``replay`` republishes a record's original bytes and key to its source topic
(acks=all) and records one ``dlq.replayed`` audit event per record. Replayed records
stay in the dead-letter topic; replaying one twice is the operator's choice.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from services.workers.metrics import DLQ_DEPTH
from shared.errors import DeadLetterError, SwitchboardError
from shared.events import AuditEvent, DeadLetter, Envelope, decode, decode_as
from shared.kafka import EventPublisher

log = logging.getLogger(__name__)

#: Empty one-second polls before reading a partition gives up (the broker is not answering).
_MAX_IDLE_POLLS = 30

REPLAY_WARNING = (
    "warning: replay publishes the original records to their source topics again and "
    "leaves them in the dead-letter topic. Consumers dedupe by event id (the persisters "
    "are idempotent), so a record replayed twice is stored once, but any consumer that "
    "is not idempotent sees it twice."
)


@dataclass(frozen=True)
class DeadRecord:
    """One record of the dead-letter topic, by its own partition and offset."""

    partition: int
    offset: int
    letter: DeadLetter | None  # None when the dead-letter record itself does not decode
    size: int

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True)
class Selection:
    """Which dead letters an operator means: ids, and/or filters (all match when empty)."""

    ids: frozenset[tuple[int, int]] = frozenset()
    source_topic: str | None = None
    reason_contains: str | None = None

    def matches(self, record: DeadRecord) -> bool:
        if self.ids and (record.partition, record.offset) not in self.ids:
            return False
        letter = record.letter
        if self.source_topic is not None and (
            letter is None or letter.source_topic != self.source_topic
        ):
            return False
        if self.reason_contains is not None:
            return letter is not None and self.reason_contains.lower() in letter.reason.lower()
        return True


def parse_id(value: str) -> tuple[int, int]:
    """``P:O`` → (partition, offset) of a dead-letter record."""
    partition, sep, offset = value.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise SwitchboardError(f"--id expects PARTITION:OFFSET, got {value!r}")
    return int(partition), int(offset)


def describe(record: DeadRecord, *, now: datetime) -> dict[str, Any]:
    """What ``dlq list`` shows of one record (never the original bytes)."""
    letter = record.letter
    if letter is None:
        return {"id": record.id, "undecodable_dead_letter": True, "size": record.size}
    return {
        "id": record.id,
        "reason": letter.reason,
        "error_class": letter.error_class,
        "consumer_group": letter.consumer_group,
        "source_topic": letter.source_topic,
        "source_partition": letter.source_partition,
        "source_offset": letter.source_offset,
        "age_s": round((now - letter.occurred_at).total_seconds(), 1),
        "dead_lettered_at": letter.occurred_at.isoformat(),
        "original_key": (
            letter.original_key.decode(errors="replace") if letter.original_key else None
        ),
        "original_size": len(letter.original_value),
    }


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    # aiokafka has no public "partitions of a topic, fetching metadata if needed".
    ids = await consumer._client._wait_on_metadata(topic)
    return [TopicPartition(topic, p) for p in sorted(ids)]


async def read_dead_letters(bootstrap: str, topic: str) -> AsyncIterator[DeadRecord]:
    """Every record of the topic up to its end offsets at call time, partition by partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        client_id="switchboard-dlq",
    )
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic)
        consumer.assign(tps)
        start, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        for tp in tps:
            if end[tp] <= start[tp]:
                continue
            consumer.seek(tp, start[tp])
            idle = 0
            while await consumer.position(tp) < end[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                idle = 0 if batch else idle + 1
                if idle >= _MAX_IDLE_POLLS:
                    raise SwitchboardError(f"{topic} partition {tp.partition} stopped answering")
                for r in batch.get(tp, []):
                    if r.offset >= end[tp]:
                        break
                    yield DeadRecord(r.partition, r.offset, _letter(r.value), len(r.value or b""))
    finally:
        await consumer.stop()


def _letter(value: bytes | None) -> DeadLetter | None:
    try:
        return decode_as(value or b"", DeadLetter)
    except DeadLetterError:
        return None


async def select(
    bootstrap: str, topic: str, selection: Selection, *, limit: int | None = None
) -> AsyncIterator[DeadRecord]:
    """The matching records, at most ``limit`` of them."""
    if limit is not None and limit <= 0:
        return
    found = 0
    async for record in read_dead_letters(bootstrap, topic):
        if selection.matches(record):
            yield record
            found += 1
            if limit is not None and found >= limit:
                return


async def replay(
    records: Iterable[DeadRecord],
    *,
    producer: AIOKafkaProducer,
    audit: EventPublisher,
    actor_id: str,
    dlq_topic: str,
) -> AsyncIterator[dict[str, Any]]:
    """Send each record's original bytes back to its source topic, then audit the replay."""
    for record in records:
        letter = record.letter
        if letter is None:
            raise SwitchboardError(f"dead letter {record.id} does not decode; cannot replay it")
        sent = await producer.send_and_wait(
            letter.source_topic, value=letter.original_value, key=letter.original_key
        )
        original = _original(letter.original_value)
        coordinates = {
            "dlq_topic": dlq_topic,
            "dlq_partition": record.partition,
            "dlq_offset": record.offset,
            "source_topic": letter.source_topic,
            "source_partition": letter.source_partition,
            "source_offset": letter.source_offset,
            "consumer_group": letter.consumer_group,
            "reason": letter.reason,
            "replayed_partition": sent.partition,
            "replayed_offset": sent.offset,
            "original_event_id": str(original.event_id) if original else None,
            "original_tenant_id": str(original.tenant_id) if original else None,
        }
        await audit.publish(
            AuditEvent(
                actor_type="operator",
                actor_id=actor_id,
                action="dlq.replayed",
                resource_type="dead_letter",
                resource_id=f"{dlq_topic}:{record.id}",
                metadata=coordinates,
            )
        )
        log.info("replayed dead letter %s to %s", record.id, letter.source_topic)
        yield {"id": record.id, **coordinates}


def _original(value: bytes) -> Envelope | None:
    try:
        return decode(value)
    except DeadLetterError:
        return None


async def dlq_depth(consumer: AIOKafkaConsumer, topic: str) -> int:
    """Records in the dead-letter topic: end offsets minus start offsets, summed."""
    tps = await _partitions(consumer, topic)
    start, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
    return sum(max(0, end[tp] - start[tp]) for tp in tps)


async def refresh_depth_metric(
    consumer: AIOKafkaConsumer, topic: str, *, timeout_s: float = 5.0
) -> None:
    """Set the gauge before a scrape; NaN (unknown) while the broker does not answer."""
    try:
        depth = await asyncio.wait_for(dlq_depth(consumer, topic), timeout_s)
    except (KafkaError, TimeoutError, OSError) as exc:
        log.warning("dead-letter depth unavailable: %s", type(exc).__name__)
        DLQ_DEPTH.labels(topic).set(math.nan)
    else:
        DLQ_DEPTH.labels(topic).set(depth)
