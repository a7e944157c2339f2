"""Platform stand-ins on 127.0.0.1 and integrations whose tokens they accept."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from services.workers.egress.slack import SlackClients
from services.workers.egress.telegram import TelegramBots
from shared.integrations import Integration
from tests.standins import SlackStandin, TelegramStandin, WhatsAppStandin

TELEGRAM_TOKEN = "7000001:AAF-standin-telegram-token"
SLACK_TOKEN = "xoxb-1111-2222-standin-slack-token"
WHATSAPP_TOKEN = "EAAGstandinWhatsAppAccessToken"
PHONE_NUMBER_ID = "106540352242922"


def integration(channel: str, credentials: dict[str, str], **settings: object) -> Integration:
    """An integration as the store would decrypt it (no database needed here)."""
    return Integration(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        channel=channel,  # type: ignore[arg-type]
        name=f"test {channel}",
        status="active",
        credentials=credentials,
        settings=settings,
    )


@pytest.fixture
async def telegram_api() -> AsyncIterator[TelegramStandin]:
    async with TelegramStandin(tokens={TELEGRAM_TOKEN}).running() as standin:
        yield standin


@pytest.fixture
async def slack_api() -> AsyncIterator[SlackStandin]:
    async with SlackStandin(tokens={SLACK_TOKEN}).running() as standin:
        yield standin


@pytest.fixture
async def whatsapp_api() -> AsyncIterator[WhatsAppStandin]:
    standin = WhatsAppStandin(tokens={WHATSAPP_TOKEN}, phone_number_ids={PHONE_NUMBER_ID})
    async with standin.running():
        yield standin


@pytest.fixture
def telegram_integration() -> Integration:
    return integration("telegram", {"bot_token": TELEGRAM_TOKEN, "secret_token": "hook-secret"})


@pytest.fixture
def slack_integration() -> Integration:
    return integration("slack", {"signing_secret": "signing-secret", "bot_token": SLACK_TOKEN})


@pytest.fixture
def whatsapp_integration() -> Integration:
    return integration(
        "whatsapp",
        {
            "app_secret": "app-secret",
            "verify_token": "verify-token",
            "access_token": WHATSAPP_TOKEN,
            "phone_number_id": PHONE_NUMBER_ID,
        },
    )


@pytest.fixture
async def telegram_bots(telegram_api: TelegramStandin) -> AsyncIterator[TelegramBots]:
    bots = TelegramBots(telegram_api.url, timeout_s=5.0)
    try:
        yield bots
    finally:
        await bots.aclose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session:
        yield session


@pytest.fixture
def slack_clients(slack_api: SlackStandin, http: aiohttp.ClientSession) -> SlackClients:
    return SlackClients(slack_api.url, session=http)
