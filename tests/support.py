"""Helpers shared by tests: reading what reached a topic, creating tenants and integrations."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.events import Envelope, decode


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout: float = 10.0, settle: float = 1.0
) -> list[Envelope]:
    """Every event on ``topic`` from the start: waits for ``expect`` of them, then ``settle``
    seconds more so that an unwanted extra one would be seen too."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await consumer._client._wait_on_metadata(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        events: list[Envelope] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        settle_until: float | None = None
        while True:
            now = loop.time()
            if len(events) >= expect and settle_until is None:
                settle_until = now + settle
            if settle_until is not None and now >= settle_until:
                break
            if settle_until is None and now >= deadline:
                break
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                events.extend(decode(r.value) for r in records)  # type: ignore[arg-type]
        return events
    finally:
        await consumer.stop()


def unique_slug(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def jsonable(obj: Any) -> Any:
    """What a JSON body decodes to (for comparing against raw payloads)."""
    import orjson

    return orjson.loads(orjson.dumps(obj))


async def activate_demo_flow(settings: Any, tenant_id: uuid.UUID) -> None:
    """Import the demo support flow for a tenant and make it active (as the CLI would)."""
    from services.admin import operator_session
    from services.demo import DEMO_FLOW
    from services.flows import FlowAdmin, read_definition

    async with operator_session(settings, actor_id="test") as (pool, publisher, actor):
        await FlowAdmin(pool, publisher, actor_id=actor).import_flow(
            str(tenant_id), read_definition(DEMO_FLOW), name="support", activate=True
        )
