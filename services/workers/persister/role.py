"""The ``persister`` role: inbound, outbound and status topics into channel_messages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from services.workers.consumer import Handler, Item, PoisonRecords, Turn
from services.workers.persister.rows import split
from services.workers.persister.store import STAGING_SQL, UnknownIntegrations, write_batch
from services.workers.rejects import isolating_rejects
from services.workers.runtime import RoleSpec
from shared.db.pool import create_pool, retriable_on_disconnect
from shared.events import MessageInbound, MessageOutbound, MessageStatus
from shared.kafka import EventPublisher
from shared.settings import Settings


@asynccontextmanager
async def persister_handler(settings: Settings, _: EventPublisher) -> AsyncIterator[Handler]:
    pool = await create_pool(
        settings.require_database_url(), min_size=1, max_size=2, session_sql=STAGING_SQL
    )

    async def write(items: Sequence[Item], turn: Turn) -> None:
        messages, statuses, foreign = split(items)
        if foreign:
            raise PoisonRecords(foreign, "event type not stored by the persister")
        async with retriable_on_disconnect(pool):
            try:
                async with pool.acquire() as conn, conn.transaction():
                    await write_batch(conn, messages, statuses, turn)
            except UnknownIntegrations as exc:
                bad = [
                    i
                    for i in items
                    if isinstance(i.event, MessageInbound | MessageOutbound | MessageStatus)
                    and (i.event.tenant_id, i.event.integration_id) in exc.pairs
                ]
                raise PoisonRecords(bad, "unknown integration (tenant/integration pair)") from None

    try:
        yield isolating_rejects(write)
    finally:
        await pool.close()


PERSISTER = RoleSpec(
    name="persister",
    topics=lambda t: (t.inbound, t.outbound, t.status),
    handler=persister_handler,
)
