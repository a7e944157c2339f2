"""A short-lived cache of integrations, so a disable or rotation is noticed within seconds."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Protocol

from shared.errors import RetriableError
from shared.integrations import Integration


class IntegrationSource(Protocol):
    async def get(self, integration_id: uuid.UUID) -> Integration | None: ...


class IntegrationCache:
    """Entries live ``ttl_s`` seconds; while the database is down, stale entries are served."""

    def __init__(self, source: IntegrationSource, *, ttl_s: float) -> None:
        self._source = source
        self._ttl = ttl_s
        self._entries: dict[uuid.UUID, tuple[float, Integration | None]] = {}
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}

    async def get(self, integration_id: uuid.UUID) -> Integration | None:
        entry = self._entries.get(integration_id)
        if entry and time.monotonic() - entry[0] < self._ttl:
            return entry[1]
        lock = self._locks.setdefault(integration_id, asyncio.Lock())
        async with lock:  # one database lookup per id at a time
            entry = self._entries.get(integration_id)
            if entry and time.monotonic() - entry[0] < self._ttl:
                return entry[1]
            try:
                value = await self._source.get(integration_id)
            except RetriableError:
                if entry is not None:
                    return entry[1]
                raise
            if len(self._entries) > 100_000:
                self._entries.clear()
            self._entries[integration_id] = (time.monotonic(), value)
            return value
