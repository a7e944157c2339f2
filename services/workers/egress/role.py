"""The ``egress`` role: outbound replies to the platforms, paced, retried, in order, reported.

Consumes  ``messages.outbound`` (group ``<prefix>egress``) and the retry tiers
          ``messages.outbound.retry.0..2`` (groups ``<prefix>egress-retry-0..2``).
Produces  ``messages.status``: one MessageStatus per attempt (``sent`` with the
          platform's message id, ``queued`` with an error while a retry is scheduled,
          ``failed``); ``messages.outbound.retry.N``: messages to try again or parked
          behind an earlier one; ``dlq``: messages that failed for good (DeadLetter with
          the reason and the source record); ``widget.replies``: widget replies, for the
          ingress process that holds the visitor's socket.
Writes    ``egress_deliveries``: the idempotency record and per-conversation order guard.

Each member runs four consumer loops (outbound + one per retry tier) that share one
database pool, one set of platform clients and one set of rate limits. In a batch,
each conversation's messages are handled one after the other in offset order and
different conversations concurrently. A message goes out only while no earlier
message of its conversation waits for a retry; otherwise it is parked in the retry
tier that falls due just after that one (no attempt counted). A transient failure
(5xx, timeout, 429) is retried through the tiers with exponential backoff and jitter,
never sooner than the platform's Retry-After, until ``egress_max_attempts``; a
permanent one (4xx: blocked bot, unknown chat, invalid recipient; an unknown or
disabled integration) is final at once. Every outcome is written to the message's row
first and then published; a redelivered record finds the row and sends nothing again
(it republishes the outcome's events only if they had not been published yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from services.ingress.registry import IntegrationCache
from services.workers import metrics as worker_metrics
from services.workers.consumer import Handler, Item, PoisonRecords, dead_letter_of, in_turn
from services.workers.egress import metrics
from services.workers.egress.clients import EgressClients, open_clients
from services.workers.egress.outcome import Delivered, Outcome, Permanent, Retry
from services.workers.egress.ratelimits import EgressLimits
from services.workers.egress.retry import (
    backoff_s,
    due_of,
    not_before_header,
    park_until,
    tier_for,
)
from services.workers.egress.store import Delivery, DeliveryStore, Locked
from services.workers.runtime import RoleSpec, run_instances, run_role
from shared.crypto import CredentialCipher, CredentialsUnreadable
from shared.db.pool import create_pool, retriable_on_disconnect
from shared.events import (
    MessageOutbound,
    MessageStatus,
    StatusError,
    Topics,
    derive_event_id,
    utcnow,
)
from shared.events.models import DeliveryStatus
from shared.events.topics import RETRY_TIERS
from shared.integrations import Integration, IntegrationStore
from shared.kafka import EventPublisher
from shared.settings import Settings

log = logging.getLogger(__name__)

ROLE = "egress"

Action = Literal["attempt", "report", "skip"]


def loop_name(tier: int | None) -> str:
    """The consumer loop's role label; its group is ``<consumer_group_prefix><name>``."""
    return ROLE if tier is None else f"{ROLE}-retry-{tier}"


def decide(row: Delivery, attempt: int) -> Action:
    """What a record with ``attempt`` earlier attempts does, given its message's row.

    ``report``: the outcome is written but its events may not have been published (a
    crash in between), so publish them; ``attempt``: the message is due for a try (or
    to be parked); ``skip``: handled already, or the record is superseded by a newer one.
    """
    if row.final:
        return "skip" if row.reported else "report"
    if row.status == "retrying" and not row.reported and attempt == row.attempts - 1:
        return "report"
    return "attempt" if attempt >= row.attempts else "skip"


@dataclass(frozen=True)
class Egress:
    """What a member's loops share: settings, the deliveries store, integrations,
    platform clients and rate limits."""

    settings: Settings
    topics: Topics
    store: DeliveryStore
    integrations: IntegrationCache
    clients: EgressClients
    limits: EgressLimits


