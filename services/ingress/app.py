"""Composition root of the ingress: builds the producer and pool and mounts the routes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from shared.db.pool import create_pool
from shared.events import Topics
from shared.kafka import EventPublisher, create_producer
from shared.ops import add_ops_routes, add_readiness
from shared.settings import Settings

PUBLISHER: web.AppKey[EventPublisher] = web.AppKey("publisher", EventPublisher)


def create_app(settings: Settings) -> web.Application:
    """The ingress application; real adapters are wired here and nowhere else."""
    app = web.Application(client_max_size=1024 * 1024)
    add_ops_routes(app)

    async def kafka(app: web.Application) -> AsyncIterator[None]:
        producer = create_producer(settings)
        await producer.start()
        app[PUBLISHER] = EventPublisher(producer, Topics(settings.topic_prefix))

        async def broker_ready() -> None:
            await producer.client.fetch_all_metadata()

        add_readiness(app, "kafka", broker_ready)
        yield
        await producer.stop()

    async def database(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(
            settings.require_database_url(),
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
        )

        async def db_ready() -> None:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")

        add_readiness(app, "database", db_ready)
        yield
        await pool.close()

    app.cleanup_ctx.extend([database, kafka])
    return app


def run(settings: Settings, *, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; aiohttp drains in-flight requests on shutdown."""
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        print=None,
        shutdown_timeout=settings.shutdown_timeout_s - 5,
        handle_signals=True,
    )
