"""Running the analytics role: faust app, write-behind flusher, rollup refresh, ops HTTP.

Unlike the ConsumerLoop roles, faust runs its own consumer group
(``switchboard-analytics``), so this module provides the ``run_members`` that
``switchboard worker analytics`` and ``switchboard up`` call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient

from services.workers.analytics import metrics
from services.workers.analytics.app import ROLE, AnalyticsApp, create_app
from services.workers.analytics.flusher import Flusher
from services.workers.analytics.store import refresh_rollups
from services.workers.runtime import run_instances
from shared.db.pool import connect, create_pool, retriable_on_disconnect
from shared.errors import ConfigurationError, RetriableError
from shared.events import Topics
from shared.kafka import ensure_topics
from shared.ops import add_ops_routes, add_readiness
from shared.settings import Settings

log = logging.getLogger(__name__)


async def run(settings: Settings, *, stop: asyncio.Event) -> None:
    """One member of the analytics group until ``stop`` is set; drains and flushes on exit."""
    source_partitions = await _prepare_topics(settings)
    async with contextlib.AsyncExitStack() as stack:  # unwinds in reverse order
        pool = await create_pool(settings.require_database_url(), min_size=1, max_size=3)
        stack.push_async_callback(pool.close)
        datadir = stack.enter_context(tempfile.TemporaryDirectory(prefix="switchboard-analytics-"))
        flusher = Flusher(pool, max_pending=settings.analytics_flush_max_rows)
        stack.push_async_callback(_final_flush, flusher, settings.shutdown_timeout_s)
        app = create_app(
            settings, flusher, source_partitions=source_partitions, datadir=Path(datadir)
        )
        stack.push_async_callback(app.stop)  # agents stop; offsets and changelogs committed
        await _until(stop, app.start())
        if stop.is_set():
            return
        background = [asyncio.create_task(flusher.run(settings.analytics_flush_interval_s))]
        if settings.analytics_rollup_refresh_s > 0:
            background.append(
                asyncio.create_task(_refresh_forever(pool, settings.analytics_rollup_refresh_s))
            )
        stack.push_async_callback(_cancel, background)
        await stack.enter_async_context(_ops_server(settings, app, flusher))
        crashed = asyncio.create_task(app.wait_until_stopped())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            {crashed, stopper, *background}, return_when=asyncio.FIRST_COMPLETED
        )
        await _cancel([crashed, stopper])
        for task in done & set(background):
            task.result()  # a non-retriable failure ends the member, loudly
        if app.crashed:
            raise RuntimeError(f"analytics stream processor crashed: {app.crash_reason!r}")


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _final_flush(flusher: Flusher, timeout_s: float) -> None:
    """Write what is still buffered; if the database is away, the next start writes it
    (from the changelog), so giving up after ``timeout_s`` loses nothing."""
    try:
        await asyncio.wait_for(flusher.flush_until_done(), timeout_s)
    except (TimeoutError, RetriableError):
        log.warning("analytics: %d rows left for the next start to write", flusher.pending)


async def _until(stop: asyncio.Event, start: Awaitable[None]) -> None:
    """Await ``start`` unless ``stop`` is set first (a broker that is down never lets it end)."""
    starting = asyncio.ensure_future(start)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
    else:
        starting.result()


async def _prepare_topics(settings: Settings) -> int:
    """Create the source topics if missing; their partition count (faust's internal topics
    are created by faust itself through the admin API, which the embedded broker supports)."""
    topics = Topics(settings.topic_prefix)
    bootstrap = settings.require_kafka()
    await ensure_topics(
        bootstrap,
        (topics.inbound, topics.outbound, topics.dlq),
        partitions=settings.topic_partitions,
        replication_factor=settings.topic_replication_factor,
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        described = await admin.describe_topics([topics.inbound, topics.outbound])
    finally:
        await admin.close()
    counts = {d["topic"]: len(d["partitions"]) for d in described}
    if len(set(counts.values())) != 1:
        raise ConfigurationError(
            f"{topics.inbound} and {topics.outbound} must have the same number of partitions "
            f"for per-conversation analytics, found {counts}"
        )
    return counts[topics.inbound]


async def _refresh_forever(pool: asyncpg.Pool, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            async with retriable_on_disconnect(pool), pool.acquire() as conn:
                started = time.perf_counter()
                if await refresh_rollups(conn, wait=False):
                    metrics.ROLLUP_REFRESH_SECONDS.observe(time.perf_counter() - started)
        except RetriableError as exc:
            log.warning("rollup refresh skipped: %s", exc)


async def refresh_once(settings: Settings) -> dict[str, object]:
    """What ``switchboard analytics refresh`` runs: every rollup, waiting for a running one."""
    conn = await connect(settings.require_database_url())
    try:
        started = time.perf_counter()
        refreshed = await refresh_rollups(conn, wait=True)
        seconds = time.perf_counter() - started
        metrics.ROLLUP_REFRESH_SECONDS.observe(seconds)
        return {"refreshed": refreshed, "seconds": round(seconds, 3)}
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _ops_server(
    settings: Settings, app: AnalyticsApp, flusher: Flusher
) -> AsyncIterator[None]:
    if settings.worker_http_port is None:
        yield
        return
    web_app = web.Application()
    add_ops_routes(web_app)

    async def processing() -> None:
        if app.should_stop or app.rebalancing:
            raise RuntimeError("not processing")

    async def writing() -> None:
        if not flusher.healthy:
            raise RetriableError("database writes failing")

    add_readiness(web_app, "kafka", processing)
    add_readiness(web_app, "database", writing)
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.worker_http_port)
    await site.start()
    log.info("ops endpoints on %s", site.name)
    try:
        yield
    finally:
        await runner.cleanup()


def run_members(settings: Settings, *, instances: int = 1) -> int:
    """Blocking: ``instances`` analytics group members in this process until SIGTERM/SIGINT."""

    for noisy in ("faust", "mode"):  # their INFO is a table per rebalance
        logger = logging.getLogger(noisy)
        logger.setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))

    return run_instances(lambda s, stop: run(s, stop=stop), settings, instances=instances)


@dataclass(frozen=True)
class StandaloneRole:
    """A role that runs its own consumer group (not a ConsumerLoop RoleSpec)."""

    name: str
    run_members: Callable[..., int]

    def group_id(self, settings: Settings) -> str:
        return f"{settings.consumer_group_prefix}{self.name}"


ANALYTICS = StandaloneRole(ROLE, run_members)
