"""The ``audit`` role: audit events into the append-only, hash-chained ``audit_logs``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import orjson
from prometheus_client import Counter

from services.workers.audit.chain import parse_ip
from services.workers.audit.store import append
from services.workers.consumer import Handler, Item, PoisonRecords, Turn
from services.workers.rejects import isolating_rejects
from services.workers.runtime import RoleSpec
from shared.db.pool import create_pool, retriable_on_disconnect
from shared.events import AuditEvent, Envelope
from shared.kafka import EventPublisher
from shared.settings import Settings

APPENDED = Counter(
    "switchboard_audit_rows_appended_total",
    "Rows appended to audit hash chains, by chain kind (tenant or system).",
    ["chain"],
)
SKIPPED = Counter(
    "switchboard_audit_events_skipped_total",
    "Audit events not appended because they were already stored (replays, duplicates).",
)


def unstorable(event: Envelope) -> str | None:
    """Why an event can never be appended to a chain, or None when it can."""
    if not isinstance(event, AuditEvent):
        return "event type not stored by the audit role"
    try:
        parse_ip(event.ip_address)
    except ValueError:
        return "ip_address is not a single IPv4 or IPv6 address"
    try:
        orjson.dumps([event.before, event.after, event.metadata])
    except orjson.JSONEncodeError:
        return "before/after/metadata cannot be encoded as JSON"
    return None


@asynccontextmanager
async def audit_handler(settings: Settings, _: EventPublisher) -> AsyncIterator[Handler]:
    pool = await create_pool(settings.require_database_url(), min_size=1, max_size=2)

    async def handle(items: Sequence[Item], turn: Turn) -> None:
        reasons = {id(i): unstorable(i.event) for i in items}
        for reason in dict.fromkeys(r for r in reasons.values() if r):
            raise PoisonRecords([i for i in items if reasons[id(i)] == reason], reason)
        # A refused row is found by halving; order is kept, so each chain still grows
        # in partition order.
        await store(items, turn)

    async def write(items: Sequence[Item], turn: Turn) -> None:
        await turn  # each chain grows from the rows earlier batches appended
        events = [i.event for i in items if isinstance(i.event, AuditEvent)]
        async with retriable_on_disconnect(pool), pool.acquire() as conn, conn.transaction():
            done = await append(conn, events)  # a deadlock is retried like a lost database
        APPENDED.labels("tenant").inc(done.tenant_rows)
        APPENDED.labels("system").inc(done.system_rows)
        SKIPPED.inc(done.skipped)

    store = isolating_rejects(write)
    try:
        yield handle
    finally:
        await pool.close()


AUDIT = RoleSpec(name="audit", topics=lambda t: (t.audit,), handler=audit_handler)