@asynccontextmanager
async def open_egress(settings: Settings) -> AsyncIterator[Egress]:
    """A member's shared resources; closed on exit."""
    cipher = CredentialCipher(settings.require_secret_key())
    pool = await create_pool(
        settings.require_database_url(), min_size=1, max_size=max(4, settings.db_pool_max)
    )
    try:
        async with open_clients(settings) as clients:
            yield Egress(
                settings=settings,
                topics=Topics(settings.topic_prefix),
                # A blocker this overdue lost its retry record (see DeliveryStore).
                store=DeliveryStore(
                    pool, stale_blocker_s=max(900.0, 10 * max(settings.egress_retry_delays_s))
                ),
                integrations=IntegrationCache(
                    IntegrationStore(pool, cipher), ttl_s=settings.integration_cache_ttl_s
                ),
                clients=clients,
                limits=EgressLimits(settings),
            )
    finally:
        await pool.close()


@dataclass
class EgressLoop:
    """One consumer loop of a member: the outbound topic (``tier`` None) or a retry tier."""

    egress: Egress
    publisher: EventPublisher
    name: str
    group_id: str
    tier: int | None
    stop: asyncio.Event

    @property
    def _settings(self) -> Settings:
        return self.egress.settings

    async def handle(self, items: Sequence[Item]) -> None:
        """Conversations concurrently, each one's messages in offset order."""
        foreign = [i for i in items if not isinstance(i.event, MessageOutbound)]
        if foreign:
            raise PoisonRecords(foreign, "not a message.outbound event")
        conversations: dict[tuple[uuid.UUID, uuid.UUID, str], list[Item]] = {}
        for item in items:
            event = item.event
            assert isinstance(event, MessageOutbound)
            key = (event.tenant_id, event.integration_id, event.conversation_key)
            conversations.setdefault(key, []).append(item)
        results = await asyncio.gather(
            *(self._conversation(c) for c in conversations.values()), return_exceptions=True
        )
        # Conversations that finished are recorded; when the batch is retried their
        # messages are skipped, and the failed ones resume where they stopped.
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _conversation(self, items: list[Item]) -> None:
        for n, item in enumerate(items):
            if self.tier is not None and not await self._wait_until_due(item):
                for rest in items[n:]:  # stopping: the tier keeps them for the next member
                    await self.publisher.publish_to(
                        rest.record.topic, rest.event, headers=rest.record.headers or ()
                    )
                return
            await self._deliver(item)

    async def _wait_until_due(self, item: Item) -> bool:
        """Hold a retry record until it falls due; False if the member stops first."""
        due = due_of(item.record.headers)
        delay = (due - time.time()) if due is not None else 0.0
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
            return not self.stop.is_set()
        return True

    async def _deliver(self, item: Item) -> None:
        message = item.event
        assert isinstance(message, MessageOutbound)
        store = self.egress.store
        try:
            integration = await self.egress.integrations.get(message.integration_id)
        except CredentialsUnreadable:
            await self._reject(item, "credentials_unreadable", "integration credentials unreadable")
            return
        if integration is None or integration.tenant_id != message.tenant_id:
            await self._reject(item, "unknown_integration", "unknown integration for this tenant")
            return
        async with retriable_on_disconnect(store.pool):
            row = await store.prepare(message)
        paced = False
        while True:
            if not paced and decide(row, message.attempt) == "attempt" and not row.blocked_until:
                await self._wait_turn(integration, message)  # not while holding the row lock
                paced = True
            async with retriable_on_disconnect(store.pool), store.locked(message) as locked:
                row = locked.row
                action = decide(row, message.attempt)
                if action == "attempt":
                    if row.blocked_until is not None:
                        due = park_until(row.blocked_until.timestamp(), time.time(), self._delays)
                        row = await locked.parked(_at(due))
                        action = "park"  # type: ignore[assignment]
                    elif not paced:
                        continue  # unblocked since the first look: pace it first, unlocked
                    else:
                        row = await self._attempt(locked, integration)
                        action = "report"
            break
        if action == "skip":
            metrics.DUPLICATES.labels(message.channel).inc()
        elif action == "park":
            await self._to_tier(message, row, metric=metrics.PARKED)
        else:
            await self._report(item, row)

    @property
    def _delays(self) -> tuple[float, ...]:
        return tuple(self._settings.egress_retry_delays_s)

    async def _wait_turn(self, integration: Integration, message: MessageOutbound) -> None:
        waited = await self.egress.limits.wait_turn(integration, message)
        metrics.RATE_LIMIT_WAIT_SECONDS.labels(message.channel).observe(waited)

    async def _attempt(self, locked: Locked, integration: Integration) -> Delivery:
        """One try under the row lock, its outcome written to the row."""
        message = locked.message
        attempts = locked.row.attempts + 1
        outcome = await self._send(message, integration)
        if isinstance(outcome, Delivered):
            metrics.ATTEMPTS.labels(message.channel, "delivered").inc()
            return await locked.delivered(attempts, outcome.platform_message_id)
        if isinstance(outcome, Permanent):
            metrics.ATTEMPTS.labels(message.channel, "permanent").inc()
            metrics.FAILED.labels(message.channel, "permanent").inc()
            log.warning(
                "egress: message %s failed for good on %s: %s %s",
                message.message_id,
                message.channel,
                outcome.code,
                outcome.reason,
            )
            return await locked.failed(attempts, outcome.code, outcome.reason)
        metrics.ATTEMPTS.labels(message.channel, "retry").inc()
        if outcome.retry_after_s:
            self.egress.limits.pause(integration, outcome.retry_after_s)
        code = "rate_limited" if outcome.retry_after_s is not None else "transient"
        if attempts >= self._settings.egress_max_attempts:
            metrics.FAILED.labels(message.channel, "retries_exhausted").inc()
            return await locked.failed(
                attempts,
                "retries_exhausted",
                f"gave up after {attempts} attempts; last: {code}: {outcome.reason}",
            )
        wait = backoff_s(attempts, self._delays, retry_after_s=outcome.retry_after_s)
        return await locked.retrying(attempts, _at(time.time() + wait), code, outcome.reason)

    async def _send(self, message: MessageOutbound, integration: Integration) -> Outcome:
        if not integration.active:
            return Permanent("integration_disabled", "the integration is disabled")
        if integration.channel != message.channel:
            return Permanent(
                "channel_mismatch",
                f"message for {message.channel} but the integration is {integration.channel}",
            )
        timeout = self._settings.egress_http_timeout_s * 2  # the clients' own timeouts first
        started = time.perf_counter()
        try:
            if integration.channel == "widget":
                # The ingress holding the visitor's socket pushes it; a broker failure
                # raises (the batch is retried), as a failed status could not be sent either.
                await self.publisher.publish_to(self.egress.topics.widget_replies, message)
                return Delivered(message.message_id)
            return await asyncio.wait_for(self.egress.clients.send(message, integration), timeout)
        except TimeoutError:
            return Retry(f"no answer from {integration.channel} within {timeout:.0f}s")
        except Exception as exc:  # a sender bug must not block the conversation forever
            if integration.channel == "widget":
                raise
            log.exception("egress: %s sender raised", integration.channel)
            return Retry(f"unexpected {type(exc).__name__} in the {integration.channel} sender")
        finally:
            metrics.SEND_SECONDS.labels(message.channel).observe(time.perf_counter() - started)

    async def _report(self, item: Item, row: Delivery) -> None:
        """Publish a written outcome's events, then note that they are published."""
        message = item.event
        assert isinstance(message, MessageOutbound)
        if row.status == "delivered":
            await self.publisher.publish(_status(message, row, "sent"))
        elif row.status == "failed":
            error = StatusError(code=row.last_error_code or "failed", title=row.last_error)
            kind = "retries_exhausted" if error.code == "retries_exhausted" else "permanent"
            await self._dead_letter(item, f"{error.code}: {error.title}", kind)
            await self.publisher.publish(_status(message, row, "failed", error))
        elif row.status == "retrying":
            await self._to_tier(message, row, metric=metrics.RETRIES_SCHEDULED)
            detail = (
                f"attempt {row.attempts} of {self._settings.egress_max_attempts} failed; "
                f"next attempt at {row.next_attempt_at.isoformat() if row.next_attempt_at else '?'}"
            )
            error = StatusError(
                code=row.last_error_code or "transient", title=row.last_error, detail=detail
            )
            await self.publisher.publish(_status(message, row, "queued", error))
        async with retriable_on_disconnect(self.egress.store.pool):
            await self.egress.store.mark_reported(message, row)

    async def _to_tier(self, message: MessageOutbound, row: Delivery, *, metric: object) -> None:
        """Publish the message to the retry tier that covers its wait, due at next_attempt_at."""
        assert row.next_attempt_at is not None
        due = row.next_attempt_at.timestamp()
        tier = tier_for(due - time.time(), self._delays)
        record = message.model_copy(update={"attempt": row.attempts})
        await self.publisher.publish_to(
            self.egress.topics.outbound_retry(tier), record, headers=[not_before_header(due)]
        )
        metric.labels(str(tier)).inc()  # type: ignore[attr-defined]

    async def _reject(self, item: Item, code: str, reason: str) -> None:
        """A message that cannot even be looked at (no usable integration): final at once."""
        message = item.event
        assert isinstance(message, MessageOutbound)
        metrics.FAILED.labels(message.channel, code).inc()
        await self._dead_letter(item, f"{code}: {reason}", code)
        failed = MessageStatus(
            event_id=derive_event_id("egress.status", message.tenant_id, message.event_id, code),
            tenant_id=message.tenant_id,
            integration_id=message.integration_id,
            channel=message.channel,
            conversation_key=message.conversation_key,
            message_id=message.message_id,
            recipient_id=message.recipient_id,
            status="failed",
            status_at=utcnow(),
            attempt=message.attempt,
            errors=(StatusError(code=code, title=reason),),
        )
        await self.publisher.publish(failed)

    async def _dead_letter(self, item: Item, reason: str, kind: str) -> None:
        letter = dead_letter_of(item.record, reason, kind=kind, consumer_group=self.group_id)
        await self.publisher.publish(letter)
        worker_metrics.DEAD_LETTERED.labels(self.name, item.record.topic, kind).inc()


