"""A worker-role connection to this test's database and tenants to own knowledge."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from shared.db.pool import connect
from tests.support import unique_slug


@pytest.fixture
async def worker_conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection acting as switchboard_worker (cross-tenant), as the agent role's."""
    conn = await connect(db_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def make_tenant(
    worker_conn: asyncpg.Connection,
) -> Callable[[], Awaitable[uuid.UUID]]:
    async def make() -> uuid.UUID:
        slug = unique_slug()
        return await worker_conn.fetchval(
            "INSERT INTO tenants (name, slug) VALUES ($1, $2) RETURNING id", slug, slug
        )

    return make
