"""Pacing of platform API calls: token buckets per sender and per conversation.

The limits are the platforms' published ones, from settings:

* Telegram: ~30 messages/s per bot, 1/s per chat, 20/min per group (negative chat id).
* Slack: 1 message/s per channel (per integration, i.e. per workspace install).
* WhatsApp: 80 messages/s per business number and Meta's pair rate of one message per
  6 s to one user, which Meta lets a sender exceed in short bursts.

Per-sender buckets allow a one-second burst; per-conversation buckets allow
``egress_conversation_burst`` messages at once, so a bot answering with two or three
messages is not held back while a sustained stream to one chat is paced. A platform's
429 / Retry-After is honoured with :meth:`EgressLimits.pause`, which holds the whole
integration (or one conversation) until the platform's time is up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from shared.events import MessageOutbound
from shared.integrations import Integration
from shared.ratelimit import RateLimiter
from shared.settings import Settings

Sleep = Callable[[float], Awaitable[Any]]
_MAX_PAUSES = 100_000


class EgressLimits:
    """All egress token buckets of one process; :meth:`wait_turn` before each API call."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        burst = float(settings.egress_conversation_burst)

        def bucket(rate_per_s: float, burst: float) -> RateLimiter[Hashable]:
            return RateLimiter(rate_per_s=rate_per_s, burst=max(1.0, burst), clock=clock)

        s = settings
        self.telegram_bot = bucket(s.egress_telegram_per_bot_per_s, s.egress_telegram_per_bot_per_s)
        self.telegram_chat = bucket(s.egress_telegram_per_chat_per_s, burst)
        self.telegram_group = bucket(s.egress_telegram_per_group_per_min / 60, burst)
        self.slack_channel = bucket(s.egress_slack_per_channel_per_s, burst)
        self.whatsapp_number = bucket(
            s.egress_whatsapp_per_number_per_s, s.egress_whatsapp_per_number_per_s
        )
        self.whatsapp_recipient = bucket(s.egress_whatsapp_per_recipient_per_s, burst)
        self._clock = clock
        self._sleep = sleep
        self._paused: dict[tuple[str, str | None], float] = {}

    def buckets(
        self, integration: Integration, message: MessageOutbound
    ) -> list[tuple[RateLimiter[Hashable], Hashable]]:
        """The buckets one message draws from, narrowest first.

        Narrowest first, so a message waiting for its busy chat does not hold a token
        of the sender's shared budget meanwhile.
        """
        conversation = message.conversation_key
        if integration.channel == "telegram":
            bot_id = integration.credentials["bot_token"].partition(":")[0]  # public bot id
            chat = ("telegram", bot_id, conversation)
            rules = [(self.telegram_chat, chat)]
            if conversation.startswith("-"):
                rules.append((self.telegram_group, chat))
            return [*rules, (self.telegram_bot, ("telegram", bot_id))]
        if integration.channel == "slack":
            channel = conversation.partition(":")[0]
            return [(self.slack_channel, ("slack", str(integration.id), channel))]
        if integration.channel == "whatsapp":
            number = integration.credentials["phone_number_id"]
            return [
                (self.whatsapp_recipient, ("whatsapp", number, message.recipient_id)),
                (self.whatsapp_number, ("whatsapp", number)),
            ]
        return []  # the widget's socket push has no platform limit

    async def wait_turn(self, integration: Integration, message: MessageOutbound) -> float:
        """Wait until every applicable bucket grants a token; the seconds waited."""
        waited = await self._wait_out_pauses(integration, message)
        for limiter, key in self.buckets(integration, message):
            while (delay := limiter.acquire(key)) > 0:
                await self._sleep(delay)
                waited += delay
        return waited

    def pause(
        self, integration: Integration, seconds: float, *, conversation_key: str | None = None
    ) -> None:
        """Hold the integration's sends (or one conversation's) for ``seconds``.

        For a platform's 429 / Retry-After; a pause never shortens an earlier one.
        """
        if seconds <= 0:
            return
        now = self._clock()
        if len(self._paused) >= _MAX_PAUSES:
            self._paused = {k: v for k, v in self._paused.items() if v > now}
        key = (str(integration.id), conversation_key)
        self._paused[key] = max(self._paused.get(key, now), now + seconds)

    async def _wait_out_pauses(self, integration: Integration, message: MessageOutbound) -> float:
        waited = 0.0
        keys = ((str(integration.id), None), (str(integration.id), message.conversation_key))
        while True:
            now = self._clock()
            until = max((self._paused.get(k, now) for k in keys), default=now)
            if until <= now:
                for key in keys:
                    self._paused.pop(key, None)
                return waited
            await self._sleep(until - now)
            waited += until - now
