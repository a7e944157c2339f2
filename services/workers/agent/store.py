"""The agent's SQL, set-based per batch: conversations, turns already done, state, flows.

Every function takes the batch's connection inside its transaction, so the state
update, the turn record and its replies commit together (or not at all).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from services.workers.agent.state import State

ConversationRef = tuple[uuid.UUID, uuid.UUID, str]  # tenant, integration, conversation_key


@dataclass(frozen=True, slots=True)
class StoredFlow:
    id: uuid.UUID
    name: str
    version: int
    definition: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredState:
    state: State
    flow_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class Turn:
    """One processed inbound message, as agent_turns stores it."""

    tenant_id: uuid.UUID
    event_id: uuid.UUID
    conversation_id: uuid.UUID
    flow: StoredFlow | None
    node_before: str | None
    node_after: str | None
    handled_by: str
    intent: str | None
    confidence: float | None
    replies: Sequence[bytes]  # encoded MessageOutbound events, in send order


async def ensure_conversations(
    conn: asyncpg.Connection, refs: Iterable[tuple[ConversationRef, str, str | None, str | None]]
) -> dict[ConversationRef, uuid.UUID]:
    """The conversation id of each (ref, channel, user id, user name); missing rows created.

    Created with zero counters: the persister counts messages as it stores them.
    """
    rows = list(refs)
    if not rows:
        return {}
    await conn.execute(
        """
        INSERT INTO conversations (tenant_id, integration_id, channel, conversation_key,
                                   external_user_id, user_name)
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[])
        ORDER BY 1, 2, 4
        ON CONFLICT (tenant_id, integration_id, conversation_key) DO NOTHING
        """,
        [r[0][0] for r in rows],
        [r[0][1] for r in rows],
        [r[1] for r in rows],
        [r[0][2] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
    )
    found = await conn.fetch(
        """
        SELECT c.tenant_id, c.integration_id, c.conversation_key, c.id
        FROM conversations c
        JOIN unnest($1::uuid[], $2::uuid[], $3::text[]) AS k(t, i, key)
          ON c.tenant_id = k.t AND c.integration_id = k.i AND c.conversation_key = k.key
        """,
        [r[0][0] for r in rows],
        [r[0][1] for r in rows],
        [r[0][2] for r in rows],
    )
    return {(r["tenant_id"], r["integration_id"], r["conversation_key"]): r["id"] for r in found}


async def done_turns(
    conn: asyncpg.Connection, keys: Sequence[tuple[uuid.UUID, uuid.UUID]]
) -> dict[tuple[uuid.UUID, uuid.UUID], list[bytes]]:
    """Replies of the (tenant, event id) pairs already processed: a redelivery resends them."""
    if not keys:
        return {}
    rows = await conn.fetch(
        """
        SELECT t.tenant_id, t.event_id, t.replies::text AS replies
        FROM agent_turns t
        JOIN unnest($1::uuid[], $2::uuid[]) AS k(tenant_id, event_id) USING (tenant_id, event_id)
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {
        (r["tenant_id"], r["event_id"]): [orjson.dumps(e) for e in orjson.loads(r["replies"])]
        for r in rows
    }


async def lock_states(
    conn: asyncpg.Connection, tenant_and_ids: Sequence[tuple[uuid.UUID, uuid.UUID]]
) -> dict[uuid.UUID, StoredState]:
    """The stored state of these conversations, rows locked until the batch commits."""
    if not tenant_and_ids:
        return {}
    rows = await conn.fetch(
        f"""
        SELECT s.conversation_id, s.flow_id, {STATE_COLUMNS}
        FROM conversation_state s
        WHERE s.conversation_id = ANY($1::uuid[])
        ORDER BY s.conversation_id
        FOR UPDATE
        """,
        [c for _, c in tenant_and_ids],
    )
    return {
        r["conversation_id"]: StoredState(state=state_from_row(r), flow_id=r["flow_id"])
        for r in rows
    }


_RUNTIME_FIELDS = ("ended", "awaiting", "retries", "last_activity")

#: The conversation_state columns state_from_row reads.
STATE_COLUMNS = (
    "current_node, variables::text AS variables, turn_count, handed_off, runtime::text AS runtime"
)


