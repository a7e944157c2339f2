"""Range partitions by month: created ahead, rows routed, default partition drained safely."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import asyncpg
import pytest

PARTITIONED = ("channel_messages", "recovery_events", "audit_logs")


@pytest.fixture
async def admin(db_url: str, admin_url_for) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(admin_url_for(db_url))
    yield conn
    await conn.close()


async def _tenant(conn: asyncpg.Connection) -> tuple[uuid.UUID, uuid.UUID]:
    tenant = await conn.fetchval(
        "INSERT INTO tenants (name, slug) VALUES ('Acme', $1) RETURNING id",
        f"acme-{uuid.uuid4().hex[:8]}",
    )
    integration = await conn.fetchval(
        "INSERT INTO channel_integrations (tenant_id, channel, name, credentials_encrypted) "
        "VALUES ($1, 'telegram', 'bot', decode(repeat('00', 28), 'hex')) RETURNING id",
        tenant,
    )
    return tenant, integration


async def _insert_message(
    conn: asyncpg.Connection,
    tenant: uuid.UUID,
    integration: uuid.UUID,
    external_id: str,
    sent_at: datetime,
) -> str:
    return await conn.fetchval(
        "INSERT INTO channel_messages (tenant_id, integration_id, channel, direction, "
        "external_id, conversation_key, sender_id, text, message_type, payload, sent_at) "
        "VALUES ($1, $2, 'telegram', 'inbound', $3, 'chat-1', 'u1', 'hi', 'text', '{}', $4) "
        "ON CONFLICT DO NOTHING RETURNING tableoid::regclass::text",
        tenant,
        integration,
        external_id,
        sent_at,
    )


def _month_name(parent: str, d: date) -> str:
    return f"{parent}_p{d.year:04d}{d.month:02d}"


def _add_months(d: date, n: int) -> date:
    y, m = divmod(d.month - 1 + n, 12)
    return date(d.year + y, m + 1, 1)


async def test_partitions_exist_ahead_with_a_default(admin: asyncpg.Connection) -> None:
    this_month = date.today().replace(day=1)
    for parent in PARTITIONED:
        rows = await admin.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = $1::regclass",
            parent,
        )
        names = {r[0] for r in rows}
        assert f"{parent}_default" in names
        for ahead in range(-1, 3):  # last month (late data) through two ahead
            assert _month_name(parent, _add_months(this_month, ahead)) in names
        assert (
            await admin.fetchval(
                "SELECT partstrat::text FROM pg_partitioned_table WHERE partrelid = $1::regclass",
                parent,
            )
            == "r"
        )


async def test_rows_land_in_their_month_and_far_ones_in_default(admin: asyncpg.Connection) -> None:
    tenant, integration = await _tenant(admin)
    now = datetime.now(UTC)
    assert await _insert_message(admin, tenant, integration, "1:1", now) == _month_name(
        "channel_messages", now.date().replace(day=1)
    )
    far = datetime(2031, 5, 17, tzinfo=UTC)
    assert await _insert_message(admin, tenant, integration, "1:2", far) == (
        "channel_messages_default"
    )


async def test_the_same_platform_message_cannot_be_stored_twice(admin: asyncpg.Connection) -> None:
    tenant, integration = await _tenant(admin)
    sent = datetime.now(UTC).replace(microsecond=0)
    assert await _insert_message(admin, tenant, integration, "42:7", sent) is not None
    assert await _insert_message(admin, tenant, integration, "42:7", sent) is None
    with pytest.raises(asyncpg.UniqueViolationError):
        await admin.execute(
            "INSERT INTO channel_messages (tenant_id, integration_id, channel, direction, "
            "external_id, conversation_key, sender_id, text, message_type, payload, sent_at) "
            "VALUES ($1, $2, 'telegram', 'inbound', '42:7', 'chat-1', 'u1', 'x', 'text', '{}', $3)",
            tenant,
            integration,
            sent,
        )
    assert (
        await admin.fetchval("SELECT count(*) FROM channel_messages WHERE external_id = '42:7'")
        == 1
    )


async def test_ensure_partitions_moves_default_rows_without_losing_any(
    admin: asyncpg.Connection,
) -> None:
    tenant, integration = await _tenant(admin)
    for i in range(5):
        await _insert_message(
            admin, tenant, integration, f"far:{i}", datetime(2031, 5, 1 + i, 12, tzinfo=UTC)
        )
    await _insert_message(admin, tenant, integration, "other", datetime(2032, 1, 2, tzinfo=UTC))
    created = await admin.fetchval(
        "SELECT sb_ensure_partitions('channel_messages'::regclass, 0, DATE '2031-05-01')"
    )
    assert created == 1
    placed = await admin.fetch(
        "SELECT external_id, tableoid::regclass::text AS part FROM channel_messages "
        "WHERE tenant_id = $1 ORDER BY external_id",
        tenant,
    )
    assert [(r["external_id"], r["part"]) for r in placed] == [
        *[(f"far:{i}", "channel_messages_p203105") for i in range(5)],
        ("other", "channel_messages_default"),
    ]
    assert (
        await admin.fetchval(
            "SELECT sb_ensure_partitions('channel_messages'::regclass, 0, DATE '2031-05-01')"
        )
        == 0
    )
