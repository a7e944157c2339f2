"""Persister throughput against, in the same run, the raw COPY ceiling and a per-row consumer.

All three write the same kind of rows into the same ``channel_messages`` table of one
embedded PostgreSQL, reading from one embedded broker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer

from services.workers.persister.role import PERSISTER
from services.workers.persister.rows import MESSAGE_COLUMNS, message_row
from shared.crypto import CredentialCipher, new_key, parse_key
from shared.db.pool import connect, create_pool
from shared.events import MessageInbound, Topics, decode
from shared.integrations import Integration, IntegrationStore
from shared.kafka import EventPublisher, create_producer
from shared.settings import Settings
from tests.bench.stack import own_topics, timed_role

EVENTS = 50_000
PER_ROW_EVENTS = 5_000


def _events(integration: Integration, n: int, offset: int = 0) -> list[MessageInbound]:
    base = datetime.now(UTC).replace(microsecond=0)
    return [
        MessageInbound(
            tenant_id=integration.tenant_id,
            integration_id=integration.id,
            channel="widget",
            conversation_key=f"s{i % 1000}",
            external_id=f"m{offset + i}",
            sender_id=f"v{i % 1000}",
            text=f"benchmark message {i}",
            sent_at=base + timedelta(milliseconds=i),
        )
        for i in range(n)
    ]


async def _integration(settings: Settings) -> Integration:
    pool = await create_pool(settings.require_database_url(), min_size=1, max_size=1)
    try:
        store = IntegrationStore(pool, CredentialCipher(parse_key(new_key())))
        tenant = await store.create_tenant("Bench", f"bench-{uuid.uuid4().hex[:8]}")
        return await store.add_integration(tenant, "widget", {"allowed_origins": "https://b.x"})
    finally:
        await pool.close()


async def _count(settings: Settings, integration: Integration) -> int:
    conn = await connect(settings.require_database_url())
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM channel_messages WHERE integration_id = $1", integration.id
            )
        )
    finally:
        await conn.close()


async def _produce(settings: Settings, topics: Topics, events: list[MessageInbound]) -> None:
    producer = create_producer(settings, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        publisher = EventPublisher(producer, topics)
        for start in range(0, len(events), 5000):
            futures = [await publisher.send(e) for e in events[start : start + 5000]]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def persister_rate(settings: Settings) -> float:
    """Rows/s of the persister role: from its first stored batch until all are stored.

    Each run has topics of its own, so runs can repeat in one stack.
    """
    settings, topics = await own_topics(settings, "p")
    integration = await _integration(settings)
    await _produce(settings, topics, _events(integration, EVENTS))
    elapsed = await timed_role(PERSISTER, settings, topics.inbound, EVENTS)
    assert await _count(settings, integration) == EVENTS
    print(f"persister: {EVENTS} rows in {elapsed:.2f}s")
    return EVENTS / elapsed


async def copy_rate(settings: Settings, superuser_url: str) -> float:
    """Rows/s of COPY of the same rows straight into channel_messages (the ceiling).

    COPY FROM is refused on tables with row-level security, so the ceiling runs as the
    superuser (which RLS does not apply to): the fastest path PostgreSQL has.
    """
    integration = await _integration(settings)
    rows = [message_row(e) for e in _events(integration, EVENTS)]
    conn = await connect(superuser_url, role=None)
    try:
        started = time.perf_counter()
        async with conn.transaction():
            await conn.copy_records_to_table(
                "channel_messages", records=rows, columns=MESSAGE_COLUMNS
            )
        return len(rows) / (time.perf_counter() - started)
    finally:
        await conn.close()


async def per_row_rate(settings: Settings) -> float:
    """Rows/s of a naive consumer: one INSERT per message, offsets committed per fetch."""
    integration = await _integration(settings)
    settings, topics = await own_topics(settings, "perrow")
    await _produce(settings, topics, _events(integration, PER_ROW_EVENTS))
    columns = ", ".join(MESSAGE_COLUMNS)
    params = ", ".join(f"${i}" for i in range(1, len(MESSAGE_COLUMNS) + 1))
    sql = (
        f"INSERT INTO channel_messages ({columns}) VALUES ({params}) "
        "ON CONFLICT (tenant_id, integration_id, direction, external_id, sent_at) DO NOTHING"
    )
    consumer = AIOKafkaConsumer(
        topics.inbound,
        bootstrap_servers=settings.require_kafka(),
        group_id=f"per-row-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    conn = await connect(settings.require_database_url())
    await consumer.start()
    try:
        stored, started = 0, None
        while stored < PER_ROW_EVENTS:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    started = started or time.perf_counter()
                    await conn.execute(sql, *message_row(decode(record.value)))  # type: ignore
                    stored += 1
            await consumer.commit()
        return stored / (time.perf_counter() - (started or time.perf_counter()))
    finally:
        await consumer.stop()
        await conn.close()


async def checkpoint(superuser_url: str) -> None:
    """Flush what earlier figures wrote, so their checkpoint does not land in the next."""
    conn = await connect(superuser_url, role=None)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def run(settings: Settings, superuser_url: str, repeat: int = 3) -> dict[str, float]:
    """Best of ``repeat`` runs of each figure, interleaved, so a noisy neighbour on the
    machine does not decide a ratio; each run starts after a checkpoint."""
    persister, ceiling, per_row = 0.0, 0.0, 0.0
    for _ in range(repeat):
        await checkpoint(superuser_url)
        persister = max(persister, await persister_rate(settings))
        await checkpoint(superuser_url)
        ceiling = max(ceiling, await copy_rate(settings, superuser_url))
        await checkpoint(superuser_url)
        per_row = max(per_row, await per_row_rate(settings))
    return {
        "persister_rows_per_s": round(persister),
        "persister_copy_ceiling_rows_per_s": round(ceiling),
        "persister_per_row_baseline_rows_per_s": round(per_row),
        "persister_vs_copy_ratio": round(persister / ceiling, 3),
        "persister_vs_per_row_ratio": round(persister / per_row, 2),
    }
