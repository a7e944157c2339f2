"""The ``recovery-persister`` role: recovery events into the partitioned ``recovery_events``.

Same guarantees as the message persister: one transaction per batch (COPY into a
staging table, then one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` on the
``(tenant_id, event_id, occurred_at)`` key, so a replay changes nothing); events of
a campaign that does not exist for their tenant, or rows the database refuses, are
poison and go to the dead-letter topic while the rest of the batch is stored.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from services.workers.consumer import Handler, Item, PoisonRecords, Turn
from services.workers.rejects import isolating_rejects
from services.workers.runtime import RoleSpec
from shared.db.pool import create_pool, retriable_on_disconnect
from shared.events import RecoveryEvent
from shared.kafka import EventPublisher
from shared.settings import Settings

COLUMNS = (
    "tenant_id",
    "campaign_id",
    "recovery_message_id",
    "customer_ref",
    "event_type",
    "amount_cents",
    "currency",
    "payload",
    "event_id",
    "occurred_at",
)

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_recovery_events (
    tenant_id uuid, campaign_id uuid, recovery_message_id uuid, customer_ref text,
    event_type text, amount_cents bigint, currency text, payload jsonb, event_id uuid,
    occurred_at timestamptz
) ON COMMIT DELETE ROWS
"""

# recovery_events has no foreign key to its campaign (a partitioned table would need
# one per partition), so the persister checks it: the campaign must be the tenant's.
_UNKNOWN_CAMPAIGNS = """
SELECT DISTINCT s.tenant_id, s.campaign_id
FROM stage_recovery_events s
WHERE NOT EXISTS (SELECT 1 FROM recovery_campaigns c
                  WHERE c.id = s.campaign_id AND c.tenant_id = s.tenant_id)
"""

_INSERT = f"""
INSERT INTO recovery_events ({", ".join(COLUMNS)})
SELECT {", ".join(COLUMNS)} FROM stage_recovery_events
ON CONFLICT (tenant_id, event_id, occurred_at) DO NOTHING
"""


class UnknownCampaigns(Exception):
    """Rows name campaigns that do not exist for their tenant; the caller dead-letters them."""

    def __init__(self, pairs: set[tuple[uuid.UUID, uuid.UUID]]) -> None:
        super().__init__(f"{len(pairs)} unknown campaign(s)")
        self.pairs = pairs


def recovery_row(event: RecoveryEvent) -> tuple[Any, ...]:
    """One ``recovery_events`` row, in COLUMNS order."""
    return (
        event.tenant_id,
        event.campaign_id,
        event.recovery_message_id,
        event.customer_ref,
        event.event_type,
        event.amount_cents,
        event.currency,
        event.payload,
        event.event_id,
        event.occurred_at,
    )


async def write_recovery_batch(
    conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]], turn: Awaitable[None]
) -> int:
    """Store one batch (the caller owns the transaction); returns the rows really inserted.

    Staging and checks run before ``turn``; the insert, in it.
    """
    await conn.execute(_STAGING)
    await conn.copy_records_to_table("stage_recovery_events", records=rows, columns=COLUMNS)
    unknown = await conn.fetch(_UNKNOWN_CAMPAIGNS)
    if unknown:
        raise UnknownCampaigns({(r["tenant_id"], r["campaign_id"]) for r in unknown})
    await turn
    status = await conn.execute(_INSERT)
    return int(status.rsplit(" ", 1)[-1])


@asynccontextmanager
async def recovery_handler(settings: Settings, _: EventPublisher) -> AsyncIterator[Handler]:
    pool = await create_pool(settings.require_database_url(), min_size=1, max_size=2)

    async def write(items: Sequence[Item], turn: Turn) -> None:
        foreign = [i for i in items if not isinstance(i.event, RecoveryEvent)]
        if foreign:
            raise PoisonRecords(foreign, "event type not stored by the recovery persister")
        rows = [recovery_row(i.event) for i in items]  # type: ignore[arg-type]
        async with retriable_on_disconnect(pool):
            try:
                async with pool.acquire() as conn, conn.transaction():
                    await write_recovery_batch(conn, rows, turn)
            except UnknownCampaigns as exc:
                bad = [
                    i
                    for i in items
                    if (i.event.tenant_id, i.event.campaign_id) in exc.pairs  # type: ignore[attr-defined]
                ]
                raise PoisonRecords(bad, "unknown campaign (tenant/campaign pair)") from None

    try:
        yield isolating_rejects(write)
    finally:
        await pool.close()


RECOVERY_PERSISTER = RoleSpec(
    name="recovery-persister",
    topics=lambda t: (t.recovery,),
    handler=recovery_handler,
)
