"""``switchboard up``: the whole gateway on one machine, in the foreground.

Starts embedded PostgreSQL and the Tansu broker (unless DATABASE_URL /
KAFKA_BOOTSTRAP_SERVERS point elsewhere), migrates, creates topics, runs the
ingress and every worker role as child processes, writes ``DIR/stack.json``, and
on SIGTERM/Ctrl-C stops everything in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from pydantic import SecretStr

from services.demo import seed_demo
from services.stack.broker import EmbeddedBroker
from services.stack.postgres import EmbeddedPostgres
from services.stack.processes import Child, wait_for
from services.workers import ROLES
from shared.crypto import ensure_key_file
from shared.db.migrations import MigrationRunner
from shared.errors import StackError
from shared.events import Topics
from shared.kafka import ensure_topics
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class _Service:
    """A supervised Switchboard process: restarted with backoff if it dies."""

    child: Child
    restarts: int = 0
    backoff_until: float = 0.0


@dataclass
class Stack:
    """Everything ``up`` started, so it can be stopped in reverse order."""

    settings: Settings
    data_dir: Path
    http_port: int
    instances: dict[str, int] = field(default_factory=dict)
    postgres: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None
    services: list[_Service] = field(default_factory=list)
    database_url: str = ""
    kafka_bootstrap: str = ""
    maintenance: asyncio.Task[None] | None = None
    demo_url: str | None = None
    next_maintenance: float = 0.0

    @property
    def http_url(self) -> str:
        return f"http://{self.settings.http_host}:{self.http_port}"

    @property
    def stack_file(self) -> Path:
        return self.data_dir / "stack.json"

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.stack_file.unlink(missing_ok=True)
        if self.settings.database_url:
            self.database_url = self.settings.database_url
        else:
            self.postgres = EmbeddedPostgres(self.data_dir)
            await self.postgres.start()
            self.database_url = self.postgres.database_url
        if self.settings.kafka_bootstrap_servers:
            self.kafka_bootstrap = self.settings.kafka_bootstrap_servers
        else:
            self.broker = EmbeddedBroker(self.data_dir)
            await self.broker.start()
            self.kafka_bootstrap = self.broker.bootstrap_servers

        applied = await MigrationRunner(self.database_url, self.settings.sql_dir).up()
        log.info("migrations applied: %s", applied or "none pending")
        await self._maintain_partitions()
        await ensure_topics(
            self.kafka_bootstrap,
            Topics(self.settings.topic_prefix).all(),
            partitions=self.settings.topic_partitions,
            replication_factor=self.settings.topic_replication_factor,
        )
        await self._start_services()
        if self.postgres is not None and self.settings.seed_demo:
            self.demo_url = await seed_demo(self._child_settings(), http_url=self.http_url)
        self._write_stack_file()

    async def _maintain_partitions(self) -> None:
        """Partition maintenance as the migrator login; a failure waits for the next interval."""
        from shared.db.partitions import maintain_with

        interval = self.settings.partition_maintenance_interval_s
        try:
            await maintain_with(self.settings, self.database_url)
        except Exception:  # the stack runs on without it; the next run retries
            log.exception("partition maintenance failed; retrying in %.0fs", interval)
        self.next_maintenance = time.monotonic() + interval

    def _child_settings(self) -> Settings:
        """These settings as the children see them (URLs, key, producer mode)."""
        env = self._child_env()
        return self.settings.model_copy(
            update={
                "database_url": self.database_url,
                "kafka_bootstrap_servers": self.kafka_bootstrap,
                "kafka_idempotent_producer": self.broker is None,
                "secret_key": self.settings.secret_key or SecretStr(env["SWITCHBOARD_SECRET_KEY"]),
                "admin_token": self.settings.admin_token
                or SecretStr(env["SWITCHBOARD_ADMIN_TOKEN"]),
            }
        )

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.settings.secret_key is None:  # generated once, kept in the data dir (0600)
            env["SWITCHBOARD_SECRET_KEY"] = ensure_key_file(self.data_dir / "secret.key")
        if self.settings.admin_token is None:  # the operator HTTP API's bearer token (0600)
            env["SWITCHBOARD_ADMIN_TOKEN"] = ensure_key_file(self.data_dir / "admin.token")
        env["DATABASE_URL"] = self.database_url
        env["KAFKA_BOOTSTRAP_SERVERS"] = self.kafka_bootstrap
        if self.broker is not None:  # Tansu has no InitProducerId
            env["SWITCHBOARD_KAFKA_IDEMPOTENT_PRODUCER"] = "false"
        return env

    async def _start_services(self) -> None:
        env = self._child_env()
        cli = [sys.executable, "-m", "services.cli"]
        logs, run = self.data_dir / "logs", self.data_dir / "run"
        ingress = Child(
            name="ingress",
            argv=[
                *cli,
                "ingress",
                "--host",
                self.settings.http_host,
                "--port",
                str(self.http_port),
            ],
            run_dir=run,
            log_file=logs / "ingress.log",
            env=env,
        )
        self.services.append(_Service(ingress))
        for role in ROLES:
            for n in range(self.instances.get(role, 1)):
                name = f"worker-{role}-{n}"
                child = Child(
                    name=name,
                    argv=[*cli, "worker", role],
                    run_dir=run,
                    log_file=logs / f"{name}.log",
                    env=env,
                )
                self.services.append(_Service(child))
        for service in self.services:
            await service.child.start()
        await wait_for(self._ingress_ready, child=ingress, timeout=60, what="ingress")

    async def _ingress_ready(self) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.http_url}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as resp,
        ):
            if resp.status != 200:
                raise StackError(f"/readyz answered {resp.status}")

    def _write_stack_file(self) -> None:
        info = {
            "database_url": self.database_url,
            "kafka_bootstrap": self.kafka_bootstrap,
            "http_url": self.http_url,
            "metrics_url": f"{self.http_url}/metrics",
            "data_dir": str(self.data_dir),
            "topic_prefix": self.settings.topic_prefix,
            "embedded": {"postgres": self.postgres is not None, "broker": self.broker is not None},
            "pids": {
                "up": os.getpid(),
                **({"postgres": self.postgres.pid} if self.postgres else {}),
                **({"broker": self.broker.pid} if self.broker else {}),
                **{s.child.name: s.child.pid for s in self.services},
            },
            "started_at": time.time(),
            "demo_url": self.demo_url,
        }
        tmp = self.stack_file.with_suffix(".json.tmp")
        tmp.write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
        tmp.replace(self.stack_file)

    async def supervise(self, stop: asyncio.Event) -> int:
        """Restart crashed services with backoff; an embedded dependency dying ends the run."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            for infra in (self.postgres, self.broker):
                child = getattr(infra, "_child", None)
                if child is not None and not child.running():
                    log.error(
                        "%s exited unexpectedly; stopping the stack\n%s",
                        child.name,
                        child.tail_log(),
                    )
                    return 1
            now = time.monotonic()
            if now >= self.next_maintenance and (
                self.maintenance is None or self.maintenance.done()
            ):
                self.maintenance = asyncio.create_task(self._maintain_partitions())
            for service in self.services:
                if service.child.running() or now < service.backoff_until:
                    continue
                if service.backoff_until:  # backoff elapsed: restart
                    service.backoff_until = 0.0
                    await service.child.start()
                    self._write_stack_file()
                    continue
                delay = min(30.0, 2.0**service.restarts)
                service.restarts += 1
                log.error(
                    "%s exited (code %s); restarting in %.0fs\n%s",
                    service.child.name,
                    service.child.process.returncode if service.child.process else None,
                    delay,
                    service.child.tail_log(10),
                )
                service.backoff_until = now + delay
        return 0

    async def stop(self) -> None:
        """Services first (they drain), then the broker, then PostgreSQL."""
        if self.maintenance is not None and not self.maintenance.done():
            self.maintenance.cancel()  # its transaction rolls back: nothing half-done
            with contextlib.suppress(asyncio.CancelledError):
                await self.maintenance
        await asyncio.gather(
            *(s.child.stop(timeout=6) for s in reversed(self.services)), return_exceptions=True
        )
        if self.broker:
            await self.broker.stop()
        if self.postgres:
            await self.postgres.stop()
        self.stack_file.unlink(missing_ok=True)


