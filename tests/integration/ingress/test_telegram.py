"""Telegram webhooks through the real ingress, built with python-telegram-bot's own objects."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson
import pytest
from aiohttp import ClientSession
from telegram import (
    CallbackQuery,
    Chat,
    ChatMemberOwner,
    ChatMemberUpdated,
    Document,
    Location,
    Message,
    PhotoSize,
    Update,
    User,
)

from shared.events import MessageInbound
from shared.integrations import Integration
from tests.conftest import RunningIngress

SECRET = "s3cret-token_for-webhook"
CHAT = Chat(id=-1001234, type=Chat.SUPERGROUP, title="Support")
ADA = User(id=4242, is_bot=False, first_name="Ada", last_name="Lovelace", username="ada")
SENT = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


@pytest.fixture
async def bot(make_integration) -> Integration:
    return await make_integration("telegram", {"bot_token": "123:ABC", "secret_token": SECRET})


def update(update_id: int, **fields: object) -> bytes:
    return orjson.dumps(Update(update_id=update_id, **fields).to_dict())  # type: ignore[arg-type]


def text_message(message_id: int, text: str, **fields: object) -> Message:
    return Message(message_id=message_id, date=SENT, chat=CHAT, from_user=ADA, text=text, **fields)  # type: ignore[arg-type]


async def post(
    ingress: RunningIngress, integration: Integration, body: bytes, secret: str | None = SECRET
) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    async with (
        ClientSession() as http,
        http.post(
            f"{ingress.url}/webhooks/telegram/{integration.id}", data=body, headers=headers
        ) as resp,
    ):
        return resp.status, await resp.json()


async def test_a_message_becomes_one_normalized_event(
    ingress: RunningIngress, bot: Integration
) -> None:
    reply_target = text_message(10, "earlier")
    body = update(
        501, message=text_message(11, "Where is my order?", reply_to_message=reply_target)
    )
    assert await post(ingress, bot, body) == (200, {"ok": True})
    [event] = await ingress.events(ingress.topics.inbound, expect=1)
    assert isinstance(event, MessageInbound)
    assert (event.tenant_id, event.integration_id, event.channel) == (
        bot.tenant_id,
        bot.id,
        "telegram",
    )
    assert event.external_id == "-1001234:11"
    assert event.conversation_key == "-1001234"
    assert (event.sender_id, event.sender_name) == ("4242", "Ada Lovelace")
    assert (event.text, event.message_type, event.reply_to) == (
        "Where is my order?",
        "text",
        "-1001234:10",
    )
    assert event.sent_at == SENT
    assert event.delivery_id == "501"
    assert event.raw == orjson.loads(body)["message"]


async def test_media_location_edits_channel_posts_and_callbacks(
    ingress: RunningIngress, bot: Integration
) -> None:
    photo = Message(
        message_id=20,
        date=SENT,
        chat=CHAT,
        from_user=ADA,
        caption="receipt",
        photo=(
            PhotoSize("small", "u1", 90, 90, file_size=100),
            PhotoSize("big", "u2", 800, 800, file_size=9000),
        ),
    )
    doc = Message(
        message_id=21,
        date=SENT,
        chat=CHAT,
        from_user=ADA,
        document=Document(
            "doc-id", "u3", file_name="invoice.pdf", mime_type="application/pdf", file_size=1234
        ),
    )
    loc = Message(
        message_id=22,
        date=SENT,
        chat=CHAT,
        from_user=ADA,
        location=Location(longitude=13.4, latitude=52.5),
    )
    edited = Message(
        message_id=11,
        date=SENT,
        chat=CHAT,
        from_user=ADA,
        text="fixed typo",
        edit_date=datetime(2026, 11, 20, 9, 31, tzinfo=UTC),
    )
    channel = Chat(id=-100777, type=Chat.CHANNEL, title="News")
    post_msg = Message(message_id=5, date=SENT, chat=channel, sender_chat=channel, text="hello")
    button = CallbackQuery(
        id="cbq-1",
        from_user=ADA,
        chat_instance="ci",
        data="plan:pro",
        message=text_message(30, "Choose a plan"),
    )
    bodies = [
        update(601, message=photo),
        update(602, message=doc),
        update(603, message=loc),
        update(604, edited_message=edited),
        update(605, channel_post=post_msg),
        update(606, callback_query=button),
    ]
    for body in bodies:
        assert (await post(ingress, bot, body))[0] == 200
    events = await ingress.events(ingress.topics.inbound, expect=6)
    by_id = {e.external_id: e for e in events}
    assert len(events) == 6
    img = by_id["-1001234:20"]
    assert img.message_type == "image" and img.text == "receipt"
    assert [(a.kind, a.media_id, a.size_bytes) for a in img.attachments] == [("image", "big", 9000)]
    pdf = by_id["-1001234:21"].attachments[0]
    assert (pdf.kind, pdf.file_name, pdf.mime_type) == (
        "document",
        "invoice.pdf",
        "application/pdf",
    )
    place = by_id["-1001234:22"]
    assert place.message_type == "location"
    assert (place.attachments[0].latitude, place.attachments[0].longitude) == (52.5, 13.4)
    edit = by_id["-1001234:11"]
    assert edit.text == "fixed typo" and edit.edited_at is not None
    news = by_id["-100777:5"]
    assert (news.conversation_key, news.sender_id, news.sender_name) == (
        "-100777",
        "-100777",
        "News",
    )
    press = by_id["cb:cbq-1"]
    assert (press.message_type, press.callback_data, press.conversation_key) == (
        "callback",
        "plan:pro",
        "-1001234",
    )
    assert press.reply_to == "-1001234:30" and press.sent_at == SENT


async def test_an_edit_is_a_different_event_from_its_message(
    ingress: RunningIngress, bot: Integration
) -> None:
    original = text_message(40, "helo")
    edited = text_message(40, "hello", edit_date=datetime(2026, 11, 20, 9, 40, tzinfo=UTC))
    await post(ingress, bot, update(700, message=original))
    await post(ingress, bot, update(701, edited_message=edited))
    events = await ingress.events(ingress.topics.inbound, expect=2)
    assert [e.text for e in events] == ["helo", "hello"]
    assert events[0].external_id == events[1].external_id
    assert events[0].event_id != events[1].event_id


async def test_redelivery_publishes_the_message_once(
    ingress: RunningIngress, bot: Integration
) -> None:
    body = update(800, message=text_message(50, "only once"))
    results = await asyncio.gather(*(post(ingress, bot, body) for _ in range(3)))
    assert all(status == 200 for status, _ in results)
    await post(ingress, bot, body)
    # The same message under a new update_id (a second delivery) is still one message.
    await post(ingress, bot, update(801, message=text_message(50, "only once")))
    events = await ingress.events(ingress.topics.inbound, expect=1, settle=1.5)
    assert [e.external_id for e in events] == ["-1001234:50"]


async def test_other_update_kinds_are_acknowledged_not_published(
    ingress: RunningIngress, bot: Integration
) -> None:
    owner = ChatMemberOwner(user=ADA, is_anonymous=False)
    member = ChatMemberUpdated(
        chat=CHAT, from_user=ADA, date=SENT, old_chat_member=owner, new_chat_member=owner
    )
    assert (await post(ingress, bot, update(900, my_chat_member=member)))[0] == 200
    assert await ingress.events(ingress.topics.inbound, expect=0, settle=1.0) == []


@pytest.mark.parametrize("secret", [None, "", "wrong-token", SECRET + "x"])
async def test_a_missing_or_wrong_secret_is_401_and_publishes_nothing(
    ingress: RunningIngress, bot: Integration, secret: str | None
) -> None:
    status, body = await post(
        ingress, bot, update(1000, message=text_message(60, "forged")), secret=secret
    )
    assert (status, body["error"]) == (401, "bad_secret")
    assert SECRET not in orjson.dumps(body).decode()
    assert await ingress.events(ingress.topics.inbound, expect=0, settle=0.5) == []


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"update_id": "x"}', b'{"update_id": 1, "message": {"chat": {}}}'],
    ids=["not-json", "array", "bad-update-id", "broken-message"],
)
async def test_malformed_bodies_are_400(
    ingress: RunningIngress, bot: Integration, body: bytes
) -> None:
    status, answer = await post(ingress, bot, body)
    assert (status, answer["error"]) == (400, "malformed")
    assert await ingress.events(ingress.topics.inbound, expect=0, settle=0.5) == []


async def test_unknown_other_channel_and_disabled_integrations_are_404(
    ingress: RunningIngress,
    bot: Integration,
    make_integration,
    store,
) -> None:
    body = update(1100, message=text_message(70, "hi"))
    async with ClientSession() as http:
        for path in ("00000000-0000-4000-8000-000000000000", "not-a-uuid"):
            async with http.post(
                f"{ingress.url}/webhooks/telegram/{path}",
                data=body,
                headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
            ) as resp:
                assert resp.status == 404
    widget = await make_integration("widget", {"allowed_origins": "https://shop.example"})
    assert (await post(ingress, widget, body))[0] == 404
    await store.disable(bot.id)
    await asyncio.sleep(0.6)  # the ingress cache notices within its TTL
    assert (await post(ingress, bot, body))[0] == 404
    assert await ingress.events(ingress.topics.inbound, expect=0, settle=0.5) == []


async def test_a_rotated_secret_is_noticed(
    ingress: RunningIngress, bot: Integration, store
) -> None:
    await store.rotate(bot.id, {"secret_token": "rotated-secret"})
    await asyncio.sleep(0.6)
    body = update(1200, message=text_message(80, "after rotation"))
    assert (await post(ingress, bot, body, secret=SECRET))[0] == 401
    assert (await post(ingress, bot, body, secret="rotated-secret"))[0] == 200
    assert len(await ingress.events(ingress.topics.inbound, expect=1)) == 1


async def test_an_oversized_body_is_413(ingress: RunningIngress, bot: Integration) -> None:
    big = update(1300, message=text_message(90, "x" * (ingress.settings.max_body_bytes + 10)))
    status, answer = await post(ingress, bot, big)
    assert (status, answer["error"]) == (413, "too_large")
    assert await ingress.events(ingress.topics.inbound, expect=0, settle=0.5) == []


async def test_rejections_are_audited_without_secrets(
    ingress: RunningIngress, bot: Integration
) -> None:
    await post(ingress, bot, update(1400, message=text_message(95, "x")), secret="nope")
    [audit] = await ingress.events(ingress.topics.audit, expect=1)
    assert (audit.action, audit.tenant_id, audit.resource_id) == (
        "webhook.rejected",
        bot.tenant_id,
        str(bot.id),
    )
    assert audit.metadata == {"channel": "telegram", "reason": "bad_secret", "status": 401}
    assert "nope" not in orjson.dumps(audit.model_dump(mode="json")).decode()
