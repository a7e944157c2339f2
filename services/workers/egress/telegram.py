"""Replies through the Telegram Bot API, with python-telegram-bot's ``Bot``.

Addressing follows the ingress: the conversation key is the chat id, ``reply_to`` is
``"chat_id:message_id"`` and ``thread_id`` a forum topic's ``message_thread_id``. Quick
replies become an inline keyboard, one button per row, whose ``callback_data`` is the
payload; Telegram caps callback data at 64 bytes, so a longer payload fails the message
as ``invalid_message`` rather than sending a button that could not answer. The
platform id of a sent message is ``"chat_id:message_id"``, like an inbound one's.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from datetime import timedelta
from typing import Any

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, ReplyParameters
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from services.workers.egress.outcome import Delivered, Outcome, Permanent, Retry, redact
from shared.events import MessageOutbound
from shared.integrations import Integration

#: Telegram's limit on an inline button's callback data, in bytes.
MAX_CALLBACK_BYTES = 64


class InvalidMessage(ValueError):
    """The outbound event cannot be expressed as a Telegram message."""


class TelegramBots:
    """One ``Bot`` per integration, all sharing one HTTP connection pool.

    Bots are built without ``initialize()``, which would call ``getMe`` and, on a
    rejected token, raise an error that quotes the token. A rotated token replaces
    the integration's bot. Close with :meth:`aclose`.
    """

    def __init__(
        self, api_base: str, *, timeout_s: float = 10.0, pool_size: int = 64, max_bots: int = 4096
    ) -> None:
        self._api_base = api_base.rstrip("/")
        self._request = HTTPXRequest(
            connection_pool_size=pool_size,
            read_timeout=timeout_s,
            write_timeout=timeout_s,
            connect_timeout=timeout_s,
            pool_timeout=timeout_s,
        )
        # Bot builds a long-polling request object unless given one; egress never polls.
        self._polling = HTTPXRequest(connection_pool_size=1)
        self._bots: OrderedDict[str, Bot] = OrderedDict()
        self._max_bots = max_bots

    def bot(self, integration: Integration) -> Bot:
        """The integration's bot, built on first use (or after its token changed)."""
        key = str(integration.id)
        token = integration.credentials["bot_token"]
        bot = self._bots.pop(key, None)
        if bot is None or bot.token != token:
            bot = Bot(
                token,
                base_url=f"{self._api_base}/bot",  # PTB appends the token
                base_file_url=f"{self._api_base}/file/bot",
                request=self._request,
                get_updates_request=self._polling,
            )
        self._bots[key] = bot
        while len(self._bots) > self._max_bots:
            self._bots.popitem(last=False)
        return bot

    async def aclose(self) -> None:
        """Close the shared connection pool (the bots hold nothing else)."""
        self._bots.clear()
        await self._request.shutdown()
        await self._polling.shutdown()


async def send(
    message: MessageOutbound, integration: Integration, *, bots: TelegramBots
) -> Outcome:
    """Send one reply; every failure is returned as an outcome, never raised."""
    secrets = integration.credentials.values()
    try:
        arguments = build_arguments(message)
    except InvalidMessage as exc:
        return Permanent("invalid_message", str(exc))
    try:
        sent = await bots.bot(integration).send_message(**arguments)
    except TelegramError as exc:
        return _outcome_of(exc, secrets)
    return Delivered(f"{sent.chat.id}:{sent.message_id}")


def build_arguments(message: MessageOutbound) -> dict[str, Any]:
    """``Bot.send_message`` keyword arguments for an outbound event."""
    if not message.text:
        raise InvalidMessage("a Telegram reply needs text (attachments are not sent yet)")
    chat_id = _chat_id(message.conversation_key)
    arguments: dict[str, Any] = {"chat_id": chat_id, "text": message.text}
    if message.quick_replies:
        rows = []
        for number, reply in enumerate(message.quick_replies, start=1):
            size = len(reply.payload.encode())
            if size > MAX_CALLBACK_BYTES:
                raise InvalidMessage(
                    f"quick reply {number}'s payload is {size} bytes; "
                    f"Telegram's callback data holds {MAX_CALLBACK_BYTES}"
                )
            rows.append([InlineKeyboardButton(reply.title, callback_data=reply.payload)])
        arguments["reply_markup"] = InlineKeyboardMarkup(rows)
    if message.reply_to:
        chat_part, _, message_part = message.reply_to.rpartition(":")
        if not message_part.isdigit():
            raise InvalidMessage("reply_to must be 'chat_id:message_id'")
        reply_chat = _chat_id(chat_part) if chat_part else chat_id
        arguments["reply_parameters"] = ReplyParameters(
            message_id=int(message_part),
            chat_id=None if reply_chat == chat_id else reply_chat,
            allow_sending_without_reply=True,  # the original may have been deleted
        )
    if message.thread_id:
        if not message.thread_id.isdigit():
            raise InvalidMessage("thread_id must be a forum topic's numeric message_thread_id")
        arguments["message_thread_id"] = int(message.thread_id)
    return arguments


def _chat_id(value: str) -> int | str:
    """A numeric chat id as int; a ``@channel`` username stays a string."""
    try:
        return int(value)
    except ValueError:
        return value


def _outcome_of(exc: TelegramError, secrets: Any) -> Outcome:
    reason = redact(exc.message, secrets)
    # Order matters: BadRequest and TimedOut are NetworkError subclasses.
    if isinstance(exc, RetryAfter):
        return Retry(reason, _retry_after_s(exc))
    if isinstance(exc, TimedOut):
        return Retry(reason or "timed out")
    if isinstance(exc, BadRequest):
        return Permanent("400", reason)
    if isinstance(exc, Forbidden):
        return Permanent("403", reason)
    if isinstance(exc, InvalidToken):
        return Permanent("401", reason)
    if isinstance(exc, ChatMigrated):
        return Permanent("chat_migrated", f"the group is now chat {exc.new_chat_id}")
    if isinstance(exc, NetworkError):  # 5xx, connection errors, unparsable answers
        return Retry(reason)
    return Permanent("telegram_error", reason)


def _retry_after_s(exc: RetryAfter) -> float:
    with warnings.catch_warnings():  # PTB 22 warns that the type becomes timedelta
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)
