"""The persister against the real broker and PostgreSQL: idempotent, order-tolerant, poison-safe."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.workers.persister.role import PERSISTER
from services.workers.persister.rows import message_row
from services.workers.persister.store import STAGING_SQL, write_batch
from shared.db.pool import connect
from shared.events import (
    DeadLetter,
    MessageInbound,
    MessageOutbound,
    MessageStatus,
    StatusError,
    Topics,
    derive_event_id,
)
from shared.integrations import Integration
from shared.settings import Settings
from tests.integration.workers.conftest import running, wait_until
from tests.support import read_topic

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
async def wa(make_integration) -> Integration:
    return await make_integration(
        "whatsapp",
        {"app_secret": "a", "verify_token": "v", "access_token": "t", "phone_number_id": "1"},
    )


@pytest.fixture
async def db(worker_settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(worker_settings.require_database_url())
    yield conn
    await conn.close()


def inbound(
    integration: Integration,
    n: int,
    *,
    conv: str = "c1",
    text: str | None = None,
    edited_at: datetime | None = None,
) -> MessageInbound:
    external_id = f"wamid.{n}"
    marker = ("edit", edited_at.isoformat()) if edited_at else ()
    return MessageInbound(
        event_id=derive_event_id("whatsapp", integration.id, external_id, *marker),
        tenant_id=integration.tenant_id,
        integration_id=integration.id,
        channel="whatsapp",
        conversation_key=conv,
        external_id=external_id,
        sender_id=conv,
        sender_name="Ada",
        text=text or f"message {n}",
        sent_at=T0 + timedelta(seconds=n),
        edited_at=edited_at,
    )


def outbound(
    integration: Integration, message_id: str, *, conv: str = "c1", at: int = 100
) -> MessageOutbound:
    return MessageOutbound(
        tenant_id=integration.tenant_id,
        integration_id=integration.id,
        channel="whatsapp",
        conversation_key=conv,
        message_id=message_id,
        recipient_id=conv,
        text="reply",
        sent_at=T0 + timedelta(seconds=at),
    )


def status(
    integration: Integration,
    ref: str,
    value: str,
    *,
    at: int = 200,
    platform_id: str | None = None,
    conv: str = "c1",
) -> MessageStatus:
    return MessageStatus(
        tenant_id=integration.tenant_id,
        integration_id=integration.id,
        channel="whatsapp",
        conversation_key=conv,
        message_id=ref,
        platform_message_id=platform_id,
        status=value,
        status_at=T0 + timedelta(seconds=at),  # type: ignore[arg-type]
        errors=[StatusError(code="131026", title="undeliverable")] if value == "failed" else [],
    )


COUNT = "SELECT count(*) FROM channel_messages WHERE integration_id = $1"


async def test_messages_and_conversations_are_stored_once_even_when_replayed(
    worker_settings: Settings,
    publish,
    db: asyncpg.Connection,
    wa: Integration,
) -> None:
    events = [inbound(wa, n, conv=f"c{n % 2}") for n in range(10)]
    async with running(PERSISTER, worker_settings):
        await publish(*events)
        assert await wait_until(db, COUNT, 10, wa.id) == 10
        await publish(*events)  # a replay: the same events again
        await publish(*events[:3])
        marker = inbound(wa, 99, conv="c0")
        await publish(marker)
        assert await wait_until(db, COUNT, 11, wa.id) == 11
    rows = await db.fetch(
        "SELECT conversation_key, message_count, inbound_count, external_user_id, "
        "last_message_at FROM conversations WHERE integration_id = $1 ORDER BY 1",
        wa.id,
    )
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [("c0", 6, 6, "c0"), ("c1", 5, 5, "c1")]
    assert rows[0]["last_message_at"] == T0 + timedelta(seconds=99)
    stored = await db.fetchrow(
        "SELECT text, sender_name, message_type, direction, event_id FROM channel_messages "
        "WHERE external_id = 'wamid.3'"
    )
    assert tuple(stored) == ("message 3", "Ada", "text", "inbound", events[3].event_id)


async def test_a_batch_of_new_looking_messages_already_stored_falls_back_and_counts_once(
    db: asyncpg.Connection, wa: Integration
) -> None:
    """Distinct keys take the fresh insert; stored ones make it fall back, in the same
    transaction, to the form that skips them (straight on the store, no broker)."""
    await db.execute(STAGING_SQL)
    stored = asyncio.get_running_loop().create_future()
    stored.set_result(None)  # the turn: no earlier batch to wait for
    first = [message_row(inbound(wa, n)) for n in range(5)]
    replay = [*first, message_row(inbound(wa, 5))]  # all distinct, five stored already
    for batch in (first, replay, replay):
        async with db.transaction():
            await write_batch(db, batch, [], stored)
    assert await db.fetchval(COUNT, wa.id) == 6
    counts = await db.fetchrow(
        "SELECT message_count, inbound_count FROM conversations WHERE integration_id = $1",
        wa.id,
    )
    assert tuple(counts) == (6, 6)


async def test_an_edit_wins_whichever_arrives_first(
    worker_settings: Settings,
    publish,
    db: asyncpg.Connection,
    wa: Integration,
) -> None:
    edit_time = T0 + timedelta(minutes=5)
    async with running(PERSISTER, worker_settings):
        # Edit before its message (and the message arrives later).
        await publish(inbound(wa, 1, text="edited first", edited_at=edit_time))
        await publish(inbound(wa, 1, text="original"))
        # Message, then edit, then an older edit late.
        await publish(inbound(wa, 2, text="original 2"))
        await publish(inbound(wa, 2, text="second edit", edited_at=edit_time + timedelta(1)))
        await publish(inbound(wa, 2, text="first edit", edited_at=edit_time))
        await publish(inbound(wa, 3))
        assert await wait_until(db, COUNT, 3, wa.id) == 3
        texts = (
            "SELECT string_agg(text, '|' ORDER BY external_id) FROM channel_messages "
            "WHERE integration_id = $1 AND external_id IN ('wamid.1', 'wamid.2')"
        )
        assert await wait_until(db, texts, "edited first|second edit", wa.id) == (
            "edited first|second edit"
        )
    assert (
        await db.fetchval(
            "SELECT message_count FROM conversations WHERE integration_id = $1", wa.id
        )
        == 3
    )


async def test_statuses_never_move_backwards_and_early_ones_wait(
    worker_settings: Settings,
    publish,
    db: asyncpg.Connection,
    wa: Integration,
) -> None:
    status_of = "SELECT status FROM channel_messages WHERE integration_id = $1 AND external_id = $2"
    async with running(PERSISTER, worker_settings):
        # 1. read arrives, then a late 'sent': stays read.
        await publish(
            outbound(wa, "out-1"),
            status(wa, "out-1", "read", at=210),
            status(wa, "out-1", "sent", at=205),
        )
        assert await wait_until(db, status_of, "read", wa.id, "out-1") == "read"
        # 2. a receipt that names only the platform id, before the egress told us that id.
        await publish(status(wa, "wamid.OUT2", "delivered", at=300), outbound(wa, "out-2", at=250))
        await publish(status(wa, "out-2", "sent", at=260, platform_id="wamid.OUT2"))
        assert await wait_until(db, status_of, "delivered", wa.id, "out-2") == "delivered"
        # 3. a failure reported before the message itself is stored.
        await publish(status(wa, "out-3", "failed", at=400, conv="c2"))
        await publish(outbound(wa, "out-3", at=350, conv="c2"))
        assert await wait_until(db, status_of, "failed", wa.id, "out-3") == "failed"
    assert await db.fetchval("SELECT count(*) FROM pending_statuses") == 0
    errors = await db.fetchval(
        "SELECT status_errors FROM channel_messages WHERE external_id = 'out-3'"
    )
    assert errors == [{"code": "131026", "title": "undeliverable"}]
    assert (
        await db.fetchval(
            "SELECT last_outbound_status FROM conversations WHERE integration_id = $1 "
            "AND conversation_key = 'c1'",
            wa.id,
        )
        == "delivered"
    )


async def test_poison_goes_to_the_dead_letter_topic_and_the_partition_moves_on(
    worker_settings: Settings,
    publish,
    raw_producer,
    db: asyncpg.Connection,
    wa: Integration,
    topics: Topics,
) -> None:
    stranger = inbound(wa, 7).model_copy(update={"integration_id": uuid.uuid4()})
    async with running(PERSISTER, worker_settings):
        await raw_producer.send_and_wait(topics.inbound, b"\x00 not json", key=b"k1")
        await publish(stranger)
        await raw_producer.send_and_wait(topics.inbound, b'{"type": "message.inbound"}')
        await publish(inbound(wa, 8))
        assert await wait_until(db, COUNT, 1, wa.id) == 1
    dead = await read_topic(worker_settings.require_kafka(), topics.dlq, expect=3)
    assert all(isinstance(d, DeadLetter) for d in dead) and len(dead) == 3
    reasons = sorted((d.error_class, d.source_topic) for d in dead)  # type: ignore[union-attr]
    assert reasons == [
        ("rejected", topics.inbound),
        ("undecodable", topics.inbound),
        ("undecodable", topics.inbound),
    ]
    first = next(d for d in dead if d.original_key == b"k1")  # type: ignore[union-attr]
    assert first.original_value == b"\x00 not json"  # type: ignore[union-attr]
    assert first.consumer_group == f"{worker_settings.consumer_group_prefix}persister"  # type: ignore[union-attr]
    assert "unknown integration" in next(d.reason for d in dead if d.error_class == "rejected")  # type: ignore[union-attr]
