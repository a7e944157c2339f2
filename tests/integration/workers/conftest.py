"""Fixtures for worker roles: run a role in-process against this test's DB and topics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from services.workers.runtime import RoleSpec, run_role
from shared.events import Envelope, Topics
from shared.kafka import EventPublisher, create_producer
from shared.settings import Settings


@pytest.fixture
def worker_settings(ingress_settings: Settings) -> Settings:
    return ingress_settings.model_copy(
        update={"worker_linger_ms": 50, "worker_session_timeout_ms": 6000}
    )


@pytest.fixture
async def publish(
    worker_settings: Settings, topics: Topics
) -> AsyncIterator[Callable[..., object]]:
    """``await publish(*events)`` → every event acknowledged by the broker, in order."""
    producer = create_producer(worker_settings)
    await producer.start()
    publisher = EventPublisher(producer, topics)

    async def send(*events: Envelope) -> None:
        for event in events:
            await publisher.publish(event)

    yield send
    await producer.stop()


@pytest.fixture
async def raw_producer(worker_settings: Settings):
    producer = create_producer(worker_settings)
    await producer.start()
    yield producer
    await producer.stop()


@contextlib.asynccontextmanager
async def running(spec: RoleSpec, settings: Settings) -> AsyncIterator[None]:
    """A role member running in this event loop until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_role(spec, settings, stop=stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def wait_until(
    conn: asyncpg.Connection, query: str, expected: object, *args: object, timeout: float = 20.0
) -> object:
    """Poll ``query`` until it returns ``expected``; returns the last value seen."""
    deadline = asyncio.get_running_loop().time() + timeout
    value: object = None
    while asyncio.get_running_loop().time() < deadline:
        value = await conn.fetchval(query, *args)
        if value == expected:
            return value
        await asyncio.sleep(0.1)
    return value
