"""The platform clients of one egress process, opened and closed together.

Widget replies are not sent from here: they go out through the ingress process's
WebSocket registry (``services/ingress/widget_sockets.py``), which this process
cannot reach.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from services.workers.egress import slack, telegram, whatsapp
from services.workers.egress.outcome import Outcome
from shared.events import MessageOutbound
from shared.integrations import Integration
from shared.settings import Settings

#: SDK loggers that would print request URLs (Telegram's carry the bot token) or bodies.
_CHATTY_LOGGERS = ("httpx", "httpcore", "telegram", "slack_sdk")


@dataclass(frozen=True)
class EgressClients:
    """Send one reply to the platform an integration belongs to."""

    telegram: telegram.TelegramBots
    slack: slack.SlackClients
    session: aiohttp.ClientSession
    whatsapp_api_base: str
    whatsapp_api_version: str

    async def send(self, message: MessageOutbound, integration: Integration) -> Outcome:
        """One attempt; the outcome says whether it was delivered, is retriable, or is not."""
        if integration.channel == "telegram":
            return await telegram.send(message, integration, bots=self.telegram)
        if integration.channel == "slack":
            return await slack.send(message, integration, clients=self.slack)
        if integration.channel == "whatsapp":
            return await whatsapp.send(
                message,
                integration,
                session=self.session,
                api_base=self.whatsapp_api_base,
                api_version=self.whatsapp_api_version,
            )
        raise ValueError(f"no egress client for channel {integration.channel!r}")


@asynccontextmanager
async def open_clients(settings: Settings) -> AsyncIterator[EgressClients]:
    """Open the clients for ``settings``' API bases; closes them on exit."""
    quiet_sdk_loggers()
    timeout = aiohttp.ClientTimeout(total=settings.egress_http_timeout_s)
    session = aiohttp.ClientSession(timeout=timeout)
    bots = telegram.TelegramBots(
        settings.telegram_api_base, timeout_s=settings.egress_http_timeout_s
    )
    try:
        yield EgressClients(
            telegram=bots,
            slack=slack.SlackClients(settings.slack_api_base, session=session),
            session=session,
            whatsapp_api_base=settings.whatsapp_api_base,
            whatsapp_api_version=settings.whatsapp_api_version,
        )
    finally:
        await bots.aclose()
        await session.close()


def quiet_sdk_loggers() -> None:
    """Keep SDK loggers at WARNING or above: at INFO httpx logs Telegram URLs with the token."""
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
