"""``switchboard audit verify``: walk the audit hash chains and report the first break.

Reads as ``switchboard_worker`` (every tenant's rows and the system's) in one
read-only REPEATABLE READ transaction, so rows appended meanwhile cannot look like a
break. Rows are streamed through a cursor in (tenant_id, seq) order, the order of the
chain index. For each row, in this order of checks:

* ``missing row``: its seq skips one (a row was removed); reported at the missing seq.
* ``duplicate seq``: its seq repeats or goes backwards.
* ``missing hash``: prev_hash or row_hash is NULL.
* ``broken link``: prev_hash is not the previous row's row_hash.
* ``content hash mismatch``: row_hash is not sha256(prev_hash || canonical content).

After a chain's last row, its head in ``audit_chain_heads`` must name the same seq
and hash: fewer rows is a ``missing row`` (rows removed from the end), anything else
a ``head mismatch``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.workers.audit.chain import GENESIS, SYSTEM_CHAIN, chain_key, row_hash
from shared.db.pool import connect

_ROWS = """
SELECT tenant_id, seq, event_id, occurred_at, actor_type, actor_id, action, resource_type,
       resource_id, ip_address, user_agent, before, after, metadata, prev_hash, row_hash
FROM audit_logs {where}
ORDER BY tenant_id, seq
"""
_HEADS = "SELECT tenant_id, seq, row_hash FROM audit_chain_heads {where}"


@dataclass(frozen=True)
class Break:
    """The first place a chain does not hold."""

    tenant_id: uuid.UUID | None
    seq: int
    event_id: uuid.UUID | None
    problem: str
    detail: str


@dataclass(frozen=True)
class Report:
    """The outcome of a walk: chains and rows checked, and the first break if any."""

    chains: int
    rows: int
    broken: Break | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None

    def as_json(self) -> dict[str, Any]:
        if self.broken is None:
            return {"ok": True, "chains": self.chains, "rows": self.rows}
        b = self.broken
        return {
            "ok": False,
            "tenant_id": str(b.tenant_id) if b.tenant_id else None,
            "seq": b.seq,
            "event_id": str(b.event_id) if b.event_id else None,
            "problem": b.problem,
            "detail": b.detail,
        }


class _Chain:
    """Where the walk is in one chain."""

    def __init__(self, key: uuid.UUID) -> None:
        self.key = key
        self.seq = 0
        self.tip = GENESIS

    @property
    def tenant_id(self) -> uuid.UUID | None:
        return None if self.key == SYSTEM_CHAIN else self.key

    def step(self, row: asyncpg.Record) -> Break | None:
        seq, event_id = row["seq"], row["event_id"]

        def broken(problem: str, detail: str, at: int = seq, eid: Any = event_id) -> Break:
            return Break(self.tenant_id, at, eid, problem, detail)

        if seq > self.seq + 1:
            return broken(
                "missing row",
                f"expected seq {self.seq + 1}, next row has seq {seq}",
                self.seq + 1,
                None,
            )
        if seq <= self.seq:
            return broken("duplicate seq", f"seq {seq} follows seq {self.seq}")
        if row["prev_hash"] is None or row["row_hash"] is None:
            return broken("missing hash", "prev_hash or row_hash is NULL")
        prev = bytes(row["prev_hash"])
        if prev != self.tip:
            return broken("broken link", "prev_hash is not the previous row's row_hash")
        stored = bytes(row["row_hash"])
        if row_hash(prev, row) != stored:
            return broken("content hash mismatch", "row_hash does not match the row's content")
        self.seq, self.tip = seq, stored
        return None

    def end(self, head: tuple[int, bytes] | None) -> Break | None:
        if head is None:
            if self.seq == 0:
                return None
            return Break(self.tenant_id, self.seq, None, "head mismatch", "chain has no head")
        head_seq, head_hash = head
        if self.seq < head_seq:
            return Break(
                self.tenant_id,
                self.seq + 1,
                None,
                "missing row",
                f"chain ends at seq {self.seq}, its head is at seq {head_seq}",
            )
        if self.seq > head_seq or self.tip != head_hash:
            return Break(
                self.tenant_id,
                self.seq,
                None,
                "head mismatch",
                f"last row (seq {self.seq}) does not match the head (seq {head_seq})",
            )
        return None


async def verify(conn: asyncpg.Connection, *, chain: uuid.UUID | None = None) -> Report:
    """Walk every chain (or the one keyed ``chain``; SYSTEM_CHAIN is the system's)."""
    if chain is None:
        where, args = "", ()
    elif chain == SYSTEM_CHAIN:
        where, args = "WHERE tenant_id IS NULL", ()
    else:
        where, args = "WHERE tenant_id = $1", (chain,)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head_where = "" if chain is None else "WHERE tenant_id = $1"
        head_args = () if chain is None else (chain,)
        heads = {
            r["tenant_id"]: (r["seq"], bytes(r["row_hash"]))
            for r in await conn.fetch(_HEADS.format(where=head_where), *head_args)
        }
        chains = rows = 0
        current: _Chain | None = None
        async for row in conn.cursor(_ROWS.format(where=where), *args, prefetch=2000):
            key = chain_key(row["tenant_id"])
            if current is None or current.key != key:
                if current is not None and (b := current.end(heads.pop(current.key, None))):
                    return Report(chains, rows, b)
                current = _Chain(key)
                chains += 1
            if b := current.step(row):
                return Report(chains, rows, b)
            rows += 1
        if current is not None and (b := current.end(heads.pop(current.key, None))):
            return Report(chains, rows, b)
        # Heads of chains with no rows left at all.
        for key in sorted(heads):
            chains += 1
            if b := _Chain(key).end(heads[key]):
                return Report(chains, rows, b)
        return Report(chains, rows)


async def resolve_chain(conn: asyncpg.Connection, ref: str) -> uuid.UUID:
    """``system``, a tenant id, or a live tenant's slug → the chain's key."""
    from shared.integrations import NotFound

    if ref == "system":
        return SYSTEM_CHAIN
    try:
        return uuid.UUID(ref)  # the audit trail outlives its tenant: no lookup
    except ValueError:
        pass
    tenant_id = await conn.fetchval(
        "SELECT id FROM tenants WHERE slug = $1 AND deleted_at IS NULL", ref
    )
    if tenant_id is None:
        raise NotFound(f"no tenant {ref!r}")
    return tenant_id  # type: ignore[no-any-return]


async def run_verify(database_url: str, *, tenant: str | None = None) -> Report:
    """Connect as the worker role and verify all chains or one tenant's (or ``system``)."""
    conn = await connect(database_url)
    try:
        chain = await resolve_chain(conn, tenant) if tenant is not None else None
        return await verify(conn, chain=chain)
    finally:
        await conn.close()
