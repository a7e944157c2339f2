"""Composition root of the ingress: builds the pool, producer and cache, mounts the routes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.conversations import ConversationAdmin
from services.ingress.operator_api import CONVERSATIONS, mount_operator_api
from services.ingress.pipeline import Ingress
from services.ingress.registry import IntegrationCache
from services.ingress.webhooks import INGRESS, POOL
from services.ingress.widget_replies import widget_replies
from shared.crypto import CredentialCipher
from shared.db.pool import create_pool
from shared.events import Topics
from shared.integrations import IntegrationStore
from shared.kafka import EventPublisher, create_producer
from shared.ops import add_ops_routes, add_readiness
from shared.settings import Settings


def create_app(settings: Settings) -> web.Application:
    """The ingress application; real adapters are wired here and nowhere else."""
    from services.ingress.adapters import mount_channels

    cipher = CredentialCipher(settings.require_secret_key())
    app = web.Application(client_max_size=settings.max_body_bytes)
    add_ops_routes(app)

    topics = Topics(settings.topic_prefix)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(
            settings.require_database_url(),
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
        )
        # Batches the broker never took expire when the HTTP answer gives up, so a 503'd
        # request is not delivered later behind the platform's retry.
        producer = create_producer(
            settings, request_timeout_ms=int(settings.publish_timeout_s * 1000)
        )
        try:
            await producer.start()
        except BaseException:
            await pool.close()
            raise
        ingress = Ingress(
            cache=IntegrationCache(
                IntegrationStore(pool, cipher), ttl_s=settings.integration_cache_ttl_s
            ),
            publisher=EventPublisher(producer, topics),
            publish_timeout_s=settings.publish_timeout_s,
            max_body_bytes=settings.max_body_bytes,
        )
        app[INGRESS] = ingress
        app[POOL] = pool
        app[CONVERSATIONS] = ConversationAdmin(pool, ingress.publisher, actor_id="http:operator")

        async def db_ready() -> None:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")

        async def broker_ready() -> None:
            await producer.client.fetch_all_metadata()

        add_readiness(app, "database", db_ready)
        add_readiness(app, "kafka", broker_ready)
        async with widget_replies(app, settings, ingress.publisher, topics.widget_replies):
            yield
        await ingress.drain()
        await producer.stop()
        await pool.close()

    app.cleanup_ctx.append(resources)
    mount_channels(app, settings)
    mount_operator_api(app, settings)
    return app


def run(settings: Settings, *, host: str, port: int, reuse_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT; aiohttp drains in-flight requests on shutdown."""
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        print=None,
        reuse_port=reuse_port,
        shutdown_timeout=max(1.0, settings.shutdown_timeout_s - 5),
        handle_signals=True,
    )
