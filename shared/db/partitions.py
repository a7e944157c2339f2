"""Partition maintenance: months created ahead, default partitions drained, old months archived.

Run by ``switchboard up`` on a schedule and by ``switchboard partitions maintain``.
For each range-partitioned table it
1. creates the monthly partitions from last month through ``months_ahead``;
2. creates a partition for every month that has rows in the DEFAULT partition, so
   those rows move into their proper partition (``sb_ensure_partitions`` moves them
   in one statement inside our transaction: all or nothing);
3. detaches the partitions whose whole month is older than the retention cutoff and
   moves them, rows intact, into the archive schema (nothing is ever dropped).

It connects as the table owner (the migrator login, no SET ROLE): only the owner may
create, attach and detach partitions. A session advisory lock serializes maintainers,
so a second one waits and then finds nothing left to do. Steps 1-2 and step 3 run in
separate transactions, each with a lock timeout, so a busy table is skipped (and
reported) instead of queueing every writer behind maintenance.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from shared.errors import ConfigurationError
from shared.settings import Settings

log = logging.getLogger(__name__)

#: The range-partitioned tables, monthly on their time column.
PARTITIONED_TABLES: tuple[str, ...] = ("channel_messages", "recovery_events", "audit_logs")
#: Every maintainer of every Switchboard database takes this session lock (migrations use ...01).
ADVISORY_LOCK_KEY = 0x5B_0002

_CHILDREN = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = $1::regclass
"""

_PARTITION_KEY = """
SELECT n.nspname AS schema, a.attname AS key, a.atttypid::regtype::text AS key_type,
       CASE WHEN pt.partdefid <> 0 THEN pt.partdefid::regclass::text END AS default_part
FROM pg_partitioned_table pt
JOIN pg_class c ON c.oid = pt.partrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
WHERE pt.partrelid = $1::regclass
"""


