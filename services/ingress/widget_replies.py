"""Widget replies, delivered by whichever ingress process holds the visitor's socket.

Consumes ``sb.widget.replies`` (egress puts each widget ``message.outbound`` there) and
produces ``message.status`` ``delivered`` for the replies it pushed. Every ingress
process reads every partition without a consumer group, from the end at start: each
reply reaches all processes, and only those holding a socket of that widget session
push it (two tabs both get it). A process that holds no socket for it drops it; the
reply is still stored by the persister from ``sb.messages.outbound``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter

from services.ingress.widget_sockets import push, reply_frame
from shared.errors import DeadLetterError
from shared.events import MessageOutbound, MessageStatus, decode_as, utcnow
from shared.kafka import EventPublisher
from shared.settings import Settings

log = logging.getLogger(__name__)

REPLIES = Counter(
    "switchboard_widget_replies_total",
    "Widget replies seen by this ingress process, by outcome.",
    ["outcome"],  # pushed | no_socket | undecodable
)


def frame(message: MessageOutbound) -> dict[str, Any]:
    return reply_frame(
        message.message_id,
        message.text,
        [{"title": q.title, "payload": q.payload} for q in message.quick_replies],
        message.sent_at.isoformat(),
    )


async def deliver(app: web.Application, publisher: EventPublisher, value: bytes) -> bool:
    """Push one reply to this process's sockets; a ``delivered`` status when any got it."""
    try:
        message = decode_as(value, MessageOutbound)
    except DeadLetterError:
        REPLIES.labels("undecodable").inc()
        return False
    if message.channel != "widget":
        return False
    pushed = await push(app, message.integration_id, message.conversation_key, frame(message))
    if not pushed:
        REPLIES.labels("no_socket").inc()
        return False
    REPLIES.labels("pushed").inc()
    await publisher.send(
        MessageStatus(
            tenant_id=message.tenant_id,
            integration_id=message.integration_id,
            channel="widget",
            conversation_key=message.conversation_key,
            message_id=message.message_id,
            platform_message_id=message.message_id,
            recipient_id=message.recipient_id,
            status="delivered",
            status_at=utcnow(),
            attempt=message.attempt,
        )
    )
    return True


async def _consume(
    app: web.Application, settings: Settings, publisher: EventPublisher, topic: str
) -> None:
    backoff = 0.5
    positions: dict[TopicPartition, int] = {}  # kept across reconnects: no reply skipped
    while True:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.require_kafka(),
            group_id=None,
            enable_auto_commit=False,
            client_id=f"{settings.kafka_client_id}-widget-replies",
        )
        try:
            await consumer.start()
            partitions = await consumer._client._wait_on_metadata(topic)
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_end(*(tp for tp in tps if tp not in positions))
            for tp in tps:
                if tp in positions:
                    consumer.seek(tp, positions[tp])
            backoff = 0.5
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    for record in records:
                        await deliver(app, publisher, record.value or b"")
                        positions[tp] = record.offset + 1
        except (KafkaError, OSError) as exc:
            log.warning("widget replies: %s; reconnecting in %.1fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()


@contextlib.asynccontextmanager
async def widget_replies(
    app: web.Application, settings: Settings, publisher: EventPublisher, topic: str
) -> AsyncIterator[None]:
    """Run the reply reader in the background for as long as the block lasts."""
    task = asyncio.create_task(_consume(app, settings, publisher, topic))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
