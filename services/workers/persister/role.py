"""The ``persister`` role: inbound, outbound and status topics into channel_messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from services.workers.consumer import Handler, Item, PoisonRecords
from services.workers.persister.rows import split
from services.workers.persister.store import (
    STAGING_SQL,
    DirectCopy,
    UnknownIntegrations,
    write_batch,
)
from services.workers.rejects import isolating_rejects
from services.workers.runtime import RoleSpec
from shared.db.pool import create_pool, retriable_on_disconnect
from shared.events import MessageInbound, MessageOutbound, MessageStatus
from shared.kafka import EventPublisher
from shared.settings import Settings


@asynccontextmanager
async def persister_handler(settings: Settings, _: EventPublisher) -> AsyncIterator[Handler]:
    lanes = settings.persister_write_lanes
    direct = DirectCopy(enabled=settings.persister_direct_copy)
    pool = await create_pool(
        settings.require_database_url(),
        min_size=1,
        max_size=max(2, lanes),
        session_sql=STAGING_SQL,
    )

    async def write(items: Sequence[Item]) -> None:
        """The batch in up to ``lanes`` concurrent transactions, split by Kafka partition.

        A conversation lives on one partition, so lanes never touch the same
        conversation rows; a lane that fails leaves the batch uncommitted in Kafka,
        and its replay is idempotent for the lanes that did commit.
        """
        groups = by_partition(items, lanes)
        if len(groups) <= 1:
            await write_lane(items)
            return
        results = await asyncio.gather(*(write_lane(g) for g in groups), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        others = [e for e in errors if not isinstance(e, PoisonRecords)]
        if others:
            raise others[0]
        poison = [e for e in errors if isinstance(e, PoisonRecords)]
        if poison:
            reasons = "; ".join(sorted({p.reason for p in poison}))
            raise PoisonRecords([i for p in poison for i in p.items], reasons)

    async def write_lane(items: Sequence[Item]) -> None:
        messages, statuses, foreign = split(items)
        if foreign:
            raise PoisonRecords(foreign, "event type not stored by the persister")
        async with retriable_on_disconnect(pool):
            try:
                async with pool.acquire() as conn, conn.transaction():
                    await write_batch(conn, messages, statuses, direct=direct)
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


def by_partition(items: Sequence[Item], lanes: int) -> list[list[Item]]:
    """Items in at most ``lanes`` groups of whole partition numbers, balanced by size,
    each keeping the batch's order.

    Grouped by partition number across topics: a conversation's messages and statuses
    share a key, hence a partition number on every topic, hence a lane.
    """
    sizes: dict[int, int] = {}
    for item in items:
        sizes[item.record.partition] = sizes.get(item.record.partition, 0) + 1
    loads = [0] * max(1, min(lanes, len(sizes)))
    lane_of: dict[int, int] = {}
    for partition, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
        lane = loads.index(min(loads))
        lane_of[partition] = lane
        loads[lane] += size
    groups: list[list[Item]] = [[] for _ in loads]
    for item in items:
        groups[lane_of[item.record.partition]].append(item)
    return [g for g in groups if g]


PERSISTER = RoleSpec(
    name="persister",
    topics=lambda t: (t.inbound, t.outbound, t.status),
    handler=persister_handler,
)