@dataclass
class TableReport:
    """What maintenance did to one partitioned table."""

    created: list[str] = field(default_factory=list)
    moved_rows: dict[str, int] = field(default_factory=dict)
    detached: list[dict[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class MaintenanceReport:
    """Per table: partitions created, rows moved out of DEFAULT, partitions archived."""

    today: date
    tables: dict[str, TableReport] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(t.created or t.moved_rows or t.detached for t in self.tables.values())

    def to_dict(self) -> dict[str, Any]:
        return {"today": self.today.isoformat(), **{k: asdict(v) for k, v in self.tables.items()}}


def add_months(month: date, n: int) -> date:
    """The first day of the month ``n`` months after ``month``'s."""
    y, m = divmod(month.month - 1 + n, 12)
    return date(month.year + y, m + 1, 1)


def retention_from(settings: Settings) -> dict[str, int]:
    """Months kept attached, per table: audit_logs has its own (longer) setting."""
    return {
        table: settings.audit_retention_months
        if table == "audit_logs"
        else settings.retention_months
        for table in PARTITIONED_TABLES
    }


async def maintain_with(settings: Settings, dsn: str | None = None) -> MaintenanceReport:
    """``maintain`` as configured; ``dsn`` must be the table owner's (defaults to DATABASE_URL)."""
    return await maintain(
        dsn or settings.require_database_url(),
        months_ahead=settings.partitions_months_ahead,
        retention_months=retention_from(settings),
    )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def maintain(
    dsn: str,
    *,
    months_ahead: int,
    retention_months: int | Mapping[str, int],
    archive_schema: str = "archive",
    tables: tuple[str, ...] = PARTITIONED_TABLES,
    today: date | None = None,
    lock_timeout_s: float = 10.0,
) -> MaintenanceReport:
    """Maintain every partitioned table; ``retention_months`` may be set per table."""
    today = today or datetime.now(UTC).date()
    this_month = today.replace(day=1)
    report = MaintenanceReport(today)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        for table in tables:
            retention = (
                retention_months[table]
                if isinstance(retention_months, Mapping)
                else retention_months
            )
            if retention < 1:
                raise ConfigurationError(f"retention for {table} must be at least one month")
            result = report.tables[table] = TableReport()
            async with _step(conn, result, "ensure", lock_timeout_s):
                await _ensure(
                    conn,
                    table,
                    result,
                    from_month=add_months(this_month, -1),
                    months_ahead=months_ahead,
                )
            async with _step(conn, result, "archive", lock_timeout_s):
                await _archive(
                    conn,
                    table,
                    result,
                    cutoff=add_months(this_month, -retention),
                    archive_schema=archive_schema,
                )
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    finally:
        await conn.close()
    if report.changed:
        log.info("partition maintenance: %s", report.to_dict())
    return report


@asynccontextmanager
async def _step(
    conn: asyncpg.Connection, result: TableReport, step: str, lock_timeout_s: float
) -> AsyncIterator[None]:
    """One transaction; a lock not granted in time skips the step until the next run."""
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
            yield
    except asyncpg.LockNotAvailableError:
        log.warning("partition maintenance: %s step skipped, table busy", step)
        result.skipped.append(f"{step}: lock not available within {lock_timeout_s:g}s")


async def _ensure(
    conn: asyncpg.Connection,
    table: str,
    result: TableReport,
    *,
    from_month: date,
    months_ahead: int,
) -> None:
    """Partitions ahead, and one for each month that has rows waiting in DEFAULT."""
    meta = await conn.fetchrow(_PARTITION_KEY, table)
    if meta is None:
        raise ValueError(f"{table} is not a partitioned table")
    before = {r[0] for r in await conn.fetch(_CHILDREN, table)}
    waiting: list[date] = []
    if meta["default_part"]:
        key = _ident(meta["key"])
        month_of = (
            f"({key} AT TIME ZONE 'UTC')" if meta["key_type"] == "timestamp with time zone" else key
        )
        waiting = [
            r[0]
            for r in await conn.fetch(
                f"SELECT DISTINCT date_trunc('month', {month_of})::date "
                f"FROM ONLY {meta['default_part']} ORDER BY 1"
            )
        ]
    await conn.fetchval(
        "SELECT sb_ensure_partitions($1::regclass, $2, $3)", table, months_ahead + 1, from_month
    )
    for month in waiting:
        await conn.fetchval("SELECT sb_ensure_partitions($1::regclass, 0, $2)", table, month)
    after = {r[0] for r in await conn.fetch(_CHILDREN, table)}
    created = sorted(after - before)
    result.created.extend(created)
    for name in created:
        # Created in this transaction, so no one else can have written to it yet.
        moved = await conn.fetchval(
            f"SELECT count(*) FROM ONLY {_ident(meta['schema'])}.{_ident(name)}"
        )
        if moved:
            result.moved_rows[name] = moved
    stuck = [m for m in waiting if f"{table}_p{m:%Y%m}" not in after]
    if stuck:
        # A table of the month's name exists but is not a partition (the server logs why).
        result.skipped.append(
            f"ensure: rows of {len(stuck)} month(s) stay in the default partition"
        )


async def _archive(
    conn: asyncpg.Connection,
    table: str,
    result: TableReport,
    *,
    cutoff: date,
    archive_schema: str,
) -> None:
    """Detach months ending on or before ``cutoff`` and move them into the archive schema."""
    detached = [
        r[0]
        for r in await conn.fetch(
            "SELECT sb_detach_partitions_before($1::regclass, $2)", table, cutoff
        )
    ]
    if not detached:
        return
    schema = _ident(archive_schema)
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    for qualified in detached:
        home, name = await conn.fetchrow(
            "SELECT n.nspname, c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::regclass",
            qualified,
        )
        target, n = name, 1
        # Late rows for a month archived before come back as a second table of that month.
        while await conn.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", f"{schema}.{_ident(target)}"
        ):
            n += 1
            target = f"{name}_{n}"
        if target != name:
            await conn.execute(f"ALTER TABLE {qualified} RENAME TO {_ident(target)}")
            qualified = f"{_ident(home)}.{_ident(target)}"
            await _rename_indexes(conn, qualified, name, target, (home, archive_schema))
        await conn.execute(f"ALTER TABLE {qualified} SET SCHEMA {schema}")
        result.detached.append({"partition": name, "archived_as": f"{archive_schema}.{target}"})


async def _rename_indexes(
    conn: asyncpg.Connection, table: str, old: str, new: str, schemas: tuple[str, str]
) -> None:
    """Index names follow their table's, so they do not clash in the archive schema."""
    indexes = await conn.fetch(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = $1::regclass",
        table,
    )
    for (index,) in indexes:
        wanted = (new + index[len(old) :]) if index.startswith(old) else f"{index}_{new}"
        candidate, k = wanted[:63], 1
        while await conn.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = $1 AND n.nspname = ANY($2::text[])",
            candidate,
            list(schemas),
        ):
            k += 1
            candidate = f"{wanted[: 62 - len(str(k))]}_{k}"
        await conn.execute(
            f"ALTER INDEX {_ident(schemas[0])}.{_ident(index)} RENAME TO {_ident(candidate)}"
        )
