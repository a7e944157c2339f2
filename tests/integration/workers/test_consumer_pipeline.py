"""The consumer loop's pipeline on the real broker: the next batch is prepared while
one is applied, applies stay one at a time and in order, and a batch behind one that
was left unstored is not committed either."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from services.workers.consumer import Handler, Item, Turn
from services.workers.runtime import RoleSpec, run_role
from shared.errors import RetriableError
from shared.events import MessageInbound
from shared.kafka import EventPublisher
from shared.settings import Settings

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def messages(n: int) -> list[MessageInbound]:
    """``n`` messages of one conversation: one partition, so batches share it."""
    tenant, integration = uuid.uuid4(), uuid.uuid4()
    return [
        MessageInbound(
            tenant_id=tenant,
            integration_id=integration,
            channel="widget",
            conversation_key="one",
            external_id=f"m{i}",
            sender_id="v",
            text=f"message {i}",
            sent_at=T0 + timedelta(seconds=i),
        )
        for i in range(n)
    ]


def role(name: str, handle: Handler) -> RoleSpec:
    @asynccontextmanager
    async def handler(_: Settings, __: EventPublisher) -> AsyncIterator[Handler]:
        yield handle

    return RoleSpec(name=name, topics=lambda t: (t.inbound,), handler=handler)


async def run_until(spec: RoleSpec, settings: Settings, done: asyncio.Event) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(run_role(spec, settings, stop=stop))
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_the_next_batch_is_prepared_during_an_apply_and_applies_after_it(
    worker_settings: Settings, publish
) -> None:
    events = messages(30)
    await publish(*events)
    log: list[tuple[str, int]] = []
    seen: list[uuid.UUID] = []
    all_seen = asyncio.Event()

    async def handle(items: Sequence[Item], turn: Turn) -> None:
        batch = items[0].record.offset
        log.append(("prepare", batch))
        await turn
        log.append(("apply", batch))
        await asyncio.sleep(0.2)  # a slow write: the loop goes on meanwhile
        seen.extend(i.event.event_id for i in items)
        log.append(("applied", batch))
        if len(seen) >= len(events):
            all_seen.set()

    settings = worker_settings.model_copy(update={"worker_batch_size": 4})
    await run_until(role("pipeline", handle), settings, all_seen)

    assert seen == [e.event_id for e in events]  # each once, in order
    applies = [entry for entry in log if entry[0] != "prepare"]
    assert [kind for kind, _ in applies] == ["apply", "applied"] * (len(applies) // 2)
    order = [batch for kind, batch in applies if kind == "apply"]
    assert order == sorted(order)
    # A batch was prepared while the one before it was being applied.
    open_apply = None
    overlapped = False
    for kind, batch in log:
        if kind == "apply":
            open_apply = batch
        elif kind == "applied":
            open_apply = None
        elif open_apply is not None and batch > open_apply:
            overlapped = True
    assert overlapped, log


async def test_a_batch_behind_an_unstored_one_is_not_committed(
    worker_settings: Settings, publish
) -> None:
    events = messages(12)
    await publish(*events)
    settings = worker_settings.model_copy(update={"worker_batch_size": 4})
    prepared: list[int] = []
    second_waits = asyncio.Event()

    async def database_away(items: Sequence[Item], turn: Turn) -> None:
        batch = items[0].record.offset
        if batch not in prepared:
            prepared.append(batch)
        if len(prepared) >= 2:
            second_waits.set()
        await turn
        raise RetriableError("database unavailable")  # never stored

    # Stop once the second batch is prepared and waits behind the first.
    await run_until(role("abandon", database_away), settings, second_waits)
    assert prepared[0] == 0 and len(prepared) >= 2

    # Nothing was committed: the same group reads every record again.
    again: list[uuid.UUID] = []
    all_again = asyncio.Event()

    async def store(items: Sequence[Item], turn: Turn) -> None:
        await turn
        again.extend(i.event.event_id for i in items)
        if len(again) >= len(events):
            all_again.set()

    await run_until(role("abandon", store), settings, all_again)
    assert again == [e.event_id for e in events]
