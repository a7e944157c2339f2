"""Topics and the publisher against the real broker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer

from shared.events import MessageInbound, Topics, decode
from shared.kafka import EventPublisher, create_producer, ensure_topics
from shared.settings import Settings
from tests.conftest import Infra


async def test_topic_creation_is_idempotent(infra: Infra) -> None:
    topics = Topics(prefix=f"idem{uuid.uuid4().hex[:8]}.")
    created = await ensure_topics(infra.bootstrap, topics.all(), partitions=2)
    assert sorted(created) == sorted(topics.all())
    assert await ensure_topics(infra.bootstrap, topics.all(), partitions=2) == []


async def test_published_events_keep_conversation_order_on_one_partition(
    settings: Settings, topics: Topics, infra: Infra
) -> None:
    producer = create_producer(settings)
    await producer.start()
    tenant, integration = uuid.uuid4(), uuid.uuid4()
    events = [
        MessageInbound(
            tenant_id=tenant,
            integration_id=integration,
            channel="widget",
            conversation_key=f"conv-{i % 2}",
            external_id=f"m{i}",
            sender_id="v1",
            text=f"message {i}",
            sent_at=datetime.now(UTC),
        )
        for i in range(10)
    ]
    try:
        publisher = EventPublisher(producer, topics)
        partitions = [(await publisher.publish(e)).partition for e in events]
    finally:
        await producer.stop()
    assert len(set(partitions[0::2])) == 1 and len(set(partitions[1::2])) == 1

    consumer = AIOKafkaConsumer(
        topics.inbound,
        bootstrap_servers=infra.bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[MessageInbound] = []
    try:
        while len(received) < len(events):
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, "no records arrived within 5 s"
            for records in batch.values():
                received.extend(decode(r.value) for r in records)  # type: ignore[misc]
    finally:
        await consumer.stop()
    for conv in ("conv-0", "conv-1"):
        assert [e.external_id for e in received if e.conversation_key == conv] == [
            e.external_id for e in events if e.conversation_key == conv
        ]
    assert {e.event_id for e in received} == {e.event_id for e in events}