def _at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _status(
    message: MessageOutbound, row: Delivery, status: DeliveryStatus, *errors: StatusError
) -> MessageStatus:
    """The status event of a written outcome; its id is derived from the outcome, so an
    outcome published again (after a crash) carries the same event id."""
    return MessageStatus(
        event_id=derive_event_id(
            "egress.status",
            message.tenant_id,
            message.integration_id,
            message.message_id,
            status,
            row.attempts,
        ),
        tenant_id=message.tenant_id,
        integration_id=message.integration_id,
        channel=message.channel,
        conversation_key=message.conversation_key,
        message_id=message.message_id,
        platform_message_id=row.platform_message_id,
        recipient_id=message.recipient_id,
        status=status,
        status_at=utcnow(),
        attempt=row.attempts,
        errors=errors,
    )


def loop_spec(egress: Egress, tier: int | None, stop: asyncio.Event) -> RoleSpec:
    """The RoleSpec of one loop, whose handler uses the member's shared resources."""
    name = loop_name(tier)

    def topics(t: Topics) -> Sequence[str]:
        return (t.outbound,) if tier is None else (t.outbound_retry(tier),)

    @asynccontextmanager
    async def handler(settings: Settings, publisher: EventPublisher) -> AsyncIterator[Handler]:
        group_id = f"{settings.consumer_group_prefix}{name}"
        yield in_turn(EgressLoop(egress, publisher, name, group_id, tier, stop).handle)

    # The outbound loop is on a chat reply's path (someone is waiting): small batches.
    return RoleSpec(name=name, topics=topics, handler=handler, latency_sensitive=tier is None)


