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
from collections.abc import Mapping, Sequence
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
        self._inflight: dict[uuid.UUID, asyncio.Future[None]] = {}

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

        A redelivery that arrives while the first delivery is still being published
        waits for that publication instead of publishing again.
        """
        mine: list[Envelope] = []
        waits: list[asyncio.Future[None]] = []
        for event in events:
            if self.recent.seen(event.event_id):
                continue
            pending = self._inflight.get(event.event_id)
            if pending is not None:
                waits.append(pending)
            else:
                self._inflight[event.event_id] = asyncio.get_running_loop().create_future()
                mine.append(event)
        if len(mine) < len(events):
            metrics.DUPLICATES.labels(channel).inc(len(events) - len(mine))
        try:
            await self._publish_owned(channel, mine)
        finally:
            for event in mine:
                future = self._inflight.pop(event.event_id)
                if self.recent.seen(event.event_id):
                    future.set_result(None)
                else:
                    future.set_exception(BrokerUnavailable("the first delivery failed"))
                    future.exception()  # mark retrieved; waiters re-raise it themselves
        if waits:
            try:
                async with asyncio.timeout(self.publish_timeout_s):
                    await asyncio.gather(*(asyncio.shield(w) for w in waits))
            except TimeoutError:
                raise BrokerUnavailable("first delivery still unacknowledged") from None
        return len(mine)

    async def _publish_owned(self, channel: Channel, events: Sequence[Envelope]) -> None:
        if not events:
            return
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.publish_timeout_s):
                await asyncio.gather(*(self.publisher.publish(e) for e in events))
        except (TimeoutError, KafkaError) as exc:
            raise BrokerUnavailable(f"broker did not acknowledge: {type(exc).__name__}") from None
        metrics.PUBLISH_SECONDS.labels(channel).observe(time.perf_counter() - started)
        for e in events:
            self.recent.add(e.event_id)
            metrics.EVENTS.labels(channel, e.type).inc()

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
        """Wait for pending audit publications (shutdown)."""
        if self._audit_tasks:
            await asyncio.wait(self._audit_tasks, timeout=self.publish_timeout_s * 2)


def now_utc() -> datetime:
    return utcnow()
