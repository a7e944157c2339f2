"""Operator actions on one conversation: hand it to a human, speak in it, give it back.

While a conversation is handed off the agent stays silent in it (its state says so);
an operator's message is a ``message.outbound`` with origin ``operator`` that egress
delivers like any reply. The state row is locked while it changes, so an agent batch
in flight and an operator never overwrite each other. Every action is audited.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from services.admin import audit_operator_action
from services.workers.agent.state import State, resume
from services.workers.agent.store import STATE_COLUMNS, state_from_row, state_values
from shared.events import MessageOutbound
from shared.integrations import InvalidInput, NotFound
from shared.kafka import EventPublisher

MAX_TEXT = 4096


class ConversationAdmin:
    def __init__(self, pool: asyncpg.Pool, publisher: EventPublisher, *, actor_id: str) -> None:
        self._pool = pool
        self._publisher = publisher
        self._actor = actor_id

    async def show(self, conversation_id: uuid.UUID) -> dict[str, Any]:
        async with self._pool.acquire() as conn:
            row = await self._conversation(conn, conversation_id)
            state = await conn.fetchrow(
                "SELECT current_node, handed_off, turn_count FROM conversation_state "
                "WHERE conversation_id = $1",
                conversation_id,
            )
        return {
            **_public(row),
            "current_node": state["current_node"] if state else None,
            "turn_count": state["turn_count"] if state else 0,
        }

    async def handoff(
        self, conversation_id: uuid.UUID, reason: str | None = None
    ) -> dict[str, Any]:
        """Silence the bot in this conversation until it is released."""
        return await self._set_handoff(conversation_id, True, reason)

    async def release(self, conversation_id: uuid.UUID) -> dict[str, Any]:
        """Give the conversation back to the bot; the next message starts the flow again."""
        return await self._set_handoff(conversation_id, False, None)

    async def send(self, conversation_id: uuid.UUID, text: str) -> dict[str, Any]:
        """Publish an operator's message into the conversation (egress delivers it)."""
        text = text.strip()
        if not text:
            raise InvalidInput("the message text is empty")
        if len(text) > MAX_TEXT:
            raise InvalidInput(f"the message text is longer than {MAX_TEXT} characters")
        async with self._pool.acquire() as conn:
            row = await self._conversation(conn, conversation_id)
        if row["external_user_id"] is None:
            raise InvalidInput("the conversation has no known recipient yet")
        message_id = uuid.uuid4()
        event = MessageOutbound(
            event_id=message_id,
            tenant_id=row["tenant_id"],
            integration_id=row["integration_id"],
            channel=row["channel"],
            conversation_key=row["conversation_key"],
            message_id=str(message_id),
            recipient_id=row["external_user_id"],
            text=text,
            thread_id=_thread_of(row["channel"], row["conversation_key"]),
            origin="operator",
        )
        await self._publisher.publish(event)
        await self._audit(row, "conversation.operator_message", message_id=str(message_id))
        return {"message_id": str(message_id), "conversation_id": str(conversation_id)}

    async def _set_handoff(
        self, conversation_id: uuid.UUID, handed_off: bool, reason: str | None
    ) -> dict[str, Any]:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._conversation(conn, conversation_id, lock=True)
            stored = await conn.fetchrow(
                f"SELECT {STATE_COLUMNS} FROM conversation_state "
                "WHERE conversation_id = $1 FOR UPDATE",
                conversation_id,
            )
            state = state_from_row(stored) if stored else State()
            state = state.model_copy(update={"handed_off": True}) if handed_off else resume(state)
            await conn.execute(
                """
                INSERT INTO conversation_state AS s (conversation_id, tenant_id, current_node,
                    variables, turn_count, handed_off, runtime)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (conversation_id) DO UPDATE SET current_node = EXCLUDED.current_node,
                    handed_off = EXCLUDED.handed_off, runtime = EXCLUDED.runtime
                """,
                conversation_id,
                row["tenant_id"],
                *state_values(state),
            )
            await conn.execute(
                "UPDATE conversations SET status = $2 WHERE id = $1",
                conversation_id,
                "handed_off" if handed_off else "open",
            )
        action = "conversation.handed_off" if handed_off else "conversation.released"
        await self._audit(row, action, reason=reason)
        return {**_public(row), "status": "handed_off" if handed_off else "open"}

    @staticmethod
    async def _conversation(
        conn: asyncpg.Connection, conversation_id: uuid.UUID, *, lock: bool = False
    ) -> asyncpg.Record:
        row = await conn.fetchrow(
            """
            SELECT id, tenant_id, integration_id, channel, conversation_key, external_user_id,
                   user_name, status, last_message_at
            FROM conversations WHERE id = $1
            """
            + (" FOR UPDATE" if lock else ""),
            conversation_id,
        )
        if row is None:
            raise NotFound(f"no conversation {conversation_id}")
        return row

    async def _audit(self, row: asyncpg.Record, action: str, **metadata: Any) -> None:
        await audit_operator_action(
            self._publisher,
            self._actor,
            row["tenant_id"],
            action,
            "conversation",
            row["id"],
            **{k: v for k, v in metadata.items() if v is not None},
        )


def _thread_of(channel: str, conversation_key: str) -> str | None:
    """Slack threads are part of the conversation key (``channel:thread_ts``)."""
    if channel == "slack" and ":" in conversation_key:
        return conversation_key.partition(":")[2]
    return None


def _public(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "tenant_id": str(row["tenant_id"]),
        "integration_id": str(row["integration_id"]),
        "channel": row["channel"],
        "conversation_key": row["conversation_key"],
        "user_name": row["user_name"],
        "status": row["status"],
    }
