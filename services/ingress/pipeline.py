"""What every channel's request goes through: lookup, size limit, verify, parse, publish.

Adapters are pure (``verify`` + ``parse`` over a :class:`WebhookRequest`); this module
is the only place that touches the cache, the broker, metrics and audit events.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from aiokafka.errors import KafkaError

from services.ingress import metrics
from services.ingress.registry import IntegrationCache
from shared.errors import RejectError, RetriableError
from shared.events import AuditEvent, Channel, Envelope, utcnow
from shared.integrations import Integration
from shared.kafka import EventPublisher

log = logging.getLogger(__name__)


class Rejected(RejectError):
    """A request refused with ``status``; ``reason`` is a short metric-safe code."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class BrokerUnavailable(RetriableError):
    """The broker did not acknowledge in time; answer 503 and let the platform retry."""


@dataclass(frozen=True)
class WebhookRequest:
    """A platform's request as adapters see it: no aiohttp, just data."""

    integration: Integration
    method: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes
    received_at: datetime
    remote: str | None = None


@dataclass(frozen=True)
class AdapterResult:
    """Events to publish, what to answer, and updates acknowledged but not published."""

    events: Sequence[Envelope] = ()
    response: Any = None  # JSON-able body or str; None → {"ok": true}
    ignored: Sequence[str] = ()


class ChannelAdapter(Protocol):
    """A thin translator from one platform's webhook to our events."""

    channel: Channel

    def verify(self, request: WebhookRequest, *, now: float) -> None:
        """Raise Rejected(401, ...) unless the request really comes from the platform."""

    def parse(self, request: WebhookRequest) -> AdapterResult:
        """Raise Rejected(400, ...) unless the body is the platform's shape."""


@dataclass
class RecentlyPublished:
    """Event ids acknowledged recently, so a platform's retry is not published twice."""

    capacity: int = 100_000
    ttl_s: float = 3600.0
    _seen: OrderedDict[uuid.UUID, float] = field(default_factory=OrderedDict)

    def seen(self, event_id: uuid.UUID) -> bool:
        stamp = self._seen.get(event_id)
        return stamp is not None and time.monotonic() - stamp < self.ttl_s

    def add(self, event_id: uuid.UUID) -> None:
        self._seen[event_id] = time.monotonic()
        self._seen.move_to_end(event_id)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)


class Ingress:
    """Shared machinery of every channel route."""

    def __init__(
        self,
        *,
        cache: IntegrationCache,
        publisher: EventPublisher,
        publish_timeout_s: float,
        max_body_bytes: int,
    ) -> None:
        self.cache = cache
        self.publisher = publisher
        self.publish_timeout_s = publish_timeout_s
        self.max_body_bytes = max_body_bytes
        self.recent = RecentlyPublished()
        self._audit_tasks: set[asyncio.Task[None]] = set()
        self._inflight: dict[uuid.UUID, asyncio.Task[None]] = {}

    async def lookup(self, raw_id: str, channel: Channel) -> Integration:
        """The active integration for a route, or 404 (unknown, disabled or other channel)."""
        try:
            integration_id = uuid.UUID(raw_id)
        except ValueError:
            raise Rejected(404, "unknown_integration", "no such integration") from None
        integration = await self.cache.get(integration_id)
        if integration is None or integration.channel != channel:
            raise Rejected(404, "unknown_integration", "no such integration")
        if not integration.active:
            raise Rejected(404, "disabled_integration", "no such integration")
        return integration

    async def publish(self, channel: Channel, events: Sequence[Envelope]) -> int:
        """Publish and wait for acks=all; returns how many were new (not redeliveries).

        Each event's delivery runs as its own task that outlives a timed-out request:
        a platform retry of the same message joins that delivery instead of sending a
        second copy, so a 503 followed by a retry still yields one record.
        """
        waits: list[asyncio.Task[None]] = []
        fresh = 0
        for event in events:
            if self.recent.seen(event.event_id):
                continue
            task = self._inflight.get(event.event_id)
            if task is None:
                task = asyncio.create_task(self._deliver(channel, event))
                self._inflight[event.event_id] = task
                task.add_done_callback(self._delivery_done(event.event_id))
                fresh += 1
            waits.append(task)
        if fresh < len(events):
            metrics.DUPLICATES.labels(channel).inc(len(events) - fresh)
        if waits:
            try:
                async with asyncio.timeout(self.publish_timeout_s):
                    await asyncio.gather(*(asyncio.shield(t) for t in waits))
            except (TimeoutError, KafkaError) as exc:
                raise BrokerUnavailable(
                    f"broker did not acknowledge: {type(exc).__name__}"
                ) from None
        return fresh

    @property
    def pending_deliveries(self) -> int:
        """Deliveries still under way (a timed-out request's delivery may still land)."""
        return len(self._inflight)

    async def _deliver(self, channel: Channel, event: Envelope) -> None:
        started = time.perf_counter()
        delivery = await self.publisher.send(event)
        await delivery
        self.recent.add(event.event_id)
        metrics.PUBLISH_SECONDS.labels(channel).observe(time.perf_counter() - started)
        metrics.EVENTS.labels(channel, event.type).inc()

    def _delivery_done(self, event_id: uuid.UUID) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._inflight.pop(event_id, None)
            if not task.cancelled() and task.exception() is not None:
                log.debug("delivery of %s failed: %r", event_id, task.exception())

        return done

    def audit_rejection(
        self,
        channel: str,
        rejection: Rejected,
        *,
        integration: Integration | None,
        integration_id: str | None,
        remote: str | None,
    ) -> None:
        """Write an audit event for a refused request, without delaying the answer."""
        event = AuditEvent(
            tenant_id=integration.tenant_id if integration else None,
            actor_type="platform",
            actor_id=channel,
            action="webhook.rejected",
            resource_type="channel_integration",
            resource_id=integration_id,
            ip_address=remote,
            metadata={"channel": channel, "reason": rejection.reason, "status": rejection.status},
        )
        task = asyncio.create_task(self._publish_audit(event))
        self._audit_tasks.add(task)
        task.add_done_callback(self._audit_tasks.discard)

    async def _publish_audit(self, event: AuditEvent) -> None:
        try:
            async with asyncio.timeout(self.publish_timeout_s * 2):
                await self.publisher.publish(event)
        except (TimeoutError, KafkaError) as exc:
            metrics.REJECTIONS.labels(event.metadata["channel"], "audit_unpublished").inc()
            log.warning("could not publish audit event for a rejection: %s", type(exc).__name__)

    async def drain(self) -> None:
        """Wait for deliveries and audit publications still under way (shutdown)."""
        pending = {*self._audit_tasks, *self._inflight.values()}
        if pending:
            await asyncio.wait(pending, timeout=self.publish_timeout_s * 2)


def now_utc() -> datetime:
    return utcnow()
