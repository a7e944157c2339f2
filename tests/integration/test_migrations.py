"""Migrations against a real PostgreSQL: up, down, up again; idempotent; concurrent-safe."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from shared.db.migrations import MigrationRunner
from shared.errors import MigrationError
from shared.settings import REPO_ROOT

SQL_DIR = REPO_ROOT / "sql"


async def _objects(url: str) -> dict[str, set[str]]:
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm') "
            "AND c.relname <> 'schema_migrations'"
        )
        functions = await conn.fetch(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "LEFT JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e' "
            "WHERE n.nspname = 'public' AND d.objid IS NULL"
        )
        types = await conn.fetch(
            "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "LEFT JOIN pg_depend d ON d.objid = t.oid AND d.deptype = 'e' "
            "WHERE n.nspname = 'public' AND t.typtype = 'e' AND d.objid IS NULL"
        )
        return {
            "tables": {r[0] for r in tables},
            "functions": {r[0] for r in functions},
            "types": {r[0] for r in types},
        }
    finally:
        await conn.close()


async def test_up_down_up_leaves_the_same_schema(empty_db: str) -> None:
    runner = MigrationRunner(empty_db, SQL_DIR)
    assert await runner.up() == list(range(1, runner.latest + 1))
    first = await _objects(empty_db)
    assert {
        "tenants",
        "channel_messages",
        "recovery_events",
        "audit_logs",
        "conversations",
        "conversation_flows",
        "knowledge_entries",
        "leads",
    } <= first["tables"]

    assert await runner.down() == list(range(runner.latest, 0, -1))
    assert await _objects(empty_db) == {"tables": set(), "functions": set(), "types": set()}
    assert await runner.applied() == {}

    assert await runner.up() == list(range(1, runner.latest + 1))
    assert await _objects(empty_db) == first


async def test_running_migrate_twice_is_a_no_op(empty_db: str) -> None:
    runner = MigrationRunner(empty_db, SQL_DIR)
    await runner.up()
    before = await runner.applied()
    assert await runner.up() == []
    assert await runner.applied() == before


async def test_two_processes_migrating_at_once_apply_each_migration_once(empty_db: str) -> None:
    runners = [MigrationRunner(empty_db, SQL_DIR) for _ in range(3)]
    results = await asyncio.gather(*(r.up() for r in runners))
    applied = sorted(v for result in results for v in result)
    assert applied == list(range(1, runners[0].latest + 1))
    conn = await asyncpg.connect(empty_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == runners[0].latest
    finally:
        await conn.close()


async def test_partial_targets_step_up_and_down(empty_db: str) -> None:
    runner = MigrationRunner(empty_db, SQL_DIR)
    assert await runner.up(target=2) == [1, 2]
    assert await runner.down(target=1) == [2]
    assert sorted(await runner.applied()) == [1]
    await runner.down()


async def test_an_edited_applied_migration_is_refused(empty_db: str, tmp_path: Path) -> None:
    sql_copy = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_copy)
    await MigrationRunner(empty_db, sql_copy).up(target=1)
    first_up = sorted(sql_copy.glob("0001_*.up.sql"))[0]
    first_up.write_text(first_up.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        await MigrationRunner(empty_db, sql_copy).up()


async def test_a_failing_migration_changes_nothing(empty_db: str, tmp_path: Path) -> None:
    sql_copy = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_copy)
    nxt = len(list(sql_copy.glob("*.up.sql"))) + 1
    (sql_copy / f"{nxt:04d}_broken.up.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT no_such_function();\n"
    )
    (sql_copy / f"{nxt:04d}_broken.down.sql").write_text("DROP TABLE half_done;\n")
    runner = MigrationRunner(empty_db, sql_copy)
    with pytest.raises(MigrationError, match="broken"):
        await runner.up()
    assert nxt not in await runner.applied()
    assert "half_done" not in (await _objects(empty_db))["tables"]
