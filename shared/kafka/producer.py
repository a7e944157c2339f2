"""The one way to publish events: acks=all, idempotence as configured, keyed by conversation."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from shared.events import Envelope, Topics, encode
from shared.settings import Settings


def create_producer(settings: Settings, **overrides: object) -> AIOKafkaProducer:
    """A producer that only reports success once every in-sync replica has the record."""
    options: dict[str, object] = {
        "bootstrap_servers": settings.require_kafka(),
        "client_id": settings.kafka_client_id,
        "acks": "all",
        "enable_idempotence": settings.kafka_idempotent_producer,
        "linger_ms": 5,
        "request_timeout_ms": 10000,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)  # type: ignore[arg-type]


class EventPublisher:
    """Publishes events to their topic with their partitioning key."""

    def __init__(self, producer: AIOKafkaProducer, topics: Topics) -> None:
        self._producer = producer
        self._topics = topics

    async def send(self, event: Envelope) -> asyncio.Future[RecordMetadata]:
        """Enqueue an event; the returned future resolves when the broker acknowledged it.

        The delivery goes on even if the caller stops waiting, so callers that give up
        must treat the event as possibly delivered.
        """
        return await self.send_to(self._topics.for_event(event), event)

    async def send_to(
        self, topic: str, event: Envelope, *, headers: Sequence[tuple[str, bytes]] = ()
    ) -> asyncio.Future[RecordMetadata]:
        """Like :meth:`send`, to a topic that is not the event type's own (egress retry
        tiers, widget replies), with optional record headers."""
        return await self._producer.send(
            topic, value=encode(event), key=event.kafka_key(), headers=list(headers) or None
        )

    async def publish(self, event: Envelope) -> RecordMetadata:
        """Send and wait for the broker's acknowledgement."""
        return await (await self.send(event))

    async def publish_to(
        self, topic: str, event: Envelope, *, headers: Sequence[tuple[str, bytes]] = ()
    ) -> RecordMetadata:
        """:meth:`send_to` and wait for the broker's acknowledgement."""
        return await (await self.send_to(topic, event, headers=headers))