def _lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock for this run; the kernel releases it if we crash."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "up.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode().strip() or "unknown"
        os.close(fd)
        raise StackError(
            f"another `switchboard up` (pid {holder}) is running on {data_dir}"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


async def run_up(
    settings: Settings, *, data_dir: Path, port: int, instances: dict[str, int] | None = None
) -> int:
    """Run the stack until SIGTERM/SIGINT; returns the process exit code."""
    data_dir = data_dir.resolve()
    lock_fd = _lock_data_dir(data_dir)
    stack = Stack(settings, data_dir, port, instances or {})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        start = asyncio.create_task(stack.start())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await start
        else:
            stopper.cancel()
            start.result()
            _announce(stack)
            code = await stack.supervise(stop)
    except StackError as exc:
        log.error("%s", exc)
        code = 1
    finally:
        log.info("stopping the stack")
        await stack.stop()
        os.close(lock_fd)
        log.info("stopped")
    return code


def _announce(stack: Stack) -> None:
    lines = [
        "Switchboard is up.",
        f"  HTTP (webhooks, widget): {stack.http_url}",
        f"  metrics:                 {stack.http_url}/metrics",
        f"  PostgreSQL:              {stack.database_url}"
        + (" (embedded)" if stack.postgres else ""),
        f"  Kafka bootstrap:         {stack.kafka_bootstrap}"
        + (" (embedded Tansu)" if stack.broker else ""),
        f"  stack file:              {stack.stack_file}",
        *([f"  demo chat (open it!):    {stack.demo_url}"] if stack.demo_url else []),
        f"  logs:                    {stack.data_dir / 'logs'}",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)
