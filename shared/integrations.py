"""Tenants and channel integrations: what each channel's credentials hold, and their storage.

Credentials are encrypted with :class:`shared.crypto.CredentialCipher` before they
reach the database and decrypted only into :class:`Integration` objects in memory.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from shared.crypto import CredentialCipher
from shared.db.pool import CONNECTION_ERRORS
from shared.errors import RejectError, RetriableError, SwitchboardError
from shared.events import Channel

#: Credential keys each channel requires (all values are strings).
REQUIRED_CREDENTIALS: dict[str, tuple[str, ...]] = {
    "telegram": ("bot_token", "secret_token"),
    "slack": ("signing_secret", "bot_token"),
    "whatsapp": ("app_secret", "verify_token", "access_token", "phone_number_id"),
    "widget": ("allowed_origins",),
}
#: Optional credential keys (e.g. Slack's own app/bot ids, to ignore our own messages).
OPTIONAL_CREDENTIALS: dict[str, tuple[str, ...]] = {
    "telegram": (),
    "slack": ("app_id", "bot_user_id", "bot_id"),
    "whatsapp": (),
    "widget": (),
}
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


class NotFound(SwitchboardError):
    """The tenant or integration does not exist (or is deleted)."""


class InvalidInput(RejectError):
    """An operator's input is invalid; nothing was changed."""


class Tenant(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    name: str
    slug: str


class Integration(BaseModel):
    """An integration with its credentials decrypted; never log or serialize it whole."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    tenant_id: uuid.UUID
    channel: Channel
    name: str
    status: str
    credentials: dict[str, str] = Field(repr=False, exclude=True)
    settings: dict[str, Any] = Field(default_factory=dict)
    updated_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def webhook_path(self) -> str:
        return webhook_path(self.channel, self.id)

    def public(self) -> dict[str, Any]:
        """What an operator may see: everything but the credentials' values."""
        return {
            "id": str(self.id),
            "tenant_id": str(self.tenant_id),
            "channel": self.channel,
            "name": self.name,
            "status": self.status,
            "webhook_path": self.webhook_path,
            "credential_keys": sorted(self.credentials),
        }


def webhook_path(channel: str, integration_id: uuid.UUID) -> str:
    """Where the platform must send its webhooks for this integration."""
    if channel == "widget":
        return f"/widget/{integration_id}/"
    return f"/webhooks/{channel}/{integration_id}"


def validate_credentials(channel: str, credentials: dict[str, str]) -> dict[str, str]:
    """Check a channel's credential keys; the error names keys, never values."""
    if channel not in REQUIRED_CREDENTIALS:
        raise InvalidInput(
            f"unknown channel {channel!r} (one of {', '.join(REQUIRED_CREDENTIALS)})"
        )
    required, optional = REQUIRED_CREDENTIALS[channel], OPTIONAL_CREDENTIALS[channel]
    missing = [k for k in required if not credentials.get(k, "").strip()]
    unknown = sorted(set(credentials) - set(required) - set(optional))
    if missing:
        raise InvalidInput(f"{channel} needs credential(s): {', '.join(missing)}")
    if unknown:
        raise InvalidInput(f"{channel} does not take credential(s): {', '.join(unknown)}")
    if channel == "widget":
        for origin in split_origins(credentials["allowed_origins"]):
            if not re.match(r"^https?://[^/\s]+$", origin):
                raise InvalidInput(f"allowed_origins entry {origin!r} is not scheme://host[:port]")
    return {k: v.strip() for k, v in credentials.items()}


def split_origins(value: str) -> list[str]:
    """The widget's allowed origins, from a comma-separated credential."""
    return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]


async def find_tenant(db: asyncpg.Pool | asyncpg.Connection, id_or_slug: str) -> Tenant:
    """A live tenant by id or slug; NotFound names what was asked for."""
    try:
        key: object = uuid.UUID(id_or_slug)
        where = "id = $1"
    except ValueError:
        key, where = id_or_slug, "slug = $1"
    row = await db.fetchrow(
        f"SELECT id, name, slug FROM tenants WHERE {where} AND deleted_at IS NULL", key
    )
    if row is None:
        raise NotFound(f"no tenant {id_or_slug!r}")
    return Tenant(**dict(row))


