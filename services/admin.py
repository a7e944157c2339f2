"""Operator actions on tenants and integrations, each recorded as an audit event."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from shared.db.pool import create_pool
from shared.events import AuditEvent, Topics
from shared.integrations import IntegrationStore
from shared.kafka import EventPublisher, create_producer
from shared.settings import Settings


@contextlib.asynccontextmanager
async def operator_session(
    settings: Settings, *, actor_id: str
) -> AsyncIterator[tuple[asyncpg.Pool, EventPublisher, str]]:
    """(pool, audit publisher, actor id) for one operator command; closed on exit."""
    pool = await create_pool(settings.require_database_url(), min_size=1, max_size=2)
    producer = create_producer(settings)
    try:
        await producer.start()
        yield pool, EventPublisher(producer, Topics(settings.topic_prefix)), actor_id
    finally:
        await producer.stop()
        await pool.close()


async def audit_operator_action(
    publisher: EventPublisher,
    actor_id: str,
    tenant_id: uuid.UUID | None,
    action: str,
    resource_type: str,
    resource_id: uuid.UUID,
    **metadata: Any,
) -> None:
    """Publish what an operator did (never a credential value)."""
    await publisher.publish(
        AuditEvent(
            tenant_id=tenant_id,
            actor_type="operator",
            actor_id=actor_id,
            action=action,
            resource_type=resource_type,
            resource_id=str(resource_id),
            metadata=metadata,
        )
    )


class Admin:
    """Changes the store, then publishes what changed (never credential values)."""

    def __init__(
        self, store: IntegrationStore, publisher: EventPublisher, *, actor_id: str
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._actor = actor_id

    async def _audit(
        self,
        tenant_id: uuid.UUID | None,
        action: str,
        resource_type: str,
        resource_id: uuid.UUID,
        **metadata: Any,
    ) -> None:
        await audit_operator_action(
            self._publisher, self._actor, tenant_id, action, resource_type, resource_id, **metadata
        )

    async def create_tenant(self, name: str, slug: str | None) -> dict[str, Any]:
        tenant = await self._store.create_tenant(name, slug)
        await self._audit(tenant.id, "tenant.created", "tenant", tenant.id, slug=tenant.slug)
        return {"id": str(tenant.id), "slug": tenant.slug, "name": tenant.name}

    async def add_integration(
        self, tenant_ref: str, channel: str, credentials: dict[str, str], name: str | None
    ) -> dict[str, Any]:
        tenant = await self._store.find_tenant(tenant_ref)
        integration = await self._store.add_integration(tenant, channel, credentials, name=name)
        await self._audit(
            tenant.id,
            "integration.created",
            "channel_integration",
            integration.id,
            channel=channel,
            credential_keys=sorted(integration.credentials),
        )
        return {
            "id": str(integration.id),
            "channel": integration.channel,
            "webhook_path": integration.webhook_path,
            "tenant_id": str(tenant.id),
        }

    async def list_integrations(self, tenant_ref: str | None) -> list[dict[str, Any]]:
        tenant = await self._store.find_tenant(tenant_ref) if tenant_ref else None
        return [i.public() for i in await self._store.list(tenant)]

    async def disable(self, integration_id: uuid.UUID) -> dict[str, Any]:
        integration = await self._store.disable(integration_id)
        await self._audit(
            integration.tenant_id,
            "integration.disabled",
            "channel_integration",
            integration.id,
            channel=integration.channel,
        )
        return integration.public()

    async def rotate(
        self, integration_id: uuid.UUID, credentials: dict[str, str]
    ) -> dict[str, Any]:
        integration = await self._store.rotate(integration_id, credentials)
        await self._audit(
            integration.tenant_id,
            "integration.rotated",
            "channel_integration",
            integration.id,
            channel=integration.channel,
            rotated_keys=sorted(credentials),
        )
        return integration.public()
