"""Partition maintenance: default partitions drained, old months archived, no row lost."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import asyncpg
import orjson
import pytest

from shared.db.partitions import PARTITIONED_TABLES, add_months, maintain
from shared.settings import REPO_ROOT

THIS_MONTH = datetime.now(UTC).date().replace(day=1)
FAR_FUTURE = date(2031, 5, 1)
TWO_YEARS_AGO = add_months(THIS_MONTH, -24)  # still inside a 24-month retention
LONG_AGO = add_months(THIS_MONTH, -30)  # beyond it


@pytest.fixture
async def admin(db_url: str, admin_url_for) -> AsyncIterator[asyncpg.Connection]:
    """Superuser: writes test rows regardless of row-level security."""
    conn = await asyncpg.connect(admin_url_for(db_url))
    yield conn
    await conn.close()


@pytest.fixture
async def tenant(admin: asyncpg.Connection) -> tuple[uuid.UUID, uuid.UUID]:
    tenant_id = await admin.fetchval(
        "INSERT INTO tenants (name, slug) VALUES ('Acme', $1) RETURNING id",
        f"acme-{uuid.uuid4().hex[:8]}",
    )
    integration = await admin.fetchval(
        "INSERT INTO channel_integrations (tenant_id, channel, name, credentials_encrypted) "
        "VALUES ($1, 'telegram', 'bot', decode(repeat('00', 28), 'hex')) RETURNING id",
        tenant_id,
    )
    return tenant_id, integration


def _at(month: date, day: int) -> datetime:
    return datetime(month.year, month.month, day, 12, tzinfo=UTC)


async def _add_rows(
    admin: asyncpg.Connection, tenant: tuple[uuid.UUID, uuid.UUID], month: date, n: int
) -> None:
    """``n`` rows dated in ``month`` in each partitioned table."""
    tenant_id, integration = tenant
    for i in range(n):
        at, tag = _at(month, 1 + i), uuid.uuid4().hex[:8]
        await admin.execute(
            "INSERT INTO channel_messages (tenant_id, integration_id, channel, direction, "
            "external_id, conversation_key, sender_id, text, message_type, payload, sent_at) "
            "VALUES ($1, $2, 'telegram', 'inbound', $3, 'chat-1', 'u1', 'hi', 'text', '{}', $4)",
            tenant_id,
            integration,
            f"m-{tag}",
            at,
        )
        await admin.execute(
            "INSERT INTO recovery_events (tenant_id, campaign_id, customer_ref, event_type, "
            "event_id, occurred_at) VALUES ($1, $2, 'c1', 'clicked', $3, $4)",
            tenant_id,
            uuid.uuid4(),
            uuid.uuid4(),
            at,
        )
        await admin.execute(
            "INSERT INTO audit_logs (tenant_id, seq, actor_type, action, event_id, occurred_at) "
            "VALUES ($1, $2, 'system', 'test.row', $3, $4)",
            tenant_id,
            i + 1,
            uuid.uuid4(),
            at,
        )


def _key(table: str) -> str:
    return "sent_at" if table == "channel_messages" else "occurred_at"


async def _placement(admin: asyncpg.Connection, table: str) -> dict[str, int]:
    """Rows per partition, as the parent sees them."""
    rows = await admin.fetch(
        f"SELECT tableoid::regclass::text AS part, count(*) FROM {table} GROUP BY 1"
    )
    return {r["part"]: r["count"] for r in rows}


def _part(table: str, month: date) -> str:
    return f"{table}_p{month:%Y%m}"


async def test_rows_in_default_partitions_move_to_their_months_and_none_is_lost(
    db_url: str, admin: asyncpg.Connection, tenant
) -> None:
    await _add_rows(admin, tenant, FAR_FUTURE, 3)
    await _add_rows(admin, tenant, TWO_YEARS_AGO, 2)
    for table in PARTITIONED_TABLES:
        assert await _placement(admin, table) == {f"{table}_default": 5}

    report = await maintain(db_url, months_ahead=3, retention_months=24)

    for table in PARTITIONED_TABLES:
        assert await _placement(admin, table) == {
            _part(table, FAR_FUTURE): 3,
            _part(table, TWO_YEARS_AGO): 2,
        }
        done = report.tables[table]
        assert done.moved_rows == {_part(table, FAR_FUTURE): 3, _part(table, TWO_YEARS_AGO): 2}
        # Ahead: the migration made last month .. +2; maintenance adds +3.
        assert set(done.created) == {
            _part(table, FAR_FUTURE),
            _part(table, TWO_YEARS_AGO),
            _part(table, add_months(THIS_MONTH, 3)),
        }
        assert done.detached == [] and done.skipped == []

    again = await maintain(db_url, months_ahead=3, retention_months=24)
    assert not again.changed
    assert all(not t.skipped for t in again.tables.values())


async def test_months_beyond_retention_are_archived_with_their_rows(
    db_url: str, admin: asyncpg.Connection, tenant
) -> None:
    owner = await asyncpg.connect(db_url)
    try:
        for table in PARTITIONED_TABLES:  # an old month that has its own partition
            await owner.fetchval(
                "SELECT sb_ensure_partitions($1::regclass, 0, $2)", table, LONG_AGO
            )
    finally:
        await owner.close()
    await _add_rows(admin, tenant, LONG_AGO, 4)
    await _add_rows(admin, tenant, THIS_MONTH, 1)

    report = await maintain(
        db_url,
        months_ahead=3,
        retention_months={"channel_messages": 24, "recovery_events": 24, "audit_logs": 31},
    )

    for table in ("channel_messages", "recovery_events"):
        name = _part(table, LONG_AGO)
        assert report.tables[table].detached == [
            {"partition": name, "archived_as": f"archive.{name}"}
        ]
        assert await admin.fetchval(f"SELECT count(*) FROM archive.{name}") == 4
        assert await _placement(admin, table) == {_part(table, THIS_MONTH): 1}
        assert await admin.fetchval("SELECT to_regclass($1)", f"public.{name}") is None
    # audit_logs keeps 31 months: nothing archived.
    assert report.tables["audit_logs"].detached == []
    assert (await _placement(admin, "audit_logs"))[_part("audit_logs", LONG_AGO)] == 4

    # Late rows for the archived month land in the default partition; the next run moves
    # them into a partition of their own and archives it beside the first.
    await _add_rows(admin, tenant, LONG_AGO, 1)
    late = await maintain(db_url, months_ahead=3, retention_months=24)
    name = _part("channel_messages", LONG_AGO)
    assert late.tables["channel_messages"].moved_rows == {name: 1}
    assert late.tables["channel_messages"].detached == [
        {"partition": name, "archived_as": f"archive.{name}_2"}
    ]
    assert await admin.fetchval(f"SELECT count(*) FROM archive.{name}") == 4
    assert await admin.fetchval(f"SELECT count(*) FROM archive.{name}_2") == 1
    assert (await _placement(admin, "audit_logs")).get(_part("audit_logs", LONG_AGO)) is None
    assert (
        await admin.fetchval(f"SELECT count(*) FROM archive.{_part('audit_logs', LONG_AGO)}") == 5
    )

    assert not (await maintain(db_url, months_ahead=3, retention_months=24)).changed


async def test_concurrent_maintainers_do_the_work_once(
    db_url: str, admin: asyncpg.Connection, tenant
) -> None:
    await _add_rows(admin, tenant, FAR_FUTURE, 2)
    reports = await asyncio.gather(
        *(maintain(db_url, months_ahead=3, retention_months=24) for _ in range(2))
    )
    moved = [r.tables["channel_messages"].moved_rows for r in reports]
    assert sorted(moved, key=len) == [{}, {_part("channel_messages", FAR_FUTURE): 2}]
    assert await _placement(admin, "channel_messages") == {_part("channel_messages", FAR_FUTURE): 2}


async def test_the_cli_prints_the_report(
    db_url: str, admin: asyncpg.Connection, tenant, tmp_path
) -> None:
    await _add_rows(admin, tenant, FAR_FUTURE, 1)
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "SWITCHBOARD_DATA_DIR": str(tmp_path),
        "SWITCHBOARD_RETENTION_MONTHS": "24",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "partitions",
        "maintain",
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    report = orjson.loads(out)
    name = _part("recovery_events", FAR_FUTURE)
    assert report["recovery_events"]["moved_rows"] == {name: 1}
    assert name in report["recovery_events"]["created"]
    assert report["today"] == datetime.now(UTC).date().isoformat()
    assert await _placement(admin, "recovery_events") == {name: 1}