class IntegrationStore:
    """Tenants and integrations in PostgreSQL, acting as the cross-tenant worker role."""

    def __init__(self, pool: asyncpg.Pool, cipher: CredentialCipher) -> None:
        self._pool = pool
        self._cipher = cipher

    async def create_tenant(self, name: str, slug: str | None = None) -> Tenant:
        name = name.strip()
        slug = (slug or re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))[:63]
        if not name or len(name) > 200:
            raise InvalidInput("tenant name must be 1 to 200 characters")
        if not _SLUG.match(slug):
            raise InvalidInput(
                f"slug {slug!r} must be 2-63 lowercase letters, digits or '-', "
                "starting with a letter or digit"
            )
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO tenants (name, slug) VALUES ($1, $2) RETURNING id, name, slug",
                name,
                slug,
            )
        except asyncpg.UniqueViolationError:
            raise InvalidInput(f"a tenant with slug {slug!r} already exists") from None
        return Tenant(**dict(row))

    async def find_tenant(self, id_or_slug: str) -> Tenant:
        return await find_tenant(self._pool, id_or_slug)

    async def add_integration(
        self, tenant: Tenant, channel: str, credentials: dict[str, str], *, name: str | None = None
    ) -> Integration:
        credentials = validate_credentials(channel, credentials)
        integration_id = uuid.uuid4()
        blob = self._cipher.encrypt(credentials, bound_to=str(integration_id))
        row = await self._pool.fetchrow(
            "INSERT INTO channel_integrations (id, tenant_id, channel, name, "
            "credentials_encrypted, credentials_key_id) VALUES ($1, $2, $3, $4, $5, $6) "
            "RETURNING *",
            integration_id,
            tenant.id,
            channel,
            name or f"{tenant.slug} {channel}",
            blob,
            self._cipher.key_id,
        )
        return self._decode(row)

    async def get(self, integration_id: uuid.UUID) -> Integration | None:
        """One integration (of a live tenant); RetriableError while the database is away."""
        try:
            row = await self._pool.fetchrow(
                "SELECT i.* FROM channel_integrations i JOIN tenants t ON t.id = i.tenant_id "
                "WHERE i.id = $1 AND t.deleted_at IS NULL",
                integration_id,
                timeout=5,
            )
        except CONNECTION_ERRORS as exc:
            raise RetriableError(f"database unavailable: {type(exc).__name__}") from None
        return self._decode(row) if row else None

    async def list(self, tenant: Tenant | None = None) -> list[Integration]:
        rows = await self._pool.fetch(
            "SELECT * FROM channel_integrations WHERE ($1::uuid IS NULL OR tenant_id = $1) "
            "ORDER BY created_at",
            tenant.id if tenant else None,
        )
        return [self._decode(r) for r in rows]

    async def disable(self, integration_id: uuid.UUID) -> Integration:
        row = await self._pool.fetchrow(
            "UPDATE channel_integrations SET status = 'disabled', "
            "disabled_at = coalesce(disabled_at, now()) WHERE id = $1 RETURNING *",
            integration_id,
        )
        if row is None:
            raise NotFound(f"no integration {integration_id}")
        return self._decode(row)

    async def rotate(self, integration_id: uuid.UUID, changes: dict[str, str]) -> Integration:
        """Replace some credentials (the rest are kept); returns the updated integration."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM channel_integrations WHERE id = $1 FOR UPDATE", integration_id
            )
            if row is None:
                raise NotFound(f"no integration {integration_id}")
            current = self._decode(row)
            merged = validate_credentials(current.channel, {**current.credentials, **changes})
            row = await conn.fetchrow(
                "UPDATE channel_integrations SET credentials_encrypted = $2, "
                "credentials_key_id = $3, rotated_at = now() WHERE id = $1 RETURNING *",
                integration_id,
                self._cipher.encrypt(merged, bound_to=str(integration_id)),
                self._cipher.key_id,
            )
        return self._decode(row)

    async def changed_since(self, since: datetime | None) -> tuple[list[Integration], datetime]:
        """Integrations updated after ``since`` and the database's current time."""
        async with self._pool.acquire() as conn:
            now = await conn.fetchval("SELECT clock_timestamp()")
            rows = await conn.fetch(
                "SELECT * FROM channel_integrations WHERE $1::timestamptz IS NULL "
                "OR updated_at > $1 - interval '5 seconds'",
                since,
            )
        return [self._decode(r) for r in rows], now

    def _decode(self, row: asyncpg.Record) -> Integration:
        return Integration(
            id=row["id"],
            tenant_id=row["tenant_id"],
            channel=row["channel"],
            name=row["name"],
            status=row["status"],
            credentials=self._cipher.decrypt(
                bytes(row["credentials_encrypted"]), bound_to=str(row["id"])
            ),
            settings=row["settings"] or {},
            updated_at=row["updated_at"],
        )
