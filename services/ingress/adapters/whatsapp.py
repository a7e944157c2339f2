"""WhatsApp Cloud API webhooks → ``message.inbound`` and ``message.status``.

GET is Meta's subscription handshake (``hub.verify_token`` against the integration's
``verify_token``); POST is verified by ``X-Hub-Signature-256``, the HMAC-SHA256 of the
raw body with the app secret. One POST may carry several entries, changes, messages
and statuses; the whole body is validated before any event is returned.

Identity: ``external_id`` is the message's wamid and the conversation is the sender's
``wa_id``. A status event is keyed by the wamid of our outbound message plus its
status, so a redelivered receipt dedupes while sent → delivered → read are three events.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from services.ingress.pipeline import AdapterResult, Rejected, WebhookRequest
from services.ingress.webhooks import INGRESS, Handler, guarded, webhook_handler
from shared.events import (
    Attachment,
    Envelope,
    MessageInbound,
    MessageStatus,
    StatusError,
    derive_event_id,
)
from shared.integrations import Integration
from shared.settings import Settings

SIGNATURE_HEADER = "X-Hub-Signature-256"
_MEDIA_KINDS = ("image", "audio", "video", "document", "sticker")
_STATUSES = ("sent", "delivered", "read", "failed")
#: Message types acknowledged but not published, as metric-safe ``ignored`` kinds.
_IGNORED_TYPES = frozenset(
    {"reaction", "unsupported", "unknown", "contacts", "order", "system", "request_welcome"}
)
_MAX_CHALLENGE = 512


class _Shape(BaseModel):
    """The parts of Meta's payload we read; unknown fields are allowed and kept in ``raw``."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class _Change(_Shape):
    field: str
    value: dict[str, Any]


class _Entry(_Shape):
    id: str | None = None
    changes: list[_Change]


class _Notification(_Shape):
    object: Literal["whatsapp_business_account"]
    entry: list[_Entry]


class _Metadata(_Shape):
    phone_number_id: str = Field(min_length=1)


class _Profile(_Shape):
    name: str | None = None


class _Contact(_Shape):
    wa_id: str | None = None
    profile: _Profile | None = None


class _Value(_Shape):
    metadata: _Metadata
    contacts: list[_Contact] = []
    messages: list[dict[str, Any]] = []
    statuses: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []


