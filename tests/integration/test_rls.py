"""Row-level security: a tenant session sees and writes only its own rows."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from shared.db.pool import APP_ROLE, WORKER_ROLE, connect, tenant_transaction


@pytest.fixture
async def two_tenants(db_url: str) -> tuple[uuid.UUID, uuid.UUID]:
    """Two tenants, each with an integration, a conversation, a message and a lead."""
    conn = await connect(db_url)  # acts as switchboard_worker: cross-tenant writer
    ids = []
    try:
        for name in ("a", "b"):
            tenant = await conn.fetchval(
                "INSERT INTO tenants (name, slug) VALUES ($1, $2) RETURNING id",
                f"Tenant {name}",
                f"tenant-{name}-{uuid.uuid4().hex[:6]}",
            )
            integration = await conn.fetchval(
                "INSERT INTO channel_integrations (tenant_id, channel, name, "
                "credentials_encrypted) VALUES ($1, 'slack', 'ws', "
                "decode(repeat('00', 28), 'hex')) RETURNING id",
                tenant,
            )
            await conn.execute(
                "INSERT INTO conversations (tenant_id, integration_id, channel, "
                "conversation_key) VALUES ($1, $2, 'slack', 'C1')",
                tenant,
                integration,
            )
            await conn.execute(
                "INSERT INTO channel_messages (tenant_id, integration_id, channel, direction, "
                "external_id, conversation_key, sender_id, text, sent_at) "
                "VALUES ($1, $2, 'slack', 'inbound', 'C1:1.0001', 'C1', 'U1', $3, $4)",
                tenant,
                integration,
                f"secret of {name}",
                datetime.now(UTC),
            )
            await conn.execute(
                "INSERT INTO leads (tenant_id, name, email) VALUES ($1, $2, $3)",
                tenant,
                f"lead {name}",
                f"{name}@example.com",
            )
            ids.append(tenant)
    finally:
        await conn.close()
    return ids[0], ids[1]


@pytest.fixture
async def app_conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(db_url, role=None)
    yield conn
    await conn.close()


TENANT_TABLES = ("tenants", "channel_integrations", "conversations", "channel_messages", "leads")


async def test_a_tenant_session_sees_only_its_own_rows(
    app_conn: asyncpg.Connection, two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, b = two_tenants
    async with tenant_transaction(app_conn, a):
        for table in TENANT_TABLES:
            column = "id" if table == "tenants" else "tenant_id"
            seen = {r[0] for r in await app_conn.fetch(f"SELECT {column} FROM {table}")}
            assert seen == {a}, table
        texts = [r[0] for r in await app_conn.fetch("SELECT text FROM channel_messages")]
        assert texts == ["secret of a"]
        # Even asking for B's rows by id returns nothing.
        assert (
            await app_conn.fetchval("SELECT count(*) FROM channel_messages WHERE tenant_id = $1", b)
            == 0
        )


async def test_a_tenant_session_cannot_write_into_another_tenant(
    app_conn: asyncpg.Connection, two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, b = two_tenants
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with tenant_transaction(app_conn, a):
            await app_conn.execute("INSERT INTO leads (tenant_id, name) VALUES ($1, 'smuggled')", b)
    async with tenant_transaction(app_conn, a):
        updated = await app_conn.execute("UPDATE leads SET name = 'x' WHERE tenant_id = $1", b)
        assert updated == "UPDATE 0"


async def test_no_tenant_set_means_no_rows_even_for_the_table_owner(
    app_conn: asyncpg.Connection, two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    # app_conn logs in as the owner of the tables; FORCE RLS applies to it as well.
    assert await app_conn.fetchval("SELECT count(*) FROM channel_messages") == 0
    async with app_conn.transaction():
        await app_conn.execute(f'SET LOCAL ROLE "{WORKER_ROLE}"')
        assert await app_conn.fetchval("SELECT count(*) FROM channel_messages") == 2


async def test_every_tenant_owned_table_forces_row_level_security(
    app_conn: asyncpg.Connection,
) -> None:
    rows = await app_conn.fetch(
        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "AND (EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid "
        "             AND a.attname = 'tenant_id' AND NOT a.attisdropped) "
        "     OR c.relname = 'tenants')"
    )
    assert len(rows) >= 15
    unprotected = [r["relname"] for r in rows if not (r[1] and r[2])]
    assert unprotected == []


async def test_application_roles_cannot_bypass_rls(app_conn: asyncpg.Connection) -> None:
    rows = await app_conn.fetch(
        "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = ANY($1)",
        [APP_ROLE, WORKER_ROLE],
    )
    assert {r["rolname"]: (r["rolsuper"], r["rolbypassrls"]) for r in rows} == {
        APP_ROLE: (False, False),
        WORKER_ROLE: (False, False),
    }
