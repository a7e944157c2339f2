"""Telegram Bot API webhooks → ``message.inbound``.

Verified by the ``X-Telegram-Bot-Api-Secret-Token`` header (the ``secret_token`` given
to ``setWebhook``), parsed with python-telegram-bot's ``Update.de_json``.

Identity: ``external_id`` is ``chat_id:message_id`` (Telegram's own message identity),
the conversation is the chat; ``update_id`` only identifies the delivery. An edit
reuses its message's ``external_id`` with ``edited_at`` set. A callback query (button
press) is ``cb:<callback id>`` in the chat of the message that carried the button,
dated by that message (a callback has no timestamp of its own).
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from aiohttp import web
from telegram import Message, Update
from telegram.error import TelegramError

from services.ingress.pipeline import AdapterResult, Rejected, WebhookRequest
from services.ingress.webhooks import webhook_handler
from shared.events import Attachment, MessageInbound, derive_event_id
from shared.settings import Settings

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_PUBLISHED_KINDS = ("message", "edited_message", "channel_post", "edited_channel_post")


class TelegramAdapter:
    """Translates one Telegram ``Update`` into at most one event."""

    channel = "telegram"

    def verify(self, request: WebhookRequest, *, now: float) -> None:
        given = request.headers.get(SECRET_HEADER, "")
        expected = request.integration.credentials["secret_token"]
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Rejected(401, "bad_secret", "secret token missing or wrong")

    def parse(self, request: WebhookRequest) -> AdapterResult:
        try:
            data = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise Rejected(400, "malformed", "body is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
            raise Rejected(400, "malformed", "not a Telegram Update (no integer update_id)")
        try:
            update = Update.de_json(data, None)
        except (KeyError, TypeError, ValueError, TelegramError) as exc:
            raise Rejected(
                400, "malformed", f"not a Telegram Update ({type(exc).__name__})"
            ) from None
        for kind in _PUBLISHED_KINDS:
            message = getattr(update, kind)
            if message is not None:
                return AdapterResult(
                    events=[self._message_event(request, update, message, data[kind])]
                )
        if update.callback_query is not None:
            return AdapterResult(
                events=[self._callback_event(request, update, data["callback_query"])]
            )
        kinds = [k for k in data if k != "update_id"] or ["empty"]
        return AdapterResult(ignored=[kinds[0]])

    def _message_event(
        self, request: WebhookRequest, update: Update, message: Message, raw: dict[str, Any]
    ) -> MessageInbound:
        integration = request.integration
        external_id = f"{message.chat.id}:{message.message_id}"
        edited_at = message.edit_date
        marker = ("edit", int(edited_at.timestamp())) if edited_at else ()
        sender = message.from_user
        message_type, attachments = _content(message)
        return MessageInbound(
            event_id=derive_event_id(self.channel, integration.id, external_id, *marker),
            tenant_id=integration.tenant_id,
            integration_id=integration.id,
            channel="telegram",
            conversation_key=str(message.chat.id),
            external_id=external_id,
            delivery_id=str(update.update_id),
            sender_id=str(sender.id if sender else (message.sender_chat or message.chat).id),
            sender_name=sender.full_name if sender else (message.sender_chat or message.chat).title,
            text=message.text or message.caption,
            message_type=message_type,
            attachments=attachments,
            reply_to=(
                f"{message.chat.id}:{message.reply_to_message.message_id}"
                if message.reply_to_message
                else None
            ),
            thread_id=str(message.message_thread_id) if message.message_thread_id else None,
            edited_at=edited_at,
            sent_at=message.date,
            raw=raw,
        )

    def _callback_event(
        self, request: WebhookRequest, update: Update, raw: dict[str, Any]
    ) -> MessageInbound:
        integration = request.integration
        query = update.callback_query
        assert query is not None
        carrier = query.message if isinstance(query.message, Message) else None
        chat_id = carrier.chat.id if carrier else query.from_user.id
        external_id = f"cb:{query.id}"
        return MessageInbound(
            event_id=derive_event_id(self.channel, integration.id, external_id),
            tenant_id=integration.tenant_id,
            integration_id=integration.id,
            channel="telegram",
            conversation_key=str(chat_id),
            external_id=external_id,
            delivery_id=str(update.update_id),
            sender_id=str(query.from_user.id),
            sender_name=query.from_user.full_name,
            text=query.data,
            message_type="callback",
            callback_data=query.data,
            reply_to=f"{chat_id}:{carrier.message_id}" if carrier else None,
            sent_at=carrier.date if carrier else request.received_at,
            raw=raw,
        )


def _content(message: Message) -> tuple[str, list[Attachment]]:
    """The message type and attachments of a Telegram message."""
    if message.photo:
        best = max(message.photo, key=lambda p: p.width * p.height)
        return "image", [
            Attachment(
                kind="image",
                media_id=best.file_id,
                size_bytes=best.file_size,
                caption=message.caption,
            )
        ]
    for attr, kind in (
        ("voice", "audio"),
        ("audio", "audio"),
        ("video", "video"),
        ("video_note", "video"),
        ("animation", "video"),
        ("document", "document"),
        ("sticker", "sticker"),
    ):
        media = getattr(message, attr)
        if media is not None:
            return kind, [
                Attachment(
                    kind=kind,
                    media_id=media.file_id,
                    mime_type=getattr(media, "mime_type", None),
                    file_name=getattr(media, "file_name", None),
                    size_bytes=media.file_size,
                    caption=message.caption,
                )
            ]
    place = message.venue.location if message.venue else message.location
    if place is not None:
        return "location", [
            Attachment(
                kind="location",
                latitude=place.latitude,
                longitude=place.longitude,
                name=message.venue.title if message.venue else None,
                address=message.venue.address if message.venue else None,
            )
        ]
    if message.text is not None:
        return "text", []
    return "system", []


def register(app: web.Application, settings: Settings) -> None:
    """POST /webhooks/telegram/{integration_id}."""
    app.router.add_post("/webhooks/telegram/{integration_id}", webhook_handler(TelegramAdapter()))
