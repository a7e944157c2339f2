"""What a worker may retry: a transaction PostgreSQL rolled back by itself (a real deadlock)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.db.pool import retriable_on_disconnect
from shared.errors import RetriableError


async def test_a_deadlock_the_database_broke_is_retriable(db_url: str, admin_url_for) -> None:
    url = admin_url_for(db_url)
    a, b = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        await a.execute("CREATE TABLE probe (id int PRIMARY KEY)")
        await a.execute("INSERT INTO probe VALUES (1), (2)")
        holding = {1: asyncio.Event(), 2: asyncio.Event()}

        async def cross(conn: asyncpg.Connection, first: int, second: int) -> None:
            async with retriable_on_disconnect(), conn.transaction():
                await conn.execute("UPDATE probe SET id = id WHERE id = $1", first)
                holding[first].set()
                await holding[second].wait()
                await conn.execute("UPDATE probe SET id = id WHERE id = $1", second)

        outcomes = await asyncio.gather(cross(a, 1, 2), cross(b, 2, 1), return_exceptions=True)
    finally:
        await a.close()
        await b.close()
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1, outcomes  # PostgreSQL breaks the cycle by rolling one back
    assert isinstance(failed[0], RetriableError)
    assert "40P01" in str(failed[0])  # deadlock_detected


async def test_bad_data_is_not_retriable(db_url: str, admin_url_for) -> None:
    conn = await asyncpg.connect(admin_url_for(db_url))
    try:
        with pytest.raises(asyncpg.DataError):
            async with retriable_on_disconnect():
                await conn.execute("SELECT 'not a uuid'::uuid")
    finally:
        await conn.close()
