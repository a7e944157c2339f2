"""One embedded PostgreSQL and broker for the whole benchmark run (fsync on, as in production)."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from services.stack.broker import EmbeddedBroker
from services.stack.postgres import EmbeddedPostgres
from services.workers import metrics
from services.workers.runtime import RoleSpec, run_role
from shared.db.migrations import MigrationRunner
from shared.events import Topics
from shared.kafka import ensure_topics
from shared.settings import REPO_ROOT, Settings, load_settings


@asynccontextmanager
async def bench_stack() -> AsyncIterator[tuple[Settings, str]]:
    """(settings with fresh topics, superuser URL) on a migrated embedded stack."""
    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp:
        base = Path(tmp)
        base.chmod(0o755)
        postgres, broker = EmbeddedPostgres(base / "pg"), EmbeddedBroker(base)
        await postgres.start()
        await broker.start()
        try:
            await MigrationRunner(postgres.database_url, REPO_ROOT / "sql").up()
            topics = Topics(f"bench{uuid.uuid4().hex[:6]}.")
            await ensure_topics(broker.bootstrap_servers, topics.all(), partitions=6)
            settings = load_settings(
                database_url=postgres.database_url,
                kafka_bootstrap_servers=broker.bootstrap_servers,
                topic_prefix=topics.prefix,
                kafka_idempotent_producer=False,
                worker_batch_size=10000,
                worker_linger_ms=100,
            )
            yield settings, f"postgresql://postgres@127.0.0.1:{postgres.port}/switchboard"
        finally:
            await broker.stop()
            await postgres.stop()


async def own_topics(settings: Settings, name: str) -> tuple[Settings, Topics]:
    """Settings on topics of their own, so one figure never reads another's records."""
    topics = Topics(f"{name}{uuid.uuid4().hex[:6]}.")
    await ensure_topics(settings.require_kafka(), topics.all(), partitions=6)
    return settings.model_copy(update={"topic_prefix": topics.prefix}), topics


async def timed_role(spec: RoleSpec, settings: Settings, topic: str, count: int) -> float:
    """Seconds one member of ``spec`` takes from the first record it fetched (group join
    excluded) until ``count`` records of ``topic`` are processed and committed."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_role(spec, settings, stop=stop))
    consumed = metrics.CONSUMED.labels(spec.name, topic)
    processed = metrics.PROCESSED.labels(spec.name, topic)
    try:
        while consumed._value.get() == 0:
            if task.done():
                task.result()
            await asyncio.sleep(0.001)
        started = time.perf_counter()
        while processed._value.get() < count:
            if task.done():
                task.result()
            await asyncio.sleep(0.001)
        return time.perf_counter() - started
    finally:
        stop.set()
        await task
