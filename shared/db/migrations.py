"""Numbered SQL migrations with up and down files, applied under an advisory lock.

Files are ``sql/NNNN_name.up.sql`` and ``sql/NNNN_name.down.sql``. Each runs in one
transaction together with its row in ``schema_migrations``; a checksum catches an
applied migration whose file was edited afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from shared.errors import MigrationError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$")
#: Arbitrary but fixed: every migrator of every Switchboard database takes this lock.
ADVISORY_LOCK_KEY = 0x5B_0001

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    """One numbered migration and its two scripts."""

    version: int
    name: str
    up_sql: str
    down_sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.up_sql.encode()).hexdigest()


def discover(sql_dir: Path) -> list[Migration]:
    """Every migration in ``sql_dir``, in order; fails on gaps, duplicates or missing halves."""
    halves: dict[int, dict[str, Path]] = {}
    names: dict[int, str] = {}
    for path in sorted(sql_dir.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"unexpected file in {sql_dir}: {path.name}")
        version, name, direction = int(match[1]), match[2], match[3]
        if names.setdefault(version, name) != name:
            raise MigrationError(f"two migrations numbered {version:04d}")
        halves.setdefault(version, {})[direction] = path
    migrations = []
    for expected, version in enumerate(sorted(halves), start=1):
        if version != expected:
            raise MigrationError(f"migration {expected:04d} is missing (found {version:04d})")
        files = halves[version]
        for direction in ("up", "down"):
            if direction not in files:
                raise MigrationError(f"{version:04d}_{names[version]} has no {direction} file")
        migrations.append(
            Migration(version, names[version], files["up"].read_text(), files["down"].read_text())
        )
    return migrations


class MigrationRunner:
    """Applies and reverts migrations on one database."""

    def __init__(self, dsn: str, sql_dir: Path) -> None:
        self._dsn = dsn
        self._migrations = discover(sql_dir)

    @property
    def latest(self) -> int:
        return self._migrations[-1].version if self._migrations else 0

    async def _connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self._dsn)
        # Serialize concurrent migrators (two processes starting at once).
        await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        await conn.execute(_BOOKKEEPING)
        return conn

    async def applied(self) -> dict[int, str]:
        """Version → checksum of what the database has."""
        conn = await asyncpg.connect(self._dsn)
        try:
            exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not exists:
                return {}
            rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
            return {r["version"]: r["checksum"] for r in rows}
        finally:
            await conn.close()

    async def up(self, target: int | None = None) -> list[int]:
        """Apply every pending migration up to ``target``; returns the versions applied."""
        target = self.latest if target is None else target
        conn = await self._connect()
        try:
            rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
            applied = {r["version"]: r["checksum"] for r in rows}
            self._check(applied)
            done = []
            for m in self._migrations:
                if m.version in applied or m.version > target:
                    continue
                async with conn.transaction():
                    await self._execute(conn, m, m.up_sql, "up")
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        m.version,
                        m.name,
                        m.checksum,
                    )
                log.info("applied migration %04d_%s", m.version, m.name)
                done.append(m.version)
            return done
        finally:
            await conn.close()

    async def down(self, target: int = 0) -> list[int]:
        """Revert applied migrations above ``target``, newest first."""
        conn = await self._connect()
        try:
            applied = {
                r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")
            }
            done = []
            for m in reversed(self._migrations):
                if m.version not in applied or m.version <= target:
                    continue
                async with conn.transaction():
                    await self._execute(conn, m, m.down_sql, "down")
                    await conn.execute(
                        "DELETE FROM schema_migrations WHERE version = $1", m.version
                    )
                log.info("reverted migration %04d_%s", m.version, m.name)
                done.append(m.version)
            return done
        finally:
            await conn.close()

    @staticmethod
    async def _execute(conn: asyncpg.Connection, m: Migration, sql: str, direction: str) -> None:
        try:
            await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            raise MigrationError(
                f"migration {m.version:04d}_{m.name} ({direction}) failed: {exc.sqlstate} {exc}"
            ) from exc

    def _check(self, applied: dict[int, str]) -> None:
        known = {m.version: m for m in self._migrations}
        for version, checksum in sorted(applied.items()):
            m = known.get(version)
            if m is None:
                raise MigrationError(
                    f"database has migration {version:04d}, which this code does not know; "
                    "refusing to run an older release against a newer schema"
                )
            if m.checksum != checksum:
                raise MigrationError(
                    f"migration {version:04d}_{m.name} was edited after it was applied"
                )
