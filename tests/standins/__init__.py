"""Local stand-ins for the platform APIs egress talks to (and an OpenAI-compatible LLM
server for the agent), for the real clients to call.

Each records every request (``requests``), accepts only the tokens in ``tokens``, can
be scripted to fail (``fail_next(status, retry_after=..., error=..., description=...)``)
or stall (``stall_next(seconds)``), and serves on 127.0.0.1 inside ``async with
standin.running():``, its base URL in ``standin.url``.
"""

from tests.standins.base import Recorded, Standin
from tests.standins.llm import LLMStandin
from tests.standins.slack import SlackStandin
from tests.standins.telegram import TelegramStandin
from tests.standins.whatsapp import WhatsAppStandin

__all__ = [
    "LLMStandin",
    "Recorded",
    "SlackStandin",
    "Standin",
    "TelegramStandin",
    "WhatsAppStandin",
]
