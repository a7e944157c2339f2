"""Finding the one row the database refuses in a batch, so the rest is still stored."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from services.workers.consumer import Handler, Item, PoisonRecords

Writer = Callable[[Sequence[Item]], Awaitable[None]]


def isolating_rejects(write: Writer) -> Handler:
    """Wrap a batch writer: on a data or constraint error, halve the batch until the
    refused records are alone, dead-letter those and store the rest (order is kept)."""

    async def handle(items: Sequence[Item]) -> None:
        try:
            await write(items)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            if len(items) == 1:
                raise PoisonRecords(items, f"rejected by the database: {exc.sqlstate}") from None
            middle = len(items) // 2
            await handle(items[:middle])
            await handle(items[middle:])

    return handle
