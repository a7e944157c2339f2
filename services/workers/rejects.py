"""Finding the one row the database refuses in a batch, so the rest is still stored."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from services.workers.consumer import Handler, Item, PoisonRecords, Turn


def isolating_rejects(write: Handler) -> Handler:
    """Wrap a batch writer: on a data or constraint error, halve the batch until the
    refused records are alone, dead-letter those and store the rest (order is kept)."""

    async def handle(items: Sequence[Item], turn: Turn) -> None:
        try:
            await write(items, turn)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            if len(items) == 1:
                raise PoisonRecords(items, f"rejected by the database: {exc.sqlstate}") from None
            middle = len(items) // 2
            await handle(items[:middle], turn)
            await handle(items[middle:], turn)

    return handle
