"""The recovery persister against the real broker and PostgreSQL: idempotent and poison-safe."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.workers.persister.recovery import RECOVERY_PERSISTER
from shared.db.pool import connect
from shared.events import DeadLetter, RecoveryEvent, Topics
from shared.integrations import IntegrationStore
from shared.settings import Settings
from tests.integration.workers.conftest import running, wait_until
from tests.support import read_topic, unique_slug

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
COUNT = "SELECT count(*) FROM recovery_events WHERE campaign_id = $1"


@pytest.fixture
async def db(worker_settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(worker_settings.require_database_url())
    yield conn
    await conn.close()


@pytest.fixture
async def campaign(store: IntegrationStore, db: asyncpg.Connection) -> tuple[uuid.UUID, uuid.UUID]:
    """(tenant id, campaign id) of a new tenant's active campaign."""
    tenant = await store.create_tenant("Shop", unique_slug())
    campaign_id = await db.fetchval(
        "INSERT INTO recovery_campaigns (tenant_id, name, kind, status, channel) "
        "VALUES ($1, 'Cart reminder', 'abandoned_cart', 'active', 'whatsapp') RETURNING id",
        tenant.id,
    )
    return tenant.id, campaign_id


def event(
    campaign: tuple[uuid.UUID, uuid.UUID],
    n: int,
    *,
    kind: str = "message_sent",
    currency: str | None = "EUR",
    customer: str = "cust-1",
) -> RecoveryEvent:
    tenant_id, campaign_id = campaign
    return RecoveryEvent(
        event_id=uuid.uuid5(campaign_id, str(n)),
        tenant_id=tenant_id,
        campaign_id=campaign_id,
        customer_ref=customer,
        event_type=kind,  # type: ignore[arg-type]
        amount_cents=1000 + n,
        currency=currency,
        payload={"n": n},
        occurred_at=T0 + timedelta(days=n),
    )


async def test_events_are_stored_once_even_when_replayed(
    worker_settings: Settings, publish, db: asyncpg.Connection, campaign, topics: Topics
) -> None:
    # Spread over months, one far ahead (its month has no partition: the default takes it).
    events = [event(campaign, n, customer=f"cust-{n % 3}") for n in range(8)]
    events.append(event(campaign, 2000, kind="recovered"))
    async with running(RECOVERY_PERSISTER, worker_settings):
        await publish(*events)
        assert await wait_until(db, COUNT, 9, campaign[1]) == 9
        await publish(*events)  # a replay
        await publish(*events[:4])
        await publish(event(campaign, 99, kind="clicked"))
        assert await wait_until(db, COUNT, 10, campaign[1]) == 10
    rows = await db.fetch(
        "SELECT event_id, event_type, amount_cents, currency, payload, occurred_at, "
        "customer_ref FROM recovery_events WHERE campaign_id = $1 ORDER BY occurred_at",
        campaign[1],
    )
    assert len(rows) == 10
    first = rows[0]
    assert tuple(first) == (
        events[0].event_id,
        "message_sent",
        1000,
        "EUR",
        {"n": 0},
        T0,
        "cust-0",
    )
    assert rows[-1]["event_type"] == "recovered"
    stats = await db.fetchrow(
        "SELECT messages_sent, clicked, recovered, recovered_amount_cents "
        "FROM recovery_campaign_stats WHERE campaign_id = $1",
        campaign[1],
    )
    assert tuple(stats) == (8, 1, 1, 3000)
    # A replay is not poison: nothing was dead-lettered.
    assert await read_topic(worker_settings.require_kafka(), topics.dlq, expect=0) == []


async def test_poison_is_dead_lettered_and_the_partition_moves_on(
    worker_settings: Settings,
    publish,
    raw_producer,
    db: asyncpg.Connection,
    campaign,
    topics: Topics,
) -> None:
    stranger = event((campaign[0], uuid.uuid4()), 1)  # a campaign the tenant does not have
    lowercase = event(campaign, 2, currency="eur")  # breaks the currency CHECK constraint
    good = event(campaign, 3)
    async with running(RECOVERY_PERSISTER, worker_settings):
        # Same key as the good event: the same partition must move on past the poison.
        await raw_producer.send_and_wait(topics.recovery, b"\x00 not json", key=good.kafka_key())
        await publish(stranger, lowercase, good)
        assert await wait_until(db, COUNT, 1, campaign[1]) == 1
    dead = await read_topic(worker_settings.require_kafka(), topics.dlq, expect=3)
    assert len(dead) == 3 and all(isinstance(d, DeadLetter) for d in dead)
    by_class = sorted((d.error_class, d.source_topic) for d in dead)  # type: ignore[union-attr]
    assert by_class == [
        ("rejected", topics.recovery),
        ("rejected", topics.recovery),
        ("undecodable", topics.recovery),
    ]
    reasons = sorted(d.reason for d in dead if d.error_class == "rejected")  # type: ignore[union-attr]
    assert "unknown campaign" in reasons[1]
    assert reasons[0] == "rejected by the database: 23514"  # check_violation
    assert all(d.consumer_group.endswith("recovery-persister") for d in dead)  # type: ignore[union-attr]
    stored = await db.fetchval(
        "SELECT event_id FROM recovery_events WHERE campaign_id = $1", campaign[1]
    )
    assert stored == good.event_id
