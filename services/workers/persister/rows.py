"""Pure mapping from events to the rows the persister stages (no database here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.workers.consumer import Item
from shared.events import STATUS_RANK, MessageInbound, MessageOutbound, MessageStatus

MESSAGE_COLUMNS = (
    "tenant_id",
    "integration_id",
    "channel",
    "direction",
    "external_id",
    "conversation_key",
    "sender_id",
    "sender_name",
    "text",
    "message_type",
    "attachments",
    "reply_to",
    "thread_id",
    "status",
    "status_rank",
    "edited_at",
    "event_id",
    "payload",
    "sent_at",
)
STATUS_COLUMNS = (
    "tenant_id",
    "integration_id",
    "ref",
    "conversation_key",
    "status",
    "status_rank",
    "status_at",
    "platform_message_id",
    "errors",
    "event_id",
)


def message_row(event: MessageInbound | MessageOutbound) -> tuple[Any, ...]:
    """One ``channel_messages`` row per message event, in MESSAGE_COLUMNS order."""
    attachments = [a.model_dump(mode="json", exclude_none=True) for a in event.attachments]
    if isinstance(event, MessageInbound):
        return (
            event.tenant_id,
            event.integration_id,
            event.channel,
            "inbound",
            event.external_id,
            event.conversation_key,
            event.sender_id,
            event.sender_name,
            event.text,
            event.message_type,
            attachments,
            event.reply_to,
            event.thread_id,
            None,
            None,
            event.edited_at,
            event.event_id,
            event.raw,
            event.sent_at,
        )
    payload = {
        "recipient_id": event.recipient_id,
        "origin": event.origin,
        "quick_replies": [q.model_dump() for q in event.quick_replies],
        "in_reply_to_event": str(event.in_reply_to_event) if event.in_reply_to_event else None,
    }
    return (
        event.tenant_id,
        event.integration_id,
        event.channel,
        "outbound",
        event.message_id,
        event.conversation_key,
        None,
        None,
        event.text,
        event.message_type,
        attachments,
        event.reply_to,
        event.thread_id,
        "queued",
        STATUS_RANK["queued"],
        None,
        event.event_id,
        payload,
        event.sent_at,
    )


def status_row(event: MessageStatus) -> tuple[Any, ...]:
    return (
        event.tenant_id,
        event.integration_id,
        event.message_id,
        event.conversation_key,
        event.status,
        STATUS_RANK[event.status],
        event.status_at,
        event.platform_message_id,
        [e.model_dump(mode="json", exclude_none=True) for e in event.errors],
        event.event_id,
    )


def split(items: Sequence[Item]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[Item]]:
    """Message rows, status rows, and items of a type this role does not store."""
    messages, statuses, foreign = [], [], []
    for item in items:
        event = item.event
        if isinstance(event, MessageInbound | MessageOutbound):
            messages.append(message_row(event))
        elif isinstance(event, MessageStatus):
            statuses.append(status_row(event))
        else:
            foreign.append(item)
    return messages, statuses, foreign
