"""``egress_deliveries``: what egress did with each outbound message, in PostgreSQL.

One row per (tenant, integration, message id). It makes a redelivered event harmless
(a message already delivered or failed is not sent again) and keeps a conversation's
replies in order (a message may go out only while no earlier one of its conversation,
lower ``seq``, is ``retrying``). A platform call is made with the message's row locked,
so two consumers holding the same message (a redelivery and a retry record) cannot
both send it; the row is updated in the same transaction, right after the call.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from shared.events import MessageOutbound

Status = Literal["pending", "retrying", "delivered", "failed"]
FINAL: frozenset[str] = frozenset({"delivered", "failed"})

_NAMES = (
    "seq",
    "status",
    "attempts",
    "reported",
    "next_attempt_at",
    "platform_message_id",
    "last_error_code",
    "last_error",
)
_COLUMNS = ", ".join(_NAMES)
_D_COLUMNS = ", ".join(f"d.{name}" for name in _NAMES)
# The blocker: the latest next attempt among earlier messages of the conversation that
# wait for a retry (NULL: nothing earlier is waiting). One overdue by more than $5
# seconds has lost its retry record (a broker that came back empty): it stops blocking,
# or its conversation would wait forever.
_BLOCKED_UNTIL = """
    (SELECT max(b.next_attempt_at) FROM egress_deliveries b
      WHERE b.tenant_id = $1 AND b.integration_id = $2 AND b.conversation_key = $4
        AND b.status = 'retrying' AND b.seq < d.seq
        AND b.next_attempt_at > now() - make_interval(secs => $5)) AS blocked_until
"""
_PREPARE = f"""
WITH inserted AS (
    INSERT INTO egress_deliveries (tenant_id, integration_id, message_id, conversation_key)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (tenant_id, integration_id, message_id) DO NOTHING
    RETURNING {_COLUMNS}
), d AS (
    SELECT {_COLUMNS} FROM inserted
    UNION ALL
    SELECT {_COLUMNS} FROM egress_deliveries
     WHERE tenant_id = $1 AND integration_id = $2 AND message_id = $3
)
SELECT d.*, {_BLOCKED_UNTIL} FROM d LIMIT 1
"""
_LOCK = f"""
SELECT {_D_COLUMNS}, {_BLOCKED_UNTIL}
  FROM egress_deliveries d
 WHERE d.tenant_id = $1 AND d.integration_id = $2 AND d.message_id = $3
   FOR UPDATE OF d
"""
_KEY = "tenant_id = $1 AND integration_id = $2 AND message_id = $3"
_UPDATE = f"""
UPDATE egress_deliveries d SET {{assignments}}
 WHERE d.tenant_id = $1 AND d.integration_id = $2 AND d.message_id = $3
RETURNING {_D_COLUMNS}, NULL::timestamptz AS blocked_until
"""


@dataclass(frozen=True)
class Delivery:
    """A message's row: its place in the conversation and what became of it."""

    seq: int
    status: Status
    attempts: int
    reported: bool
    next_attempt_at: datetime | None
    platform_message_id: str | None
    last_error_code: str | None
    last_error: str | None
    blocked_until: datetime | None

    @property
    def final(self) -> bool:
        return self.status in FINAL


def _delivery(row: asyncpg.Record) -> Delivery:
    return Delivery(**dict(row))


def _key(message: MessageOutbound) -> tuple[uuid.UUID, uuid.UUID, str]:
    return message.tenant_id, message.integration_id, message.message_id


class DeliveryStore:
    """Reads and writes ``egress_deliveries`` as the cross-tenant worker role."""

    def __init__(self, pool: asyncpg.Pool, *, stale_blocker_s: float = 900.0) -> None:
        self.pool = pool
        self.stale_blocker_s = stale_blocker_s

    def _args(self, message: MessageOutbound) -> tuple[object, ...]:
        return (*_key(message), message.conversation_key, self.stale_blocker_s)

    async def prepare(self, message: MessageOutbound) -> Delivery:
        """The message's row (created 'pending' on first sight) and what blocks it."""
        for _ in range(2):
            row = await self.pool.fetchrow(_PREPARE, *self._args(message))
            if row is not None:
                return _delivery(row)
            # Inserted concurrently by another transaction after this statement's
            # snapshot was taken: the next statement sees it.
        raise RuntimeError(f"egress_deliveries row of {message.message_id!r} vanished")

    @asynccontextmanager
    async def locked(self, message: MessageOutbound) -> AsyncIterator[Locked]:
        """The message's row locked in a transaction that commits when the block ends."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_LOCK, *self._args(message))
            if row is None:
                raise RuntimeError(f"egress_deliveries row of {message.message_id!r} vanished")
            yield Locked(conn, message, _delivery(row))

    async def mark_reported(self, message: MessageOutbound, row: Delivery) -> None:
        """The events of the outcome ``row`` holds are published (a newer outcome, written
        meanwhile by a retry that was already due, stays unreported)."""
        await self.pool.execute(
            f"UPDATE egress_deliveries SET reported = true WHERE {_KEY} AND NOT reported "
            "AND status = $4 AND attempts = $5",
            *_key(message),
            row.status,
            row.attempts,
        )


class Locked:
    """A locked row; each method records one outcome of the attempt made under the lock."""

    def __init__(self, conn: asyncpg.Connection, message: MessageOutbound, row: Delivery) -> None:
        self.conn = conn
        self.message = message
        self.row = row

    async def _update(self, assignments: str, *values: object) -> Delivery:
        row = await self.conn.fetchrow(
            _UPDATE.format(assignments=assignments), *_key(self.message), *values
        )
        self.row = _delivery(row)
        return self.row

    async def delivered(self, attempts: int, platform_message_id: str) -> Delivery:
        return await self._update(
            "status = 'delivered', attempts = $4, platform_message_id = $5, "
            "next_attempt_at = NULL, last_error_code = NULL, last_error = NULL, reported = false",
            attempts,
            platform_message_id,
        )

    async def failed(self, attempts: int, code: str, error: str) -> Delivery:
        return await self._update(
            "status = 'failed', attempts = $4, next_attempt_at = NULL, "
            "last_error_code = $5, last_error = $6, reported = false",
            attempts,
            code,
            error,
        )

    async def retrying(self, attempts: int, due: datetime, code: str, error: str) -> Delivery:
        return await self._update(
            "status = 'retrying', attempts = $4, next_attempt_at = $5, "
            "last_error_code = $6, last_error = $7, reported = false",
            attempts,
            due,
            code,
            error,
        )

    async def parked(self, due: datetime) -> Delivery:
        """Waiting behind an earlier message: no attempt made, nothing to report."""
        return await self._update("status = 'retrying', next_attempt_at = $4", due)
