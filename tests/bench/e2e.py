"""Webhook in to reply delivered, at a fixed offered rate, through the whole loop.

A Telegram webhook (as Telegram sends it) goes to the real ingress; the agent answers
from the demo flow; egress sends the reply with python-telegram-bot to a local stand-in
of the Bot API. Latency is from the moment the webhook request is sent to the moment
the stand-in receives ``sendMessage`` for that chat. Every message is a different chat,
so Telegram's 1 message/s per chat limit never paces the figure.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from services.ingress.app import create_app
from services.workers.agent.role import AGENT
from services.workers.egress.role import run_member as run_egress
from services.workers.runtime import run_role
from shared.crypto import CredentialCipher, new_key, parse_key
from shared.db.pool import create_pool
from shared.integrations import IntegrationStore
from shared.settings import Settings
from tests.bench.stack import own_topics
from tests.standins import TelegramStandin
from tests.support import activate_demo_flow

RATE_PER_S = 20
MESSAGES = 300
TOKEN = "4242:bench-token"
SECRET = "bench-secret"


def _update(n: int) -> dict[str, object]:
    chat = 700_000 + n
    return {
        "update_id": n,
        "message": {
            "message_id": 1,
            "date": int(time.time()),
            "text": "hi",
            "chat": {"id": chat, "type": "private"},
            "from": {"id": chat, "is_bot": False, "first_name": "Bench"},
        },
    }


async def _setup(settings: Settings) -> str:
    """A tenant with a Telegram bot and the demo flow active; the bot's webhook path."""
    pool = await create_pool(settings.require_database_url(), min_size=1, max_size=1)
    try:
        store = IntegrationStore(pool, CredentialCipher(settings.require_secret_key()))
        tenant = await store.create_tenant("Bench bot", f"bench-{uuid.uuid4().hex[:8]}")
        bot = await store.add_integration(
            tenant, "telegram", {"bot_token": TOKEN, "secret_token": SECRET}
        )
    finally:
        await pool.close()
    await activate_demo_flow(settings, tenant.id)
    return bot.webhook_path


async def webhook_to_reply(settings: Settings) -> dict[str, float]:
    standin = TelegramStandin(tokens={TOKEN})
    settings, _ = await own_topics(settings, "e2e")
    async with standin.running():
        settings = settings.model_copy(
            update={
                "secret_key": SecretStr(new_key()),
                "telegram_api_base": standin.url,
                "consumer_group_prefix": f"bench-e2e-{uuid.uuid4().hex[:6]}-",
                "worker_http_port": None,
            }
        )
        parse_key(settings.secret_key.get_secret_value())  # type: ignore[union-attr]
        path = await _setup(settings)
        runner = web.AppRunner(create_app(settings))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}{path}"
        stop = asyncio.Event()
        workers = [
            asyncio.create_task(run_role(AGENT, settings, stop=stop)),
            asyncio.create_task(run_egress(settings, stop)),
        ]
        sent: dict[str, float] = {}
        received: dict[str, float] = {}

        async def watch() -> None:
            seen = 0
            while True:
                now = time.perf_counter()
                for r in standin.requests[seen:]:
                    chat = str(r.body.get("chat_id"))
                    received.setdefault(chat, now)
                seen = len(standin.requests)
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        try:
            async with aiohttp.ClientSession() as http:

                async def post(n: int) -> None:
                    sent[str(700_000 + n)] = time.perf_counter()
                    async with http.post(
                        url,
                        json=_update(n),
                        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
                    ) as resp:
                        assert resp.status == 200, resp.status

                # Warm-up: group joins and first connections are not part of the figure.
                await post(MESSAGES)
                while str(700_000 + MESSAGES) not in received:
                    await asyncio.sleep(0.01)
                sent.clear()
                received.clear()
                started = time.perf_counter()
                posts = []
                for n in range(MESSAGES):
                    await asyncio.sleep(max(0.0, started + n / RATE_PER_S - time.perf_counter()))
                    posts.append(asyncio.create_task(post(n)))
                await asyncio.gather(*posts)
                deadline = time.perf_counter() + 60
                while len(received) < MESSAGES and time.perf_counter() < deadline:
                    await asyncio.sleep(0.01)
        finally:
            watcher.cancel()
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
            await runner.cleanup()
    missing = MESSAGES - len([c for c in sent if c in received])
    assert missing == 0, f"{missing} replies never arrived"
    latencies = sorted((received[c] - sent[c]) * 1000 for c in sent)
    return {
        "webhook_to_reply_p50_ms": round(latencies[len(latencies) // 2], 1),
        "webhook_to_reply_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 1),
        "webhook_to_reply_offered_per_s": RATE_PER_S,
    }