def state_from_row(row: asyncpg.Record) -> State:
    """A State from a row selected with STATE_COLUMNS."""
    return State(
        current_node=row["current_node"],
        variables=orjson.loads(row["variables"]),
        turn_count=row["turn_count"],
        handed_off=row["handed_off"],
        **orjson.loads(row["runtime"]),
    )


def state_values(state: State) -> tuple[str | None, dict[str, Any], int, bool, dict[str, Any]]:
    """(current_node, variables, turn_count, handed_off, runtime) to store."""
    data = state.to_json()
    return (
        state.current_node,
        data["variables"],
        state.turn_count,
        state.handed_off,
        {k: data[k] for k in _RUNTIME_FIELDS},
    )


async def save_states(
    conn: asyncpg.Connection,
    states: Sequence[tuple[uuid.UUID, uuid.UUID, StoredFlow | None, State, uuid.UUID]],
) -> None:
    """Upsert (tenant, conversation id, flow, state, last event id) rows."""
    if not states:
        return
    records = []
    for tenant_id, conversation_id, flow, state, event_id in states:
        records.append(
            (
                conversation_id,
                tenant_id,
                flow.id if flow else None,
                flow.version if flow else None,
                event_id,
                *state_values(state),
            )
        )
    await conn.executemany(
        """
        INSERT INTO conversation_state AS s (conversation_id, tenant_id, flow_id, flow_version,
            last_event_id, current_node, variables, turn_count, handed_off, runtime)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        ON CONFLICT (conversation_id) DO UPDATE SET
            flow_id = EXCLUDED.flow_id, flow_version = EXCLUDED.flow_version,
            current_node = EXCLUDED.current_node, variables = EXCLUDED.variables,
            turn_count = EXCLUDED.turn_count, last_event_id = EXCLUDED.last_event_id,
            handed_off = EXCLUDED.handed_off, runtime = EXCLUDED.runtime
        """,
        records,
    )
    await conn.execute(
        """
        UPDATE conversations c
        SET status = CASE WHEN k.handed_off THEN 'handed_off' ELSE 'open' END,
            current_flow_id = k.flow_id
        FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::uuid[]) AS k(t, id, handed_off, flow_id)
        WHERE c.tenant_id = k.t AND c.id = k.id
          AND (c.status IS DISTINCT FROM CASE WHEN k.handed_off THEN 'handed_off' ELSE 'open' END
               OR c.current_flow_id IS DISTINCT FROM k.flow_id)
        """,
        [r[1] for r in records],
        [r[0] for r in records],
        [r[8] for r in records],  # handed_off
        [r[2] for r in records],
    )


async def record_turns(conn: asyncpg.Connection, turns: Sequence[Turn]) -> None:
    if not turns:
        return
    await conn.executemany(
        """
        INSERT INTO agent_turns (tenant_id, event_id, conversation_id, flow_id, flow_version,
            node_before, node_after, handled_by, intent, confidence, replies)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
        """,
        [
            (
                t.tenant_id,
                t.event_id,
                t.conversation_id,
                t.flow.id if t.flow else None,
                t.flow.version if t.flow else None,
                t.node_before,
                t.node_after,
                t.handled_by,
                t.intent,
                t.confidence,
                [orjson.Fragment(r) for r in t.replies],
            )
            for t in turns
        ],
    )


async def active_flows(
    conn: asyncpg.Connection, tenant_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, tuple[uuid.UUID, int]]:
    """(flow id, version) of each tenant's active flow; tenants without one are absent."""
    rows = await conn.fetch(
        """
        SELECT tenant_id, id, version FROM conversation_flows
        WHERE tenant_id = ANY($1::uuid[]) AND status = 'active'
        """,
        list(set(tenant_ids)),
    )
    return {r["tenant_id"]: (r["id"], r["version"]) for r in rows}


async def load_flow(conn: asyncpg.Connection, flow_id: uuid.UUID) -> StoredFlow:
    row = await conn.fetchrow(
        "SELECT id, name, version, definition::text AS d FROM conversation_flows WHERE id = $1",
        flow_id,
    )
    if row is None:
        raise LookupError(f"flow {flow_id} vanished")
    return StoredFlow(row["id"], row["name"], row["version"], orjson.loads(row["d"]))
