"""WhatsApp Cloud API webhooks through the real ingress, signed and shaped as Meta sends them.

Payloads follow Meta's ``messages`` webhook reference; bodies are serialized the way Meta
does (non-ASCII escaped) and signed over those exact bytes with the app secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession

from shared.events import MessageInbound, MessageStatus, derive_event_id
from shared.integrations import Integration
from tests.conftest import RunningIngress

APP_SECRET = "9f2c1e7a4b5d6e8f0a1b2c3d4e5f6a7b"
VERIFY_TOKEN = "meatyhamhock-verify-token"
WABA_ID = "102290129340398"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550783881"
SHEENA = ("16505551234", "Sheena Nelson")
JOSE = ("5511987654321", "José Álvarez")
TS = "1749416383"
SENT = datetime(2025, 6, 8, 20, 59, 43, tzinfo=UTC)


@pytest.fixture
async def wa(make_integration) -> Integration:
    return await make_integration(
        "whatsapp",
        {
            "app_secret": APP_SECRET,
            "verify_token": VERIFY_TOKEN,
            "access_token": "EAAJB-access-token",
            "phone_number_id": PHONE_NUMBER_ID,
        },
    )


def wamid(n: int) -> str:
    return f"wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTRBNjU5OUFFRTAzODEw{n:06d}A="


def message(
    n: int, kind: str, content: Any, *, sender: tuple[str, str] = SHEENA, **extra: Any
) -> dict[str, Any]:
    return {
        "from": sender[0],
        "id": wamid(n),
        "timestamp": TS,
        "type": kind,
        kind: content,
        **extra,
    }


def text(n: int, body: str, **kw: Any) -> dict[str, Any]:
    return message(n, "text", {"body": body}, **kw)


def change(
    *,
    messages: list[dict] | None = None,
    statuses: list[dict] | None = None,
    contacts: tuple[tuple[str, str], ...] = (SHEENA,),
    phone_number_id: str = PHONE_NUMBER_ID,
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY_NUMBER, "phone_number_id": phone_number_id},
    }
    if messages is not None:
        value["contacts"] = [
            {"profile": {"name": name}, "wa_id": wa_id} for wa_id, name in contacts
        ]
        value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    return {"value": value, "field": "messages"}


def notification(*entries: list[dict[str, Any]]) -> bytes:
    """One webhook body; each argument is one entry's list of changes. Serialized like Meta
    (non-ASCII escaped), so a re-serialization would not match the signature."""
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": changes} for changes in entries],
    }
    return json.dumps(body).encode()


def single(msg: dict[str, Any]) -> bytes:
    return notification([change(messages=[msg])])


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def status(n: int, state: str, *, ts: str = TS, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": wamid(n),
        "status": state,
        "timestamp": ts,
        "recipient_id": SHEENA[0],
    }
    if state in ("sent", "delivered"):
        item["conversation"] = {
            "id": "a75d17ad06104c51166f948319b03c6a",
            "origin": {"type": "service"},
        }
        item["pricing"] = {"billable": True, "pricing_model": "CBP", "category": "service"}
    return {**item, **extra}


async def post(
    ingress: RunningIngress,
    integration: Integration | str,
    body: bytes,
    signature: str | None = "sign",
) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if signature == "sign":
        signature = sign(body)
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    target = integration.id if isinstance(integration, Integration) else integration
    async with (
        ClientSession() as http,
        http.post(f"{ingress.url}/webhooks/whatsapp/{target}", data=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def handshake(ingress: RunningIngress, target: object, **params: str) -> tuple[int, str, str]:
    query = {
        "hub.mode": "subscribe",
        "hub.challenge": "1158201444",
        "hub.verify_token": VERIFY_TOKEN,
        **params,
    }
    async with (
        ClientSession() as http,
        http.get(f"{ingress.url}/webhooks/whatsapp/{target}", params=query) as resp,
    ):
        return resp.status, resp.content_type, await resp.text()


async def nothing_published(ingress: RunningIngress) -> bool:
    inbound = await ingress.events(ingress.topics.inbound, expect=0, settle=0.5)
    statuses = await ingress.events(ingress.topics.status, expect=0, settle=0.1)
    return inbound == [] and statuses == []


async def test_the_subscription_handshake_echoes_the_challenge(
    ingress: RunningIngress, wa: Integration
) -> None:
    assert await handshake(ingress, wa.id) == (200, "text/plain", "1158201444")
    for params in (
        {"hub.verify_token": "wrong"},
        {"hub.verify_token": ""},
        {"hub.verify_token": VERIFY_TOKEN + "x"},
        {"hub.mode": "unsubscribe"},
    ):
        status_, _, answer = await handshake(ingress, wa.id, **params)
        assert status_ == 403, params
        assert VERIFY_TOKEN not in answer and "1158201444" not in answer
    async with (
        ClientSession() as http,
        http.get(
            f"{ingress.url}/webhooks/whatsapp/{wa.id}",
            params={"hub.mode": "subscribe", "hub.challenge": "1"},
        ) as resp,
    ):
        assert resp.status == 403


async def test_a_text_message_becomes_one_normalized_event(
    ingress: RunningIngress, wa: Integration
) -> None:
    msg = text(1, "Does it come in another color? ¿Y en azul? 👀", sender=JOSE)
    body = notification([change(messages=[msg], contacts=(JOSE,))])
    assert b"\\u00bf" in body  # escaped as Meta does; the signature covers these bytes
    assert await post(ingress, wa, body) == (200, {"ok": True})
    [event] = await ingress.events(ingress.topics.inbound, expect=1)
    assert isinstance(event, MessageInbound)
    assert (event.tenant_id, event.integration_id, event.channel) == (
        wa.tenant_id,
        wa.id,
        "whatsapp",
    )
    assert event.event_id == derive_event_id("whatsapp", wa.id, wamid(1))
    assert (event.external_id, event.conversation_key) == (wamid(1), JOSE[0])
    assert (event.sender_id, event.sender_name) == JOSE
    assert (event.text, event.message_type) == (
        "Does it come in another color? ¿Y en azul? 👀",
        "text",
    )
    assert event.sent_at == SENT and event.reply_to is None and event.attachments == ()
    assert event.raw == msg
    assert event.kafka_key() == f"{wa.tenant_id}:{JOSE[0]}".encode()


async def test_button_and_list_replies_carry_their_ids(
    ingress: RunningIngress, wa: Integration
) -> None:
    context = {"from": DISPLAY_NUMBER, "id": wamid(99)}
    bodies = [
        single(
            message(
                10,
                "interactive",
                {"type": "button_reply", "button_reply": {"id": "plan-pro", "title": "Pro plan"}},
                context=context,
            )
        ),
        single(
            message(
                11,
                "interactive",
                {
                    "type": "list_reply",
                    "list_reply": {"id": "size-m", "title": "Medium", "description": "Fits 38-40"},
                },
                context=context,
            )
        ),
        single(
            message(12, "button", {"payload": "No-Button-Payload", "text": "No"}, context=context)
        ),
    ]
    for body in bodies:
        assert (await post(ingress, wa, body))[0] == 200
    events = await ingress.events(ingress.topics.inbound, expect=3)
    got = sorted(
        (e.external_id, e.message_type, e.callback_data, e.text, e.reply_to) for e in events
    )
    assert got == [
        (wamid(10), "interactive", "plan-pro", "Pro plan", wamid(99)),
        (wamid(11), "interactive", "size-m", "Medium", wamid(99)),
        (wamid(12), "interactive", "No-Button-Payload", "No", wamid(99)),
    ]


async def test_media_and_location_become_attachments(
    ingress: RunningIngress, wa: Integration
) -> None:
    msgs = [
        message(
            20,
            "image",
            {
                "caption": "the scratch",
                "mime_type": "image/jpeg",
                "sha256": "AbCd=",
                "id": "1003383421387256",
            },
        ),
        message(
            21,
            "document",
            {
                "caption": "my invoice",
                "filename": "invoice-0042.pdf",
                "mime_type": "application/pdf",
                "sha256": "EfGh=",
                "id": "1013859600285441",
            },
        ),
        message(
            22,
            "audio",
            {
                "mime_type": "audio/ogg; codecs=opus",
                "sha256": "IjKl=",
                "id": "1146499726917423",
                "voice": True,
            },
        ),
        message(
            23,
            "video",
            {
                "caption": "unboxing",
                "mime_type": "video/mp4",
                "sha256": "MnOp=",
                "id": "1166846181421424",
            },
        ),
        message(
            24,
            "sticker",
            {
                "mime_type": "image/webp",
                "sha256": "QrSt=",
                "id": "1233004211381224",
                "animated": False,
            },
        ),
        message(
            25,
            "location",
            {
                "address": "1 Hacker Way, Menlo Park, CA 94025",
                "latitude": 37.483307,
                "longitude": -122.148981,
                "name": "Meta Headquarters",
            },
        ),
    ]
    for msg in msgs:
        assert (await post(ingress, wa, single(msg)))[0] == 200
    events = {e.external_id: e for e in await ingress.events(ingress.topics.inbound, expect=6)}
    assert len(events) == 6
    image = events[wamid(20)]
    assert (image.message_type, image.text) == ("image", "the scratch")
    [a] = image.attachments
    assert (a.kind, a.media_id, a.mime_type, a.caption) == (
        "image",
        "1003383421387256",
        "image/jpeg",
        "the scratch",
    )
    [a] = events[wamid(21)].attachments
    assert (a.kind, a.media_id, a.file_name, a.mime_type, a.caption) == (
        "document",
        "1013859600285441",
        "invoice-0042.pdf",
        "application/pdf",
        "my invoice",
    )
    assert events[wamid(21)].message_type == "document"
    audio = events[wamid(22)]
    assert (audio.message_type, audio.text) == ("audio", None)
    assert [(a.kind, a.media_id, a.mime_type) for a in audio.attachments] == [
        ("audio", "1146499726917423", "audio/ogg; codecs=opus")
    ]
    assert [(a.kind, a.caption) for a in events[wamid(23)].attachments] == [("video", "unboxing")]
    assert [(a.kind, a.media_id, a.mime_type) for a in events[wamid(24)].attachments] == [
        ("sticker", "1233004211381224", "image/webp")
    ]
    place = events[wamid(25)]
    assert place.message_type == "location"
    [a] = place.attachments
    assert (a.kind, a.latitude, a.longitude, a.name, a.address) == (
        "location",
        37.483307,
        -122.148981,
        "Meta Headquarters",
        "1 Hacker Way, Menlo Park, CA 94025",
    )
    assert all(e.raw == m for m in msgs for e in events.values() if e.external_id == m["id"])


async def test_every_message_of_a_batched_body_is_published(
    ingress: RunningIngress, wa: Integration
) -> None:
    body = notification(
        [
            change(
                messages=[text(30, "one"), text(31, "two", sender=JOSE), text(32, "three")],
                contacts=(SHEENA, JOSE),
            ),
            change(messages=[text(33, "four")]),
        ],
        [
            change(
                messages=[text(34, "five", sender=JOSE), text(35, "six", sender=JOSE)],
                contacts=(JOSE,),
            ),
            change(statuses=[status(36, "delivered")]),
        ],
    )
    assert (await post(ingress, wa, body))[0] == 200
    events = await ingress.events(ingress.topics.inbound, expect=6)
    got = sorted((e.external_id, e.text, e.sender_id, e.sender_name) for e in events)
    assert got == [
        (wamid(30), "one", *SHEENA),
        (wamid(31), "two", *JOSE),
        (wamid(32), "three", *SHEENA),
        (wamid(33), "four", *SHEENA),
        (wamid(34), "five", *JOSE),
        (wamid(35), "six", *JOSE),
    ]
    [receipt] = await ingress.events(ingress.topics.status, expect=1)
    assert (receipt.message_id, receipt.status) == (wamid(36), "delivered")


async def test_statuses_become_status_events(ingress: RunningIngress, wa: Integration) -> None:
    failed = status(
        41,
        "failed",
        errors=[
            {
                "code": 131047,
                "title": "Re-engagement message",
                "message": "Re-engagement message",
                "error_data": {
                    "details": "Message failed to send because more than 24 hours have "
                    "passed since the customer last replied to this number."
                },
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
            }
        ],
    )
    receipts = [
        status(40, "sent", ts="1750857384"),
        status(40, "delivered", ts="1750857386"),
        status(40, "read", ts="1750857390"),
        failed,
    ]
    for item in receipts:
        assert (await post(ingress, wa, notification([change(statuses=[item])])))[0] == 200
    # A redelivered receipt is the same event.
    assert (await post(ingress, wa, notification([change(statuses=[receipts[1]])])))[0] == 200
    events = await ingress.events(ingress.topics.status, expect=4, settle=1.5)
    assert all(isinstance(e, MessageStatus) for e in events)
    by_status = {e.status: e for e in events}
    assert len(events) == 4 and set(by_status) == {"sent", "delivered", "read", "failed"}
    read = by_status["read"]
    assert (read.message_id, read.platform_message_id, read.recipient_id) == (
        wamid(40),
        wamid(40),
        SHEENA[0],
    )
    assert (read.conversation_key, read.channel, read.integration_id) == (
        SHEENA[0],
        "whatsapp",
        wa.id,
    )
    assert read.status_at == datetime(2025, 6, 25, 13, 16, 30, tzinfo=UTC)
    assert read.event_id == derive_event_id("whatsapp", wa.id, wamid(40), "read")
    assert read.raw == receipts[2] and read.errors == ()
    [error] = by_status["failed"].errors
    assert (error.code, error.title) == ("131047", "Re-engagement message")
    assert error.detail is not None and error.detail.startswith("Message failed to send")
    assert by_status["failed"].message_id == wamid(41)
    assert await ingress.events(ingress.topics.inbound, expect=0, settle=0.1) == []


async def test_redelivery_publishes_each_message_once(
    ingress: RunningIngress, wa: Integration
) -> None:
    body = notification([change(messages=[text(50, "only once"), text(51, "me too")])])
    results = await asyncio.gather(*(post(ingress, wa, body) for _ in range(3)))
    assert all(code == 200 for code, _ in results)
    assert (await post(ingress, wa, body))[0] == 200
    # Meta resending one of them alongside a new message: only the new one is new.
    again = notification([change(messages=[text(51, "me too"), text(52, "new")])])
    assert (await post(ingress, wa, again))[0] == 200
    events = await ingress.events(ingress.topics.inbound, expect=3, settle=1.5)
    assert sorted(e.external_id for e in events) == [wamid(50), wamid(51), wamid(52)]


async def test_other_kinds_fields_and_numbers_are_acknowledged_not_published(
    ingress: RunningIngress, wa: Integration
) -> None:
    reaction = message(60, "reaction", {"message_id": wamid(99), "emoji": "\U0001f44d"})
    unsupported = {
        "from": SHEENA[0],
        "id": wamid(61),
        "timestamp": TS,
        "type": "unsupported",
        "errors": [
            {
                "code": 131051,
                "title": "Message type unknown",
                "message": "Message type unknown",
                "error_data": {"details": "Message type is currently not supported."},
            }
        ],
    }
    ours = notification([change(messages=[reaction, unsupported, text(62, "kept")])])
    elsewhere = notification(
        [change(messages=[text(63, "for another number")], phone_number_id="999999999999999")]
    )
    template_update = notification(
        [
            {
                "field": "message_template_status_update",
                "value": {
                    "event": "APPROVED",
                    "message_template_id": 1234,
                    "message_template_name": "hello",
                    "message_template_language": "en_US",
                    "reason": "NONE",
                },
            }
        ]
    )
    for body in (ours, elsewhere, template_update):
        assert await post(ingress, wa, body) == (200, {"ok": True})
    events = await ingress.events(ingress.topics.inbound, expect=1)
    assert [e.external_id for e in events] == [wamid(62)]


@pytest.mark.parametrize(
    "signature",
    [
        "sha256=" + "0" * 64,
        sign(single(text(70, "forged")), secret="another-apps-secret"),
        None,
        "",
        sign(single(text(70, "forged"))).replace("sha256=", "sha1="),
        sign(single(text(70, "forged"))).removeprefix("sha256="),
        sign(single(text(70, "tampered"))),
    ],
    ids=["forged", "other-secret", "missing", "empty", "wrong-scheme", "no-scheme", "tampered"],
)
async def test_a_bad_signature_is_401_and_publishes_nothing(
    ingress: RunningIngress, wa: Integration, signature: str | None
) -> None:
    status_, answer = await post(ingress, wa, single(text(70, "forged")), signature=signature)
    assert (status_, answer["error"]) == (401, "bad_signature")
    assert APP_SECRET not in orjson.dumps(answer).decode()
    assert await nothing_published(ingress)


async def test_unknown_other_channel_and_disabled_integrations_are_404(
    ingress: RunningIngress,
    wa: Integration,
    make_integration,
    store,
) -> None:
    body = single(text(80, "hi"))
    telegram = await make_integration("telegram", {"bot_token": "1:A", "secret_token": "s"})
    for target in ("00000000-0000-4000-8000-000000000000", "not-a-uuid", str(telegram.id)):
        assert (await post(ingress, target, body))[0] == 404
        assert (await handshake(ingress, target))[0] == 404
    await store.disable(wa.id)
    await asyncio.sleep(0.6)  # the ingress cache notices within its TTL
    assert (await post(ingress, wa, body))[0] == 404
    assert (await handshake(ingress, wa.id))[0] == 404
    assert await nothing_published(ingress)


def _with_message(msg: dict[str, Any]) -> bytes:
    return notification([change(messages=[text(90, "valid, but its body is not"), msg])])


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        json.dumps({"object": "page", "entry": []}).encode(),
        json.dumps({"object": "whatsapp_business_account", "entry": {"id": WABA_ID}}).encode(),
        json.dumps(
            {
                "object": "whatsapp_business_account",
                "entry": [
                    {"id": WABA_ID, "changes": [{"field": "messages", "value": {"messages": []}}]}
                ],
            }
        ).encode(),
        _with_message({k: v for k, v in text(91, "x").items() if k != "id"}),
        _with_message({k: v for k, v in text(91, "x").items() if k != "from"}),
        _with_message({k: v for k, v in text(91, "x").items() if k != "timestamp"}),
        _with_message({**text(91, "x"), "timestamp": "yesterday"}),
        _with_message({k: v for k, v in text(91, "x").items() if k != "text"}),
        _with_message(message(91, "image", {"mime_type": "image/jpeg"})),
        _with_message(message(91, "location", {"latitude": 137.5, "longitude": 1.0})),
        notification([change(statuses=[{"id": wamid(92), "status": "read"}])]),
    ],
    ids=[
        "not-json",
        "array",
        "other-object",
        "entry-not-list",
        "no-metadata",
        "message-without-id",
        "message-without-from",
        "message-without-timestamp",
        "bad-timestamp",
        "text-without-text",
        "image-without-id",
        "latitude-out-of-range",
        "status-without-timestamp",
    ],
)
async def test_malformed_bodies_are_400_and_publish_nothing(
    ingress: RunningIngress, wa: Integration, body: bytes
) -> None:
    status_, answer = await post(ingress, wa, body)
    assert (status_, answer["error"]) == (400, "malformed")
    assert await nothing_published(ingress)


async def test_an_oversized_body_is_413(ingress: RunningIngress, wa: Integration) -> None:
    big = single(text(95, "x" * (ingress.settings.max_body_bytes + 10)))
    status_, answer = await post(ingress, wa, big)
    assert (status_, answer["error"]) == (413, "too_large")
    assert await nothing_published(ingress)


async def test_rejections_are_audited_without_secrets(
    ingress: RunningIngress, wa: Integration
) -> None:
    forged = sign(single(text(96, "x")), secret="guess")
    await post(ingress, wa, single(text(96, "x")), signature=forged)
    await handshake(ingress, wa.id, **{"hub.verify_token": "guess"})
    audits = await ingress.events(ingress.topics.audit, expect=2)
    assert sorted((a.metadata["reason"], a.metadata["status"]) for a in audits) == [
        ("bad_signature", 401),
        ("bad_verify_token", 403),
    ]
    assert all((a.tenant_id, a.resource_id) == (wa.tenant_id, str(wa.id)) for a in audits)
    dumped = orjson.dumps([a.model_dump(mode="json") for a in audits]).decode()
    assert "guess" not in dumped and forged.removeprefix("sha256=") not in dumped
