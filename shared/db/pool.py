"""Connection pools and tenant-scoped transactions.

Tables force row-level security, so every connection acts as one of two roles:
``switchboard_worker`` (cross-tenant stream processors; the pool default) or
``switchboard_app`` inside :func:`tenant_transaction` (one tenant's rows only).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import orjson

APP_ROLE = "switchboard_app"
WORKER_ROLE = "switchboard_worker"


async def _init_connection(conn: asyncpg.Connection, role: str | None) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )
    if role:
        # SET ROLE survives the pool's RESET ALL on release (role is not reset by it).
        await conn.execute(f'SET ROLE "{role}"')


async def create_pool(
    dsn: str, *, role: str | None = WORKER_ROLE, min_size: int = 1, max_size: int = 10
) -> asyncpg.Pool:
    """A pool whose connections act as ``role`` with orjson JSON codecs."""
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=lambda conn: _init_connection(conn, role),
    )


async def connect(dsn: str, *, role: str | None = WORKER_ROLE) -> asyncpg.Connection:
    """A single connection set up like the pool's."""
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn, role)
    return conn


@asynccontextmanager
async def tenant_transaction(
    conn: asyncpg.Connection, tenant_id: uuid.UUID | str
) -> AsyncIterator[asyncpg.Connection]:
    """A transaction that sees and writes only ``tenant_id``'s rows, enforced by the database."""
    async with conn.transaction():
        await conn.execute(f'SET LOCAL ROLE "{APP_ROLE}"')
        await conn.execute(
            "SELECT set_config('switchboard.tenant_id', $1, true)", str(uuid.UUID(str(tenant_id)))
        )
        yield conn