def _unix_time(value: object) -> datetime:
    """Meta's timestamps: unix seconds as a string of digits (an integer is accepted)."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 10**11:
        raise ValueError("timestamp must be unix seconds")
    return datetime.fromtimestamp(value, UTC)


_UnixTime = Annotated[datetime, PlainValidator(_unix_time)]


class _Media(_Shape):
    id: str = Field(min_length=1)
    mime_type: str | None = None
    caption: str | None = None
    filename: str | None = None


class _Location(_Shape):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


class _Reply(_Shape):
    id: str = Field(min_length=1)
    title: str


class _Interactive(_Shape):
    type: str
    button_reply: _Reply | None = None
    list_reply: _Reply | None = None


class _Button(_Shape):
    text: str
    payload: str | None = None


class _Text(_Shape):
    body: str


class _Context(_Shape):
    id: str | None = None


class _Message(_Shape):
    id: str = Field(min_length=1, max_length=512)
    sender: str = Field(alias="from", min_length=1, max_length=512)
    timestamp: _UnixTime
    type: str = "unknown"
    context: _Context | None = None
    text: _Text | None = None
    interactive: _Interactive | None = None
    button: _Button | None = None
    image: _Media | None = None
    audio: _Media | None = None
    video: _Media | None = None
    document: _Media | None = None
    sticker: _Media | None = None
    location: _Location | None = None


class _ErrorData(_Shape):
    details: str | None = None


class _StatusError(_Shape):
    code: int | str
    title: str | None = None
    message: str | None = None
    error_data: _ErrorData | None = None


class _Status(_Shape):
    id: str = Field(min_length=1)
    status: str
    timestamp: _UnixTime
    recipient_id: str = Field(min_length=1, max_length=512)
    errors: list[_StatusError] = []


def _malformed(exc: ValidationError, where: str) -> Rejected:
    """A 400 naming where the shape is wrong, never the values found there."""
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(p) for p in (where, *first["loc"]) if p != "")
    return Rejected(400, "malformed", f"not a WhatsApp Cloud API webhook ({loc}: {first['msg']})")


class WhatsAppAdapter:
    """Translates a WhatsApp Cloud API notification into inbound messages and statuses."""

    channel = "whatsapp"

    def handshake(self, integration: Integration, query: Mapping[str, str]) -> str:
        """The ``hub.challenge`` to echo when Meta's verification request is genuine."""
        expected = integration.credentials.get("verify_token", "")
        given = query.get("hub.verify_token", "")
        if (
            query.get("hub.mode") != "subscribe"
            or not expected
            or not hmac.compare_digest(given.encode(), expected.encode())
        ):
            raise Rejected(403, "bad_verify_token", "verification failed")
        challenge = query.get("hub.challenge", "")
        if not challenge or len(challenge) > _MAX_CHALLENGE:
            raise Rejected(400, "malformed", "hub.challenge missing or too long")
        return challenge

    def verify(self, request: WebhookRequest, *, now: float) -> None:
        secret = request.integration.credentials.get("app_secret", "")
        given = request.headers.get(SIGNATURE_HEADER, "")
        scheme, _, digest = given.partition("=")
        expected = hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
        if (
            not secret
            or scheme != "sha256"
            or not hmac.compare_digest(digest.lower().encode(errors="replace"), expected.encode())
        ):
            raise Rejected(401, "bad_signature", "signature missing or wrong")

    def parse(self, request: WebhookRequest) -> AdapterResult:
        try:
            data = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise Rejected(400, "malformed", "body is not JSON") from None
        try:
            notification = _Notification.model_validate(data)
        except ValidationError as exc:
            raise _malformed(exc, "") from None
        events: dict[Any, Envelope] = {}
        ignored: list[str] = []
        own_number = request.integration.credentials.get("phone_number_id", "")
        for e, entry in enumerate(notification.entry):
            for c, change in enumerate(entry.changes):
                if change.field != "messages":
                    ignored.append("other_field")
                    continue
                where = f"entry.{e}.changes.{c}.value"
                try:
                    value = _Value.model_validate(change.value)
                except ValidationError as exc:
                    raise _malformed(exc, where) from None
                kinds: list[str] = []
                found = list(self._change(request, value, where, kinds))
                if value.metadata.phone_number_id != own_number:
                    ignored.append("other_phone_number")
                    continue
                ignored.extend(kinds)
                for event in found:
                    events.setdefault(event.event_id, event)
        return AdapterResult(events=list(events.values()), ignored=ignored)

    def _change(
        self, request: WebhookRequest, value: _Value, where: str, ignored: list[str]
    ) -> Iterator[Envelope]:
        """Every event of one ``messages`` change, validating all of it."""
        names = {c.wa_id: c.profile.name for c in value.contacts if c.wa_id and c.profile}
        for i, message in enumerate(value.messages):
            event = self._message(request, message, names, f"{where}.messages.{i}")
            if isinstance(event, str):
                ignored.append(event)
            else:
                yield event
        for i, status in enumerate(value.statuses):
            event = self._status(request, status, f"{where}.statuses.{i}")
            if isinstance(event, str):
                ignored.append(event)
            else:
                yield event
        if value.errors:
            ignored.append("errors")

    def _message(
        self, request: WebhookRequest, raw: dict[str, Any], names: dict[str, str | None], where: str
    ) -> MessageInbound | str:
        """The inbound event of one ``messages[]`` item, or the ignored kind it is."""
        try:
            message = _Message.model_validate(raw)
        except ValidationError as exc:
            raise _malformed(exc, where) from None
        content = _content(message, where)
        if isinstance(content, str):
            return content
        message_type, text, attachments, callback_data = content
        integration = request.integration
        sender_name = names.get(message.sender)
        if sender_name is None and len(names) == 1:
            sender_name = next(iter(names.values()))
        try:
            return MessageInbound(
                event_id=derive_event_id(self.channel, integration.id, message.id),
                tenant_id=integration.tenant_id,
                integration_id=integration.id,
                channel="whatsapp",
                conversation_key=message.sender,
                external_id=message.id,
                sender_id=message.sender,
                sender_name=sender_name,
                text=text,
                message_type=message_type,
                attachments=attachments,
                callback_data=callback_data,
                reply_to=message.context.id if message.context else None,
                sent_at=message.timestamp,
                raw=raw,
            )
        except ValidationError as exc:
            raise _malformed(exc, where) from None

    def _status(
        self, request: WebhookRequest, raw: dict[str, Any], where: str
    ) -> MessageStatus | str:
        """The status event of one ``statuses[]`` item, or the ignored kind it is."""
        try:
            status = _Status.model_validate(raw)
        except ValidationError as exc:
            raise _malformed(exc, where) from None
        if status.status not in _STATUSES:
            return "other_status"
        integration = request.integration
        errors = tuple(
            StatusError(
                code=str(err.code),
                title=err.title or err.message,
                detail=err.error_data.details if err.error_data else None,
            )
            for err in status.errors
        )
        return MessageStatus(
            event_id=derive_event_id(self.channel, integration.id, status.id, status.status),
            tenant_id=integration.tenant_id,
            integration_id=integration.id,
            channel="whatsapp",
            conversation_key=status.recipient_id,
            message_id=status.id,
            platform_message_id=status.id,
            recipient_id=status.recipient_id,
            status=status.status,  # type: ignore[arg-type]
            status_at=status.timestamp,
            errors=errors,
            raw=raw,
        )


