"""The one way to publish events: acks=all, idempotence as configured, keyed by conversation."""

from __future__ import annotations

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

    async def publish(self, event: Envelope) -> RecordMetadata:
        """Send and wait for the broker's acknowledgement."""
        return await self._producer.send_and_wait(
            self._topics.for_event(event), value=encode(event), key=event.kafka_key()
        )
