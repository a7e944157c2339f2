"""The whole reply loop per platform: a webhook in, the demo flow's answer out through
the platform's real SDK to a local stand-in of its API, in the right chat or thread,
with native buttons; pressing a button goes on with the flow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from telegram import CallbackQuery, Chat, Message, Update, User

from services.workers.agent.role import AGENT
from services.workers.egress.role import run_member as run_egress
from shared.settings import Settings
from tests.integration.ingress import test_slack as slack_hooks
from tests.integration.workers.conftest import running
from tests.standins import Recorded, SlackStandin, TelegramStandin
from tests.support import activate_demo_flow

pytestmark = pytest.mark.e2e

TOKEN, SECRET = "777:loop-token", "loop-secret"
GROUP = Chat(id=-100777, type=Chat.SUPERGROUP, title="Support")
ADA = User(id=4242, is_bot=False, first_name="Ada")
GREETING = "Hello! I'm here to help. What can I do for you?"


@pytest.fixture
async def standins() -> AsyncIterator[tuple[TelegramStandin, SlackStandin]]:
    telegram = TelegramStandin(tokens={TOKEN})
    slack = SlackStandin(tokens={slack_hooks.CREDENTIALS["bot_token"]})
    async with telegram.running(), slack.running():
        yield telegram, slack


@pytest.fixture
def loop_settings(ingress_settings: Settings, standins) -> Settings:
    telegram, slack = standins
    return ingress_settings.model_copy(
        update={
            "telegram_api_base": telegram.url,
            "slack_api_base": slack.url,
            "worker_session_timeout_ms": 6000,
        }
    )


@pytest.fixture
async def workers(loop_settings: Settings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    egress = asyncio.create_task(run_egress(loop_settings, stop))
    try:
        async with running(AGENT, loop_settings):
            yield
    finally:
        stop.set()
        await asyncio.wait_for(egress, 30)


async def sent(
    standin: Any, count: int, keep: Callable[[Recorded], bool] = lambda r: True
) -> list[Recorded]:
    async with asyncio.timeout(30):
        while len([r for r in standin.requests if keep(r)]) < count:
            await asyncio.sleep(0.05)
    return [r for r in standin.requests if keep(r)]


async def test_telegram_group_chat_with_inline_keyboard(
    ingress, make_integration, loop_settings: Settings, standins, workers
) -> None:
    telegram, _ = standins
    bot = await make_integration("telegram", {"bot_token": TOKEN, "secret_token": SECRET})
    await activate_demo_flow(loop_settings, bot.tenant_id)

    async def webhook(update: Update) -> None:
        async with (
            ClientSession() as http,
            http.post(
                f"{ingress.url}/webhooks/telegram/{bot.id}",
                data=orjson.dumps(update.to_dict()),
                headers={
                    "Content-Type": "application/json",
                    "X-Telegram-Bot-Api-Secret-Token": SECRET,
                },
            ) as resp,
        ):
            assert resp.status == 200

    def message(message_id: int, text: str) -> Message:
        return Message(
            message_id=message_id, date=datetime.now(UTC), chat=GROUP, from_user=ADA, text=text
        )

    await webhook(Update(update_id=1, message=message(11, "hi")))
    [greeting] = await sent(telegram, 1)
    assert greeting.path == f"/bot{TOKEN}/sendMessage"
    assert str(greeting.body["chat_id"]) == str(GROUP.id)
    assert greeting.body["text"] == GREETING
    quoted = greeting.body.get("reply_parameters") or {}
    assert int(quoted.get("message_id", greeting.body.get("reply_to_message_id", 0))) == 11

    await webhook(Update(update_id=2, message=message(12, "tell me about your products")))
    menu = (await sent(telegram, 2))[1]
    keyboard = menu.body["reply_markup"]
    keyboard = orjson.loads(keyboard) if isinstance(keyboard, str) else keyboard
    buttons = [b for row in keyboard["inline_keyboard"] for b in row]
    assert [b["text"] for b in buttons] == [
        "🚀 AI Tools",
        "💼 Business Solutions",
        "🎓 Educational",
    ]

    press = CallbackQuery(
        id="cb-1",
        from_user=ADA,
        chat_instance="ci",
        data=buttons[0]["callback_data"],
        message=message(13, menu.body["text"]),
    )
    await webhook(Update(update_id=3, callback_query=press))
    after = (await sent(telegram, 4, lambda r: r.path.endswith("/sendMessage")))[2:]
    assert [r.body["text"] for r in after] == [
        "Our AI tools build, train and deploy chatbots for you.",
        "What email address should we send the details to?",
    ]


async def test_slack_thread_with_block_buttons(
    ingress, make_integration, loop_settings: Settings, standins, workers
) -> None:
    _, slack = standins
    app = await make_integration("slack", dict(slack_hooks.CREDENTIALS))
    await activate_demo_flow(loop_settings, app.tenant_id)
    root = slack_hooks.new_ts()

    async def say(text: str) -> None:
        event = slack_hooks.user_message(text, slack_hooks.new_ts(), thread_ts=root)
        await slack_hooks.send(ingress, app, slack_hooks.envelope(event))

    await say("hi")
    [greeting] = await sent(slack, 1)
    assert greeting.path == "/api/chat.postMessage"
    assert greeting.body["channel"] == slack_hooks.CHANNEL
    assert greeting.body["thread_ts"] == root
    assert greeting.body["text"] == GREETING

    await say("tell me about your products")
    menu = (await sent(slack, 2))[1]
    assert menu.body["thread_ts"] == root
    blocks = menu.body["blocks"]
    blocks = orjson.loads(blocks) if isinstance(blocks, str) else blocks
    buttons = [e for b in blocks if b["type"] == "actions" for e in b["elements"]]
    assert [b["text"]["text"] for b in buttons] == [
        "🚀 AI Tools",
        "💼 Business Solutions",
        "🎓 Educational",
    ]
