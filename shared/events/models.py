"""The event contract: one flat envelope, one frozen pydantic model per event type.

Every event carries ``event_id`` (the dedupe key), ``type``, ``schema_version``,
``tenant_id`` and ``occurred_at`` at the top level, followed by its own body
fields. ``schemas/`` holds the JSON Schema generated from these models.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Channel = Literal["telegram", "slack", "whatsapp", "widget"]
CHANNELS: tuple[Channel, ...] = ("telegram", "slack", "whatsapp", "widget")

MessageType = Literal[
    "text",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "location",
    "interactive",
    "callback",
    "system",
]
DeliveryStatus = Literal["queued", "sent", "delivered", "read", "failed"]
#: Delivery statuses in the order they can happen; a status never moves backwards.
STATUS_RANK: dict[str, int] = {"queued": 0, "sent": 1, "delivered": 2, "read": 3, "failed": 4}

RecoveryEventType = Literal[
    "message_sent",
    "delivered",
    "opened",
    "clicked",
    "replied",
    "recovered",
    "failed",
    "unsubscribed",
]
MessageOrigin = Literal["flow", "knowledge", "llm", "operator", "campaign", "system"]

#: Namespace for deterministic event ids derived from a platform's own message identity.
EVENT_NAMESPACE = uuid.UUID("6f1c2a8e-4f0e-5a7b-9c3d-2b1e0a9f8c7d")


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def derive_event_id(*parts: object) -> uuid.UUID:
    """A stable event id from a platform identity, so a redelivery maps to the same id."""
    return uuid.uuid5(EVENT_NAMESPACE, "\x1f".join(str(p) for p in parts))


def conversation_partition_key(tenant_id: uuid.UUID | None, conversation_key: str) -> bytes:
    """The Kafka message key: tenant + conversation, so one conversation stays in order."""
    return f"{tenant_id or '-'}:{conversation_key}".encode()


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Envelope(_Frozen):
    """Fields every event carries, flat at the top level."""

    SCHEMA_VERSION: ClassVar[int] = 1

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4, description="Unique; the dedupe key.")
    type: str
    schema_version: int = Field(default=1, ge=1)
    tenant_id: uuid.UUID
    occurred_at: AwareDatetime = Field(default_factory=utcnow)

    def kafka_key(self) -> bytes:
        """The partitioning key; events without a conversation are keyed by tenant."""
        return str(self.tenant_id).encode()


class Attachment(_Frozen):
    """A media item, file or location attached to a message."""

    kind: Literal["image", "audio", "video", "document", "sticker", "location", "file"]
    media_id: str | None = None
    url: str | None = None
    mime_type: str | None = None
    file_name: str | None = None
    size_bytes: int | None = Field(default=None, ge=0)
    caption: str | None = None
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    name: str | None = None
    address: str | None = None


class QuickReply(_Frozen):
    """A button offered with an outbound message; ``payload`` comes back when pressed."""

    title: str = Field(min_length=1, max_length=256)
    payload: str = Field(min_length=1, max_length=1024)


class _ConversationEvent(Envelope):
    integration_id: uuid.UUID
    channel: Channel
    conversation_key: str = Field(min_length=1, max_length=512)

    def kafka_key(self) -> bytes:
        return conversation_partition_key(self.tenant_id, self.conversation_key)


class MessageInbound(_ConversationEvent):
    """A message a platform delivered to one of our integrations."""

    type: Literal["message.inbound"] = "message.inbound"
    external_id: str = Field(min_length=1, max_length=512, description="Platform message id.")
    delivery_id: str | None = Field(
        default=None, description="The platform's id of this delivery (update_id, event_id)."
    )
    sender_id: str
    sender_name: str | None = None
    text: str | None = None
    message_type: MessageType = "text"
    attachments: tuple[Attachment, ...] = ()
    reply_to: str | None = Field(default=None, description="External id of the replied message.")
    thread_id: str | None = None
    callback_data: str | None = Field(default=None, description="Pressed button's payload.")
    edited_at: AwareDatetime | None = Field(
        default=None, description="Set when this event is an edit of external_id."
    )
    sent_at: AwareDatetime = Field(description="The platform's own timestamp of the message.")
    raw: dict[str, Any] = Field(default_factory=dict, description="The platform payload.")


class MessageOutbound(_ConversationEvent):
    """A reply to send back through the platform the conversation lives on."""

    type: Literal["message.outbound"] = "message.outbound"
    message_id: str = Field(min_length=1, max_length=512, description="Our id for the reply.")
    recipient_id: str
    text: str | None = None
    message_type: MessageType = "text"
    attachments: tuple[Attachment, ...] = ()
    quick_replies: tuple[QuickReply, ...] = ()
    reply_to: str | None = None
    thread_id: str | None = None
    origin: MessageOrigin = "flow"
    in_reply_to_event: uuid.UUID | None = None
    attempt: int = Field(default=0, ge=0)
    sent_at: AwareDatetime = Field(default_factory=utcnow, description="When we created it.")


class StatusError(_Frozen):
    """One error a platform reported for a delivery."""

    code: str
    title: str | None = None
    detail: str | None = None


class MessageStatus(_ConversationEvent):
    """A delivery receipt or delivery attempt outcome for an outbound message."""

    type: Literal["message.status"] = "message.status"
    message_id: str = Field(description="Our message id, or the platform's when only it is known.")
    platform_message_id: str | None = None
    recipient_id: str | None = None
    status: DeliveryStatus
    status_at: AwareDatetime
    attempt: int = Field(default=0, ge=0)
    errors: tuple[StatusError, ...] = ()
    raw: dict[str, Any] = Field(default_factory=dict)


class RecoveryEvent(Envelope):
    """Something that happened in a revenue-recovery campaign."""

    type: Literal["recovery.event"] = "recovery.event"
    campaign_id: uuid.UUID
    recovery_message_id: uuid.UUID | None = None
    customer_ref: str = Field(min_length=1)
    event_type: RecoveryEventType
    amount_cents: int | None = None
    currency: str | None = Field(default=None, min_length=3, max_length=3)
    payload: dict[str, Any] = Field(default_factory=dict)

    def kafka_key(self) -> bytes:
        return f"{self.tenant_id}:{self.campaign_id}:{self.customer_ref}".encode()


class AuditEvent(Envelope):
    """An auditable action; system-level ones carry no tenant."""

    type: Literal["audit.event"] = "audit.event"
    tenant_id: uuid.UUID | None = None  # type: ignore[assignment]
    actor_type: Literal["system", "operator", "user", "platform"]
    actor_id: str | None = None
    action: str = Field(min_length=1, max_length=200)
    resource_type: str | None = None
    resource_id: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def kafka_key(self) -> bytes:
        return str(self.tenant_id or "system").encode()


class DeadLetter(Envelope):
    """A record no consumer could process, kept with its reason and source coordinates."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    type: Literal["dead_letter"] = "dead_letter"
    tenant_id: uuid.UUID | None = None  # type: ignore[assignment]
    reason: str
    error_class: str | None = None
    consumer_group: str | None = None
    source_topic: str
    source_partition: int = Field(ge=0)
    source_offset: int = Field(ge=0)
    source_timestamp_ms: int | None = None
    original_key: bytes | None = None
    original_value: bytes

    def kafka_key(self) -> bytes:
        return self.original_key or f"{self.source_topic}:{self.source_partition}".encode()


AnyEvent = Annotated[
    MessageInbound | MessageOutbound | MessageStatus | RecoveryEvent | AuditEvent | DeadLetter,
    Field(discriminator="type"),
]

EVENT_MODELS: dict[str, type[Envelope]] = {
    "message.inbound": MessageInbound,
    "message.outbound": MessageOutbound,
    "message.status": MessageStatus,
    "recovery.event": RecoveryEvent,
    "audit.event": AuditEvent,
    "dead_letter": DeadLetter,
}
