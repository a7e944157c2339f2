"""Batches aggregate changes in memory and writes them to PostgreSQL every few seconds.

The agents record the newest value of each window count and conversation; a flush
writes them all (one statement per table, a transaction each) and only forgets what
it wrote. A database outage keeps the values buffered and retries with backoff; when
the buffer is full the agents wait for it (backpressure on the stream). A row the
database refuses (unknown tenant or integration) is found by halving, logged, counted
and dropped, so it never blocks the others.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg

from services.workers.analytics import metrics
from services.workers.analytics.facts import WINDOW_S, Conversation, split_conversation_key
from services.workers.analytics.store import (
    FirstResponse,
    ResponseCandidate,
    WindowCount,
    apply_response_candidates,
    upsert_counts,
    upsert_first_responses,
)
from shared.db.pool import retriable_on_disconnect
from shared.errors import RetriableError

log = logging.getLogger(__name__)

R = TypeVar("R")
#: (tenant_id, channel, direction, window start in epoch seconds)
CountKey = tuple[str, str, str, float]
_CHUNK = 5000


def _ts(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


class Flusher:
    """The write-behind buffer between the faust agents and PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool, *, max_pending: int, max_backoff_s: float = 10.0):
        self._pool = pool
        self.max_pending = max_pending
        self.max_backoff_s = max_backoff_s
        self._counts: dict[CountKey, int] = {}
        self._conversations: dict[str, Conversation] = {}
        self._lock = asyncio.Lock()
        self.healthy = True

    @property
    def pending(self) -> int:
        return len(self._counts) + len(self._conversations)

    def count(self, key: CountKey, value: int) -> None:
        """Record a window's current count (a later call for the same window replaces it)."""
        if value > self._counts.get(key, -1):
            self._counts[key] = value

    def conversation(self, key: str, state: Conversation) -> None:
        """Record a conversation's current first-response state."""
        self._conversations[key] = state

    async def flush(self) -> None:
        """Write everything buffered once; on failure it stays buffered and the error is raised."""
        async with self._lock:
            counts, self._counts = self._counts, {}
            conversations, self._conversations = self._conversations, {}
            if not counts and not conversations:
                return
            started = time.perf_counter()
            try:
                async with retriable_on_disconnect(self._pool):
                    await self._write(counts, conversations)
            except BaseException:
                for key, value in counts.items():
                    self.count(key, value)
                for ckey, state in conversations.items():
                    self._conversations.setdefault(ckey, state)  # a newer state wins
                self.healthy = False
                raise
            self.healthy = True
            metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)

    async def flush_until_done(self) -> None:
        """Flush, retrying a retriable failure with backoff until it succeeds."""
        attempt = 0
        while True:
            try:
                await self.flush()
                return
            except RetriableError as exc:
                attempt += 1
                metrics.FLUSH_FAILURES.inc()
                delay = min(self.max_backoff_s, 0.2 * 2**attempt) * (0.5 + random.random())
                log.warning(
                    "analytics flush of %d rows failed (%s); retrying in %.1fs",
                    self.pending,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    async def when_full(self) -> None:
        """Called by the agents after each change: waits while the buffer is over its limit."""
        if self.pending >= self.max_pending:
            await self.flush_until_done()

    async def run(self, interval_s: float) -> None:
        """Flush every ``interval_s`` until cancelled; only non-retriable errors escape."""
        while True:
            await asyncio.sleep(interval_s)
            await self.flush_until_done()

    async def _write(
        self, counts: dict[CountKey, int], conversations: dict[str, Conversation]
    ) -> None:
        count_rows = [
            WindowCount(
                uuid.UUID(tenant), channel, direction, _ts(start), _ts(start + WINDOW_S), value
            )
            for (tenant, channel, direction, start), value in counts.items()
        ]
        responses: list[FirstResponse] = []
        candidates: list[ResponseCandidate] = []
        for key, state in conversations.items():
            tenant, integration, conversation = split_conversation_key(key)
            ids = (uuid.UUID(tenant), uuid.UUID(integration), conversation)
            if state.first_in is not None:
                responses.append(
                    FirstResponse(
                        *ids,
                        state.channel,
                        _ts(state.first_in / 1000),
                        None if state.first_out is None else _ts(state.first_out / 1000),
                    )
                )
            # Outbounds before the first inbound this member knows of may still answer an
            # earlier inbound that only the database has (state expired, or written elsewhere).
            candidates.extend(ResponseCandidate(*ids, _ts(t / 1000)) for t in state.early)
        await self._isolating("analytics_message_counts", count_rows, upsert_counts)
        await self._isolating("analytics_first_response", responses, upsert_first_responses)
        await self._isolating("analytics_first_response", candidates, apply_response_candidates)

    async def _isolating(
        self,
        table: str,
        rows: Sequence[R],
        write: Callable[[asyncpg.Connection, Sequence[R]], Awaitable[None]],
    ) -> None:
        for start in range(0, len(rows), _CHUNK):
            await self._write_or_split(table, rows[start : start + _CHUNK], write)

    async def _write_or_split(
        self,
        table: str,
        rows: Sequence[R],
        write: Callable[[asyncpg.Connection, Sequence[R]], Awaitable[None]],
    ) -> None:
        if not rows:
            return
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await write(conn, rows)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            if len(rows) == 1:
                metrics.ROWS_REJECTED.labels(table).inc()
                log.warning("%s: dropped a row the database refused (%s)", table, exc.sqlstate)
                return
            middle = len(rows) // 2
            await self._write_or_split(table, rows[:middle], write)
            await self._write_or_split(table, rows[middle:], write)
            return
        metrics.ROWS_WRITTEN.labels(table).inc(len(rows))
