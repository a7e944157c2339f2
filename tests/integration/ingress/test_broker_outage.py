"""Broker down: 503 with Retry-After in bounded time, nothing acknowledged that is not stored;
broker back: the platform's retry lands exactly one event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from telegram import Chat, Message, Update, User

from services.ingress.app import create_app
from services.ingress.webhooks import INGRESS
from services.stack.broker import EmbeddedBroker
from services.stack.processes import free_port
from shared.events import Topics
from shared.integrations import Integration
from shared.kafka import ensure_topics
from shared.settings import Settings
from tests.support import read_topic

SECRET = "outage-secret"


@pytest.fixture
async def own_broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    """A broker of this test's own, so it can be killed and brought back on the same port."""
    broker = EmbeddedBroker(tmp_path, port=free_port())
    await broker.start()
    yield broker
    await broker.stop()


def _update(update_id: int, message_id: int) -> bytes:
    message = Message(
        message_id=message_id,
        date=datetime(2026, 11, 21, tzinfo=UTC),
        chat=Chat(id=77, type=Chat.PRIVATE),
        from_user=User(id=77, is_bot=False, first_name="Grace"),
        text="hello?",
    )
    return orjson.dumps(Update(update_id=update_id, message=message).to_dict())


async def test_broker_outage_gives_503_then_exactly_one_event_per_message(
    ingress_settings: Settings, own_broker: EmbeddedBroker, make_integration, topics: Topics
) -> None:
    settings = ingress_settings.model_copy(
        update={
            "kafka_bootstrap_servers": own_broker.bootstrap_servers,
            "publish_timeout_s": 1.0,
        }
    )
    await ensure_topics(own_broker.bootstrap_servers, topics.all(), partitions=3)
    bot: Integration = await make_integration(
        "telegram", {"bot_token": "1:x", "secret_token": SECRET}
    )
    app = create_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = f"{str(server.make_url('')).rstrip('/')}/webhooks/telegram/{bot.id}"
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}

    async def deliver(body: bytes) -> tuple[int, str | None, float]:
        started = time.monotonic()
        async with ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
            return resp.status, resp.headers.get("Retry-After"), time.monotonic() - started

    try:
        assert (await deliver(_update(1, 100)))[0] == 200

        await own_broker.stop()
        down = await asyncio.gather(*(deliver(_update(10 + i, 200 + i)) for i in range(3)))
        for status, retry_after, took in down:
            assert status == 503
            assert retry_after is not None and int(retry_after) > 0
            assert took < 10, "the answer must come in bounded time, not hang"

        # The embedded broker comes back empty (memory only) and topics are recreated after
        # it starts; a delivery still trying when it returns could land before that and be
        # lost with the old topic. So it comes back once the failed deliveries gave up, as
        # a real broker outage that outlasts the producer's timeouts does.
        async with asyncio.timeout(30):
            while app[INGRESS].pending_deliveries:
                await asyncio.sleep(0.1)
        await own_broker.start()  # same port; the embedded broker starts empty
        await ensure_topics(own_broker.bootstrap_servers, topics.all(), partitions=3)
        # The platform retries each message (Telegram redelivers the same update).
        for i in range(3):
            for _ in range(30):
                status, _, _ = await deliver(_update(10 + i, 200 + i))
                if status == 200:
                    break
                await asyncio.sleep(0.5)
            assert status == 200
        # ... and retries once more, as platforms do when an answer was slow.
        assert (await deliver(_update(10, 200)))[0] == 200

        events = await read_topic(
            own_broker.bootstrap_servers, topics.inbound, expect=3, settle=1.5
        )
        assert sorted(e.external_id for e in events) == ["77:200", "77:201", "77:202"]
    finally:
        await server.close()
