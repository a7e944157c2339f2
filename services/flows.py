"""Operator actions on conversation flows: import a version, activate it, list them.

A flow is validated before anything is stored (unknown targets, unreachable nodes, a
missing start, loops that never wait for input: every problem listed with its path).
Each import stores a new version as a draft; activating a version archives the
tenant's previously active one, and the agent picks the new one up on its next batch.
Every change is an audit event.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from services.admin import audit_operator_action
from services.workers.agent.flow import FlowInvalid, lint_flow
from shared.db.pool import tenant_transaction
from shared.integrations import InvalidInput, NotFound, find_tenant
from shared.kafka import EventPublisher


def read_definition(path: Path) -> dict[str, Any]:
    """The flow JSON in ``path``; a clear error when it is not a JSON object."""
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: a flow is a JSON object with start_node and nodes")
    return data


class FlowAdmin:
    """Stores flow versions for a tenant and records who changed what."""

    def __init__(self, pool: asyncpg.Pool, publisher: EventPublisher, *, actor_id: str) -> None:
        self._pool = pool
        self._publisher = publisher
        self._actor = actor_id

    async def import_flow(
        self, tenant_ref: str, definition: dict[str, Any], *, name: str, activate: bool = False
    ) -> dict[str, Any]:
        """Validate and store ``definition`` as the next version of flow ``name``."""
        report = lint_flow(definition)
        if report.errors:
            raise FlowInvalid(report.errors)
        name = name.strip()
        if not 1 <= len(name) <= 200:
            raise InvalidInput("a flow name is 1 to 200 characters")
        tenant = await find_tenant(self._pool, tenant_ref)
        async with self._pool.acquire() as conn, tenant_transaction(conn, tenant.id) as tx:
            # Versions of one name are numbered under a lock, so two imports never clash.
            await tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{tenant.id}:{name}")
            version = await tx.fetchval(
                "SELECT coalesce(max(version), 0) + 1 FROM conversation_flows WHERE name = $1",
                name,
            )
            flow_id = await tx.fetchval(
                """
                INSERT INTO conversation_flows (tenant_id, name, version, definition,
                                                variable_definitions)
                VALUES ($1, $2, $3, $4, $5) RETURNING id
                """,
                tenant.id,
                name,
                version,
                definition,
                definition.get("variables") or {},
            )
            if activate:
                await self._activate(tx, flow_id)
        await self._audit(
            tenant.id, "flow.imported", flow_id, name=name, version=version, activated=activate
        )
        return {
            "id": str(flow_id),
            "tenant_id": str(tenant.id),
            "name": name,
            "version": version,
            "status": "active" if activate else "draft",
            "warnings": [str(w) for w in report.warnings],
        }

    async def activate(
        self, tenant_ref: str, name: str, version: int | None = None
    ) -> dict[str, Any]:
        """Make one version (the newest when not given) the tenant's active flow."""
        tenant = await find_tenant(self._pool, tenant_ref)
        async with self._pool.acquire() as conn, tenant_transaction(conn, tenant.id) as tx:
            row = await tx.fetchrow(
                """
                SELECT id, version FROM conversation_flows
                WHERE name = $1 AND ($2::int IS NULL OR version = $2)
                ORDER BY version DESC LIMIT 1
                """,
                name,
                version,
            )
            if row is None:
                what = f"version {version} of flow" if version else "flow"
                raise NotFound(f"no {what} {name!r} for tenant {tenant.slug}")
            await self._activate(tx, row["id"])
        await self._audit(tenant.id, "flow.activated", row["id"], name=name, version=row["version"])
        return {"id": str(row["id"]), "name": name, "version": row["version"], "status": "active"}

    async def list(self, tenant_ref: str) -> list[dict[str, Any]]:
        tenant = await find_tenant(self._pool, tenant_ref)
        async with self._pool.acquire() as conn, tenant_transaction(conn, tenant.id) as tx:
            rows = await tx.fetch(
                """
                SELECT id, name, version, status, created_at, activated_at
                FROM conversation_flows ORDER BY name, version
                """
            )
        return [
            {
                "id": str(r["id"]),
                "name": r["name"],
                "version": r["version"],
                "status": r["status"],
                "created_at": r["created_at"].isoformat(),
                "activated_at": r["activated_at"].isoformat() if r["activated_at"] else None,
            }
            for r in rows
        ]

    @staticmethod
    async def _activate(tx: asyncpg.Connection, flow_id: uuid.UUID) -> None:
        await tx.execute(
            "UPDATE conversation_flows SET status = 'archived' "
            "WHERE status = 'active' AND id <> $1",
            flow_id,
        )
        await tx.execute(
            """
            UPDATE conversation_flows SET status = 'active', activated_at = now()
            WHERE id = $1 AND status <> 'active'
            """,
            flow_id,
        )

    async def _audit(
        self, tenant_id: uuid.UUID, action: str, flow_id: uuid.UUID, **metadata: Any
    ) -> None:
        await audit_operator_action(
            self._publisher,
            self._actor,
            tenant_id,
            action,
            "conversation_flow",
            flow_id,
            **metadata,
        )
