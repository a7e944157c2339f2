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


async def _init_connection(
    conn: asyncpg.Connection, role: str | None, session_sql: str | None = None
) -> None:
    # Binary codecs, so COPY (binary) can carry JSON too; jsonb's wire format is b"\x01" + text.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "json", encoder=orjson.dumps, decoder=orjson.loads, schema="pg_catalog", format="binary"
    )
    if role:
        # SET ROLE survives the pool's RESET ALL on release (role is not reset by it).
        await conn.execute(f'SET ROLE "{role}"')
    if session_sql:
        await conn.execute(session_sql)


async def create_pool(
    dsn: str,
    *,
    role: str | None = WORKER_ROLE,
    min_size: int = 1,
    max_size: int = 10,
    session_sql: str | None = None,
) -> asyncpg.Pool:
    """A pool whose connections act as ``role`` with orjson JSON codecs.

    ``session_sql`` runs once per new connection (e.g. to create session temp tables).
    """
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=lambda conn: _init_connection(conn, role, session_sql),
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


#: Errors that mean "the database is not reachable right now", not "this data is bad".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # A connection left mid-operation by a lost server: unusable, not a data problem.
    asyncpg.exceptions._base.InternalClientError,
)


@asynccontextmanager
async def retriable_on_disconnect(pool: asyncpg.Pool | None = None) -> AsyncIterator[None]:
    """Translate a lost database into RetriableError, so callers back off and retry.

    With ``pool``, its connections are also expired: after a server restart they are
    all dead, and the retry must not pick one of them. A transaction the database
    rolled back on its own (a deadlock, a serialization failure) is retriable too: it
    changed nothing and simply runs again.
    """
    from shared.errors import RetriableError

    try:
        yield
    except CONNECTION_ERRORS as exc:
        if pool is not None:
            await pool.expire_connections()
        raise RetriableError(f"database unavailable: {type(exc).__name__}") from exc
    except asyncpg.TransactionRollbackError as exc:
        raise RetriableError(f"transaction rolled back by the database: {exc.sqlstate}") from exc
