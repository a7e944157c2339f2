"""The faust app of the analytics role: two agents and three windowed tables.

``route`` reads the inbound and outbound topics (keyed by conversation), keeps each
conversation's first-response state, and forwards every message to a repartition
topic keyed by (tenant, channel, direction). ``count`` reads that topic, so one group
member owns each counting key, and counts messages in one-minute tumbling windows of
their ``sent_at``, each message once (a ``seen`` table remembers message identities
per window, so a replay or redelivery changes nothing). Both hand their newest values
to the :class:`Flusher`, which writes them to PostgreSQL in batches.

State lives in faust tables on the ``memory://`` store, rebuilt from their changelog
topics at start (reading them to their real end, see :mod:`.highwaters`); after every
recovery all live state is written to PostgreSQL again (the writes are idempotent),
which covers values a crashed member never flushed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import faust
from faust.transport.drivers.aiokafka import Producer as AIOKafkaProducerService

from services.workers import metrics as worker_metrics
from services.workers.analytics import metrics
from services.workers.analytics.facts import (
    WINDOW_S,
    Conversation,
    CountedMessage,
    conversation_key,
    counted,
    epoch_ms,
)
from services.workers.analytics.flusher import Flusher
from services.workers.analytics.highwaters import HighwaterCheckingConsumer
from shared.events import (
    DeadLetter,
    MessageInbound,
    MessageOutbound,
    Topics,
    UndecodableEvent,
    decode,
    encode,
)
from shared.settings import Settings

log = logging.getLogger(__name__)

ROLE = "analytics"


class _IdempotentProducer(AIOKafkaProducerService):
    """faust's producer with Kafka idempotence (off by default; Tansu has no InitProducerId)."""

    def _settings_extra(self) -> dict[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class AnalyticsApp(faust.App):
    """A faust App with an idempotent producer when the settings say so, and table recovery
    that reads changelogs to their real end (see :mod:`.highwaters`)."""

    idempotent_producer: bool = False

    def _new_producer(self) -> Any:
        if self.idempotent_producer:
            return _IdempotentProducer(self.transport, loop=self.loop, beacon=self.beacon)
        return super()._new_producer()

    def _new_consumer(self) -> Any:
        return HighwaterCheckingConsumer(
            self.transport,
            callback=self.topics.on_message,
            loop=self.transport.loop,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned,
            beacon=self.beacon,
        )


def create_app(
    settings: Settings, flusher: Flusher, *, source_partitions: int, datadir: Path
) -> AnalyticsApp:
    """The analytics app, wired to ``flusher``; ``source_partitions`` of inbound/outbound.

    ``datadir`` must exist; faust requires one although the memory store writes nothing.
    """
    topics = Topics(settings.topic_prefix)
    app_id = f"{settings.consumer_group_prefix}{ROLE}"  # faust's app id is its group id
    horizon = settings.analytics_horizon_s
    session_s = settings.worker_session_timeout_ms / 1000
    app = AnalyticsApp(
        app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.require_kafka().split(",")],
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        web_enabled=False,
        autodiscover=False,
        datadir=str(datadir),
        broker_client_id=f"{settings.kafka_client_id}-{app_id}",
        broker_session_timeout=session_s,
        broker_rebalance_timeout=session_s,
        broker_heartbeat_interval=max(0.5, session_s / 5),
        consumer_auto_offset_reset="earliest",
        table_cleanup_interval=min(30.0, horizon / 4),
    )
    app.idempotent_producer = settings.kafka_idempotent_producer

    # Internal topic names carry the topic prefix, like every other topic of a deployment.
    # Tables serialize keys and values as JSON (faust's default for tables).
    ns = settings.topic_prefix
    counts = app.Table(
        f"{ns}message-counts", default=int, partitions=settings.topic_partitions
    ).tumbling(WINDOW_S, expires=horizon)
    seen = app.Table(f"{ns}message-seen", partitions=settings.topic_partitions).tumbling(
        WINDOW_S, expires=horizon
    )
    # Keyed by conversation on the source partitions. Windows of wall-clock time: a state
    # is carried into the current window when touched, and dropped after two idle windows.
    conversations = app.Table(f"{ns}first-response", partitions=source_partitions).tumbling(
        horizon, expires=horizon
    )

    source = app.topic(topics.inbound, topics.outbound)
    dead_letters = app.topic(topics.dlq)
    by_count_key = app.topic(
        f"{app_id}-{ns}message-counts-repartition",
        internal=True,
        partitions=settings.topic_partitions,
    )

    async def dead_letter(event: faust.EventT, reason: str, kind: str) -> None:
        msg = event.message
        await dead_letters.send(
            key=msg.key,
            value=encode(
                DeadLetter(
                    reason=reason[:2000],
                    error_class=kind,
                    consumer_group=app_id,
                    source_topic=msg.topic,
                    source_partition=msg.partition,
                    source_offset=msg.offset,
                    source_timestamp_ms=int(msg.timestamp * 1000),
                    original_key=msg.key,
                    original_value=msg.value or b"",
                )
            ),
        )
        worker_metrics.DEAD_LETTERED.labels(ROLE, msg.topic, kind).inc()

    def track_conversation(message: MessageInbound | MessageOutbound) -> None:
        key, now, table = conversation_key(message), time.time(), conversations.table
        current = table.window.current(now)
        raw = table.get((key, current))
        carried = False
        if raw is None:
            raw = table.get((key, table.window.current(now - horizon)))
            carried = raw is not None
        state = Conversation.from_json(raw) if raw is not None else Conversation(message.channel)
        at = epoch_ms(message)
        new = (
            state.with_inbound(at)
            if isinstance(message, MessageInbound)
            else state.with_outbound(at)
        )
        if new != state or carried:
            table[(key, current)] = new.to_json()
        if new != state:
            flusher.conversation(key, new)

    @app.agent(source)
    async def route(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            topic = event.message.topic
            worker_metrics.CONSUMED.labels(ROLE, topic).inc()
            try:
                message = decode(event.value or b"")
            except UndecodableEvent as exc:
                await dead_letter(event, str(exc), "undecodable")
                continue
            if not isinstance(message, MessageInbound | MessageOutbound):
                await dead_letter(event, f"{message.type} on a message topic", "rejected")
                continue
            if isinstance(message, MessageOutbound) or message.edited_at is None:
                track_conversation(message)
            fact = counted(message)
            if fact is not None:
                await by_count_key.send(key=fact.key.encode(), value=fact.dumps())
            worker_metrics.PROCESSED.labels(ROLE, topic).inc()
            await flusher.when_full()

    @app.agent(by_count_key)
    async def count(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            try:
                fact = CountedMessage.loads(value)
            except (ValueError, TypeError):  # only this app writes the topic: a bug if seen
                log.error("unreadable record on %s skipped", by_count_key.get_topic_name())
                continue
            if fact.sent_at < time.time() - horizon + 2 * WINDOW_S:
                # Its window may already be expired from memory; counting it would start
                # that window again from zero and overwrite the full count.
                metrics.LATE_MESSAGES.labels(fact.direction).inc()
                continue
            seen_at = seen.relative_to(fact.sent_at)
            if fact.identity in seen_at:
                continue
            seen_at[fact.identity] = True
            windows = counts.relative_to(fact.sent_at)
            windows[fact.key] += 1
            start, _ = counts.table.window.current(fact.sent_at)
            flusher.count(
                (fact.tenant_id, fact.channel, fact.direction, start),
                windows[fact.key].value(),
            )
            await flusher.when_full()

    @counts.table.on_recover
    async def _counts_recovered() -> None:
        for (key, (start, _)), value in _recovered(counts.table, horizon):
            tenant_id, channel, direction = key.split("|")
            flusher.count((tenant_id, channel, direction, start), value)

    @seen.table.on_recover
    async def _seen_recovered() -> None:
        _recovered(seen.table, horizon)

    @conversations.table.on_recover
    async def _conversations_recovered() -> None:
        latest: dict[str, tuple[float, list[object]]] = {}
        for (key, (start, _)), value in _recovered(conversations.table, 2 * horizon):
            if key not in latest or start > latest[key][0]:
                latest[key] = (start, value)
        for key, (_, value) in latest.items():
            flusher.conversation(key, Conversation.from_json(value))

    return app


def _recovered(table: Any, horizon_s: float) -> list[tuple[Any, Any]]:
    """The table's unexpired entries after a recovery, with their expiry registered.

    faust schedules a windowed key's expiry when it is written, not when it is
    recovered from the changelog, so recovered keys would stay in memory forever.
    """
    store = table.data
    partitions = getattr(store, "_key_partition", {})  # memory store: key → partition
    for key, partition in list(partitions.items()):
        table._maybe_set_key_ttl(key, partition)
    oldest_end = time.time() - horizon_s
    return [(key, value) for key, value in list(store.items()) if key[1][1] >= oldest_end]