_Content = tuple[str, str | None, tuple[Attachment, ...], str | None]


def _content(message: _Message, where: str) -> _Content | str:
    """(message_type, text, attachments, callback_data), or the ignored kind of message."""
    kind = message.type

    def missing() -> Rejected:
        return Rejected(400, "malformed", f"not a WhatsApp Cloud API webhook ({where}.{kind})")

    if kind == "text":
        if message.text is None:
            raise missing()
        return "text", message.text.body, (), None
    if kind == "interactive":
        if message.interactive is None:
            raise missing()
        reply = {
            "button_reply": message.interactive.button_reply,
            "list_reply": message.interactive.list_reply,
        }.get(message.interactive.type)
        if reply is None:
            return "interactive_other"
        return "interactive", reply.title, (), reply.id
    if kind == "button":
        if message.button is None:
            raise missing()
        return "interactive", message.button.text, (), message.button.payload
    if kind in _MEDIA_KINDS:
        media: _Media | None = getattr(message, kind)
        if media is None:
            raise missing()
        attachment = Attachment(
            kind=kind,  # type: ignore[arg-type]
            media_id=media.id,
            mime_type=media.mime_type,
            caption=media.caption,
            file_name=media.filename if kind == "document" else None,
        )
        return kind, media.caption, (attachment,), None
    if kind == "location":
        place = message.location
        if place is None:
            raise missing()
        try:
            attachment = Attachment(
                kind="location",
                latitude=place.latitude,
                longitude=place.longitude,
                name=place.name,
                address=place.address,
            )
        except ValidationError as exc:
            raise _malformed(exc, f"{where}.location") from None
        return "location", None, (attachment,), None
    return kind if kind in _IGNORED_TYPES else "other_message_type"


def _handshake_handler(adapter: WhatsAppAdapter) -> Handler:
    """GET: answer Meta's subscription handshake for an active integration."""

    async def handle(request: web.Request) -> web.StreamResponse:
        ingress = request.app[INGRESS]

        async def work(resolved: list[Integration | None]) -> web.StreamResponse:
            integration = await ingress.lookup(request.match_info["integration_id"], "whatsapp")
            resolved[0] = integration
            return web.Response(text=adapter.handshake(integration, request.query))

        return await guarded(request, adapter.channel, work)

    return handle


def register(app: web.Application, settings: Settings) -> None:
    """GET (subscription handshake) and POST /webhooks/whatsapp/{integration_id}."""
    adapter = WhatsAppAdapter()
    path = "/webhooks/whatsapp/{integration_id}"
    app.router.add_get(path, _handshake_handler(adapter), allow_head=False)
    app.router.add_post(path, webhook_handler(adapter))
