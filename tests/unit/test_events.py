"""The event contract: round trips, keys and clear decode errors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest

from shared.events import (
    Attachment,
    AuditEvent,
    DeadLetter,
    MessageInbound,
    MessageOutbound,
    MessageStatus,
    QuickReply,
    RecoveryEvent,
    StatusError,
    Topics,
    UndecodableEvent,
    decode,
    decode_as,
    derive_event_id,
    encode,
)

TENANT = uuid.UUID("11111111-1111-4111-8111-111111111111")
INTEGRATION = uuid.UUID("22222222-2222-4222-8222-222222222222")
SENT = datetime(2026, 11, 3, 10, 15, 0, tzinfo=UTC)


def inbound(**overrides: object) -> MessageInbound:
    fields: dict[str, object] = {
        "tenant_id": TENANT,
        "integration_id": INTEGRATION,
        "channel": "whatsapp",
        "conversation_key": "15551234567",
        "external_id": "wamid.HBgLMTU1NTEyMzQ1NjcVAgASGBQzQUIzRjA",
        "delivery_id": "entry-1",
        "sender_id": "15551234567",
        "sender_name": "Ada",
        "text": "Where is my order? 🚚",
        "message_type": "image",
        "attachments": [
            Attachment(kind="image", media_id="m1", mime_type="image/jpeg", caption="receipt")
        ],
        "reply_to": "wamid.previous",
        "thread_id": None,
        "sent_at": SENT,
        "raw": {"from": "15551234567", "nested": {"list": [1, 2.5, None, True]}},
    }
    fields.update(overrides)
    return MessageInbound(**fields)  # type: ignore[arg-type]


ALL_EVENTS = [
    inbound(),
    MessageOutbound(
        tenant_id=TENANT,
        integration_id=INTEGRATION,
        channel="telegram",
        conversation_key="-100123",
        message_id="out-1",
        recipient_id="-100123",
        text="Pick one",
        quick_replies=[QuickReply(title="Yes", payload="yes")],
        reply_to="-100123:77",
        origin="flow",
    ),
    MessageStatus(
        tenant_id=TENANT,
        integration_id=INTEGRATION,
        channel="whatsapp",
        conversation_key="15551234567",
        message_id="out-1",
        status="failed",
        status_at=SENT,
        errors=[StatusError(code="131047", title="Re-engagement message")],
    ),
    RecoveryEvent(
        tenant_id=TENANT,
        campaign_id=uuid.uuid4(),
        customer_ref="cus_42",
        event_type="recovered",
        amount_cents=4999,
        currency="EUR",
    ),
    AuditEvent(
        tenant_id=None,
        actor_type="platform",
        action="webhook.rejected",
        metadata={"reason": "bad_signature", "channel": "slack"},
    ),
    DeadLetter(
        reason="invalid event: type: missing",
        source_topic="sb.messages.inbound",
        source_partition=2,
        source_offset=41,
        original_key=b"k",
        original_value=b"\x00\xff not json",
    ),
]


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.type)
def test_every_event_round_trips_through_the_wire_format(event: object) -> None:
    data = encode(event)  # type: ignore[arg-type]
    assert decode(data) == event
    assert decode_as(data, type(event)) == event  # type: ignore[arg-type]


def test_envelope_is_flat_with_the_body_beside_it() -> None:
    obj = orjson.loads(encode(inbound()))
    for key in (
        "event_id",
        "type",
        "schema_version",
        "tenant_id",
        "occurred_at",
        "integration_id",
        "external_id",
        "sent_at",
        "raw",
    ):
        assert key in obj
    assert obj["type"] == "message.inbound"
    assert obj["schema_version"] == 1


def test_events_are_frozen() -> None:
    event = inbound()
    with pytest.raises(Exception, match="frozen"):
        event.text = "changed"  # type: ignore[misc]


def test_one_conversation_has_one_key_and_different_conversations_differ() -> None:
    a, b = inbound(), inbound(external_id="other")
    assert a.kafka_key() == b.kafka_key() == f"{TENANT}:15551234567".encode()
    assert inbound(conversation_key="other").kafka_key() != a.kafka_key()
    other_tenant = inbound(tenant_id=uuid.uuid4())
    assert other_tenant.kafka_key() != a.kafka_key()


def test_derived_event_ids_are_stable_per_platform_identity() -> None:
    assert derive_event_id("telegram", 5, 10) == derive_event_id("telegram", 5, 10)
    assert derive_event_id("telegram", 5, 10) != derive_event_id("telegram", 5, 11)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"type": "message.unknown"}', "type"),
        (orjson.dumps({**orjson.loads(encode(inbound())), "channel": "fax"}), "channel"),
        (
            orjson.dumps({**orjson.loads(encode(inbound())), "sent_at": "2026-11-03T10:15:00"}),
            "sent_at",
        ),
        (orjson.dumps({**orjson.loads(encode(inbound())), "schema_version": 2}), "newer"),
        (orjson.dumps({**orjson.loads(encode(inbound())), "surprise": 1}), "surprise"),
    ],
    ids=[
        "garbage",
        "array",
        "unknown-type",
        "bad-channel",
        "naive-time",
        "future-version",
        "extra-field",
    ],
)
def test_bad_bytes_are_refused_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(UndecodableEvent, match=reason):
        decode(data)


def test_decode_as_refuses_another_event_type() -> None:
    with pytest.raises(UndecodableEvent):
        decode_as(encode(ALL_EVENTS[1]), MessageInbound)


def test_topics_route_every_event_type_and_honour_the_prefix() -> None:
    topics = Topics(prefix="acme.")
    assert topics.all() == (
        "acme.messages.inbound",
        "acme.messages.outbound",
        "acme.messages.status",
        "acme.recovery.events",
        "acme.audit.events",
        "acme.dlq",
        "acme.messages.outbound.retry.0",
        "acme.messages.outbound.retry.1",
        "acme.messages.outbound.retry.2",
        "acme.widget.replies",
    )
    assert [topics.for_event(e) for e in ALL_EVENTS] == list(topics.all())[:6]
    with pytest.raises(ValueError, match="retry tier"):
        topics.outbound_retry(3)
