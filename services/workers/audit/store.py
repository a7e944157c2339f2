"""The audit writer's SQL: append a batch of audit events to their hash chains.

One batch is one transaction (the caller's):
1. Drop repeats of an ``event_id`` within the batch (the first one stays).
2. Make sure every chain the batch touches has a head row, then lock the heads
   (``FOR UPDATE``, in key order so two writers cannot deadlock).
3. Under those locks, drop events already in ``audit_logs`` (a replay): they are
   skipped and do not advance their chain.
4. Round-trip the JSON values through ``jsonb`` so the hash covers exactly what the
   database will return to a verifier (see ``chain``).
5. Number and hash the rows in batch order, insert them, and move the heads.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.workers.audit.chain import SYSTEM_CHAIN, chain_key, parse_ip, row_hash
from shared.events import AuditEvent

_EXISTING = """
SELECT a.event_id, a.occurred_at
FROM audit_logs a
JOIN unnest($1::uuid[], $2::timestamptz[]) AS k(event_id, occurred_at)
  ON a.event_id = k.event_id AND a.occurred_at = k.occurred_at
"""

_KNOWN_HEADS = "SELECT tenant_id FROM audit_chain_heads WHERE tenant_id = ANY($1::uuid[])"

# A chain without a head is normally empty; if rows exist anyway (heads restored from
# an older backup), continue after the last of them instead of starting again at 1.
_LAST_TENANT_ROW = (
    "SELECT seq, row_hash FROM audit_logs WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1"
)
_LAST_SYSTEM_ROW = (
    "SELECT seq, row_hash FROM audit_logs WHERE tenant_id IS NULL ORDER BY seq DESC LIMIT 1"
)
_NEW_HEAD = """
INSERT INTO audit_chain_heads (tenant_id, seq, row_hash) VALUES ($1, $2, $3)
ON CONFLICT (tenant_id) DO NOTHING
"""

_LOCK_HEADS = """
SELECT tenant_id, seq, row_hash FROM audit_chain_heads
WHERE tenant_id = ANY($1::uuid[])
ORDER BY tenant_id
FOR UPDATE
"""

_INSERT = """
INSERT INTO audit_logs (
    tenant_id, seq, event_id, occurred_at, actor_type, actor_id, action, resource_type,
    resource_id, ip_address, user_agent, before, after, metadata, prev_hash, row_hash)
SELECT * FROM unnest(
    $1::uuid[], $2::bigint[], $3::uuid[], $4::timestamptz[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::inet[], $11::text[], $12::jsonb[],
    $13::jsonb[], $14::jsonb[], $15::bytea[], $16::bytea[])
"""

_MOVE_HEADS = """
UPDATE audit_chain_heads h SET seq = u.seq, row_hash = u.row_hash
FROM unnest($1::uuid[], $2::bigint[], $3::bytea[]) AS u(tenant_id, seq, row_hash)
WHERE h.tenant_id = u.tenant_id
"""

#: Column order of a row tuple (matches _INSERT).
_COLUMNS = (
    "tenant_id",
    "seq",
    "event_id",
    "occurred_at",
    "actor_type",
    "actor_id",
    "action",
    "resource_type",
    "resource_id",
    "ip_address",
    "user_agent",
    "before",
    "after",
    "metadata",
    "prev_hash",
    "row_hash",
)


@dataclass
class Appended:
    """What one batch did: rows appended per chain kind, and replays skipped."""

    tenant_rows: int = 0
    system_rows: int = 0
    skipped: int = 0


async def _ensure_heads(conn: asyncpg.Connection, keys: Sequence[uuid.UUID]) -> None:
    known = {r["tenant_id"] for r in await conn.fetch(_KNOWN_HEADS, list(keys))}
    for key in keys:
        if key in known:
            continue
        if key == SYSTEM_CHAIN:
            last = await conn.fetchrow(_LAST_SYSTEM_ROW)
        else:
            last = await conn.fetchrow(_LAST_TENANT_ROW, key)
        seq, tip = (last["seq"], last["row_hash"]) if last and last["row_hash"] else (0, None)
        await conn.execute(_NEW_HEAD, key, seq, tip or bytes(32))


def _unique(events: Sequence[AuditEvent]) -> list[AuditEvent]:
    seen: set[uuid.UUID] = set()
    out = []
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            out.append(event)
    return out


async def append(conn: asyncpg.Connection, events: Sequence[AuditEvent]) -> Appended:
    """Append the events that are not stored yet to their chains, in order."""
    result = Appended()
    fresh = _unique(events)
    result.skipped = len(events) - len(fresh)
    if not fresh:
        return result
    keys = sorted({chain_key(e.tenant_id) for e in fresh})
    await _ensure_heads(conn, keys)
    heads: dict[uuid.UUID, tuple[int, bytes]] = {
        r["tenant_id"]: (r["seq"], bytes(r["row_hash"]))
        for r in await conn.fetch(_LOCK_HEADS, keys)
    }
    stored: set[tuple[uuid.UUID, datetime]] = {
        (r["event_id"], r["occurred_at"])
        for r in await conn.fetch(
            _EXISTING, [e.event_id for e in fresh], [e.occurred_at for e in fresh]
        )
    }
    new = [e for e in fresh if (e.event_id, e.occurred_at) not in stored]
    result.skipped += len(fresh) - len(new)
    if not new:
        return result

    stored_json: list[list[Any]] = await conn.fetchval(
        "SELECT $1::jsonb", [[e.before, e.after, e.metadata] for e in new]
    )
    rows: list[tuple[Any, ...]] = []
    for event, (before, after, metadata) in zip(new, stored_json, strict=True):
        key = chain_key(event.tenant_id)
        seq, prev = heads[key]
        values: dict[str, Any] = {
            "tenant_id": event.tenant_id,
            "seq": seq + 1,
            "event_id": event.event_id,
            "occurred_at": event.occurred_at,
            "actor_type": event.actor_type,
            "actor_id": event.actor_id,
            "action": event.action,
            "resource_type": event.resource_type,
            "resource_id": event.resource_id,
            "ip_address": parse_ip(event.ip_address),
            "user_agent": event.user_agent,
            "before": before,
            "after": after,
            "metadata": metadata,
            "prev_hash": prev,
        }
        values["row_hash"] = row_hash(prev, values)
        heads[key] = (seq + 1, values["row_hash"])
        rows.append(tuple(values[c] for c in _COLUMNS))
        if event.tenant_id is None:
            result.system_rows += 1
        else:
            result.tenant_rows += 1

    await conn.execute(_INSERT, *(list(column) for column in zip(*rows, strict=True)))
    moved = sorted({chain_key(e.tenant_id) for e in new})
    await conn.execute(
        _MOVE_HEADS, moved, [heads[k][0] for k in moved], [heads[k][1] for k in moved]
    )
    return result