async def run_member(settings: Settings, stop: asyncio.Event) -> None:
    """One member: the outbound loop and one loop per retry tier, until ``stop``.

    Only the outbound loop serves the ops endpoints (when a port is set).
    """
    async with open_egress(settings) as egress:
        quiet = settings.model_copy(update={"worker_http_port": None})
        tiers: list[int | None] = [None, *range(RETRY_TIERS)]
        async with asyncio.TaskGroup() as group:
            for tier in tiers:
                spec = loop_spec(egress, tier, stop)
                group.create_task(run_role(spec, settings if tier is None else quiet, stop=stop))


@dataclass(frozen=True)
class EgressRole:
    """The egress role as ``switchboard worker egress`` and ``up`` run it (its own
    ``run_members``, since each member runs several consumer loops)."""

    name: str = ROLE

    def group_ids(self, settings: Settings) -> list[str]:
        tiers: list[int | None] = [None, *range(RETRY_TIERS)]
        return [f"{settings.consumer_group_prefix}{loop_name(t)}" for t in tiers]

    def run_members(self, settings: Settings, *, instances: int = 1) -> int:
        """Blocking: ``instances`` members in this process until SIGTERM/SIGINT."""
        return run_instances(run_member, settings, instances=instances)


EGRESS = EgressRole()
