"""Migration 0012 on a database that already holds duplicate questions."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from shared.db.migrations import MigrationRunner
from shared.settings import REPO_ROOT


async def test_duplicates_are_soft_deleted_keeping_the_newest(empty_db: str, admin_url_for) -> None:
    runner = MigrationRunner(empty_db, REPO_ROOT / "sql")
    await runner.up(11)
    conn = await asyncpg.connect(admin_url_for(empty_db))  # superuser: no RLS in the way
    try:
        tenant = await conn.fetchval(
            "INSERT INTO tenants (name, slug) VALUES ('t', 'dup-t') RETURNING id"
        )
        for question, answer, age in [
            ("Opening hours?", "old", timedelta(days=2)),
            ("opening HOURS?", "newest", timedelta(hours=1)),
            ("Opening hours?", "older", timedelta(days=3)),
            ("Returns?", "only one", timedelta(days=1)),
        ]:
            await conn.execute(
                "INSERT INTO knowledge_entries (tenant_id, question, answer, updated_at) "
                "VALUES ($1, $2, $3, now() - $4::interval)",
                tenant,
                question,
                answer,
                age,
            )
        await runner.up(12)
        live = await conn.fetch(
            "SELECT answer FROM knowledge_entries WHERE deleted_at IS NULL ORDER BY answer"
        )
        assert [r["answer"] for r in live] == ["newest", "only one"]
        assert await conn.fetchval("SELECT count(*) FROM knowledge_entries") == 4
        # From now on a second live copy of a question is refused.
        try:
            await conn.execute(
                "INSERT INTO knowledge_entries (tenant_id, question, answer) "
                "VALUES ($1, 'RETURNS?', 'dup')",
                tenant,
            )
        except asyncpg.UniqueViolationError:
            pass
        else:
            raise AssertionError("a duplicate live question was accepted")
        await runner.down(11)
        await conn.execute(
            "INSERT INTO knowledge_entries (tenant_id, question, answer) "
            "VALUES ($1, 'RETURNS?', 'dup')",
            tenant,
        )
    finally:
        await conn.close()
