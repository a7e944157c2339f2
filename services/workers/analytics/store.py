"""SQL of the analytics role: idempotent batch upserts and the concurrent rollup refresh.

Every write is safe to repeat and to apply out of order: window counts are set (never
added, never lowered) and first-response times only move earlier (LEAST).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

#: Materialized views refreshed together, in this order.
ROLLUPS: tuple[str, ...] = (
    "analytics_daily_message_counts_mv",
    "analytics_daily_first_response_mv",
)
#: Serializes rollup refreshes across analytics members and the CLI.
REFRESH_LOCK_KEY = 0x5B_A001


@dataclass(frozen=True, slots=True, order=True)
class WindowCount:
    """The processor's current count of one (tenant, channel, direction, window)."""

    tenant_id: uuid.UUID
    channel: str
    direction: str
    window_start: datetime
    window_end: datetime
    count: int


@dataclass(frozen=True, slots=True, order=True)
class FirstResponse:
    """A conversation's earliest inbound and earliest outbound at or after it."""

    tenant_id: uuid.UUID
    integration_id: uuid.UUID
    conversation_key: str
    channel: str
    first_inbound_at: datetime
    first_response_at: datetime | None


@dataclass(frozen=True, slots=True, order=True)
class ResponseCandidate:
    """An outbound time whose inbound only the database may know (state expired or late)."""

    tenant_id: uuid.UUID
    integration_id: uuid.UUID
    conversation_key: str
    at: datetime


# The count is set to the processor's value; it never goes down, so a member still
# flushing a window it lost in a rebalance cannot undo its successor's newer count.
_UPSERT_COUNTS = """
INSERT INTO analytics_message_counts AS m
       (tenant_id, channel, direction, window_start, window_end, count)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[],
                     $5::timestamptz[], $6::bigint[])
ON CONFLICT (tenant_id, channel, direction, window_start) DO UPDATE
   SET count = EXCLUDED.count, window_end = EXCLUDED.window_end
 WHERE m.count < EXCLUDED.count
"""

_MS = "(round(extract(epoch FROM {late} - {early}) * 1000))::bigint"

_UPSERT_FIRST_RESPONSES = f"""
INSERT INTO analytics_first_response AS r
       (tenant_id, integration_id, conversation_key, channel,
        first_inbound_at, first_response_at, response_ms)
SELECT t, i, k, c, fi, fo, {_MS.format(late="fo", early="fi")}
  FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[],
              $6::timestamptz[]) AS u(t, i, k, c, fi, fo)
ON CONFLICT (tenant_id, integration_id, conversation_key) DO UPDATE
   SET first_inbound_at  = LEAST(r.first_inbound_at, EXCLUDED.first_inbound_at),
       first_response_at = LEAST(r.first_response_at, EXCLUDED.first_response_at),
       response_ms = {
    _MS.format(
        late="LEAST(r.first_response_at, EXCLUDED.first_response_at)",
        early="LEAST(r.first_inbound_at, EXCLUDED.first_inbound_at)",
    )
}
 WHERE EXCLUDED.first_inbound_at < r.first_inbound_at
    OR EXCLUDED.first_response_at < r.first_response_at
    OR (r.first_response_at IS NULL AND EXCLUDED.first_response_at IS NOT NULL)
"""

_APPLY_CANDIDATES = f"""
WITH c (tenant_id, integration_id, conversation_key, at) AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[])
), best AS (
    SELECT r.tenant_id, r.integration_id, r.conversation_key, min(c.at) AS at
      FROM analytics_first_response r
      JOIN c USING (tenant_id, integration_id, conversation_key)
     WHERE c.at >= r.first_inbound_at
     GROUP BY 1, 2, 3
)
UPDATE analytics_first_response r
   SET first_response_at = best.at,
       response_ms = {_MS.format(late="best.at", early="r.first_inbound_at")}
  FROM best
 WHERE (r.tenant_id, r.integration_id, r.conversation_key)
       = (best.tenant_id, best.integration_id, best.conversation_key)
   AND (r.first_response_at IS NULL OR best.at < r.first_response_at)
"""


async def upsert_counts(conn: asyncpg.Connection, rows: Sequence[WindowCount]) -> None:
    rows = sorted(rows)  # one lock order for every writer
    await conn.execute(
        _UPSERT_COUNTS,
        [r.tenant_id for r in rows],
        [r.channel for r in rows],
        [r.direction for r in rows],
        [r.window_start for r in rows],
        [r.window_end for r in rows],
        [r.count for r in rows],
    )


async def upsert_first_responses(conn: asyncpg.Connection, rows: Sequence[FirstResponse]) -> None:
    rows = sorted(rows, key=lambda r: (r.tenant_id, r.integration_id, r.conversation_key))
    await conn.execute(
        _UPSERT_FIRST_RESPONSES,
        [r.tenant_id for r in rows],
        [r.integration_id for r in rows],
        [r.conversation_key for r in rows],
        [r.channel for r in rows],
        [r.first_inbound_at for r in rows],
        [r.first_response_at for r in rows],
    )


async def apply_response_candidates(
    conn: asyncpg.Connection, rows: Sequence[ResponseCandidate]
) -> None:
    rows = sorted(rows)
    await conn.execute(
        _APPLY_CANDIDATES,
        [r.tenant_id for r in rows],
        [r.integration_id for r in rows],
        [r.conversation_key for r in rows],
        [r.at for r in rows],
    )


async def refresh_rollups(conn: asyncpg.Connection, *, wait: bool = True) -> list[str]:
    """REFRESH ... CONCURRENTLY every rollup (readers are never blocked); returns their names.

    With ``wait=False`` it returns [] at once when another session is refreshing them.
    """
    async with conn.transaction():
        if wait:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", REFRESH_LOCK_KEY)
        elif not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", REFRESH_LOCK_KEY):
            return []
        for view in ROLLUPS:
            await conn.execute(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {view}")
    return list(ROLLUPS)
