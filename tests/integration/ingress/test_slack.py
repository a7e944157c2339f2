"""The Slack adapter against the real ingress, a real database and a real broker.

Requests are signed exactly as Slack signs them (``v0`` HMAC of the raw body computed by
slack-sdk's SignatureVerifier) and use the Events API payload shapes from Slack's docs.
"""

from __future__ import annotations

import itertools
import time
import urllib.parse
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client import REGISTRY
from slack_sdk.signature import SignatureVerifier

from services.ingress.adapters.slack import SlackAdapter, slack_time
from services.ingress.pipeline import Rejected, WebhookRequest
from shared.events import AuditEvent, MessageInbound
from shared.integrations import Integration
from shared.settings import Settings

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
OUR_APP, OUR_BOT_ID, OUR_BOT_USER = "A0OURAPP01", "B0OURBOT01", "U0OURBOT01"
CREDENTIALS = {
    "signing_secret": SECRET,
    "bot_token": "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy",
    "app_id": OUR_APP,
    "bot_id": OUR_BOT_ID,
    "bot_user_id": OUR_BOT_USER,
}
TEAM, CHANNEL, ALICE = "T0SWITCHB1", "C0LAN2Q65", "U2147483697"
MAX_BODY = 64 * 1024
_counter = itertools.count(1)


@pytest.fixture
def ingress_settings(ingress_settings: Settings) -> Settings:
    """A smaller body limit, so the 413 test need not send a megabyte."""
    return ingress_settings.model_copy(update={"max_body_bytes": MAX_BODY})


@pytest.fixture
async def slack(make_integration) -> Integration:
    return await make_integration("slack", dict(CREDENTIALS))


# -- building and signing requests as Slack does ---------------------------------------------


def new_ts(offset_s: float = 0.0) -> str:
    """A Slack message ts ("1355517523.000005") near now, unique within the run."""
    now = time.time() + offset_s
    return f"{int(now)}.{(next(_counter) * 37) % 1_000_000:06d}"


def slack_headers(
    body: bytes,
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    content_type: str = "application/json",
    retry: int | None = None,
) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "Content-Type": content_type,
        "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": SignatureVerifier(secret).generate_signature(
            timestamp=stamp, body=body
        ),
    }
    if retry is not None:
        headers["X-Slack-Retry-Num"] = str(retry)
        headers["X-Slack-Retry-Reason"] = "http_timeout"
    return headers


def envelope(event: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
    """The Events API wrapper around one event."""
    return {
        "token": "XXYYZZ",
        "team_id": TEAM,
        "api_app_id": OUR_APP,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": int(time.time()),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": TEAM,
                "user_id": OUR_BOT_USER,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": "4-eyJldCI6Im1lc3NhZ2UiLCJ0aWQiOiJUMDAwMDAwMDAwMCJ9",
    }


def user_message(text: str, ts: str, **extra: Any) -> dict[str, Any]:
    return {
        "client_msg_id": str(uuid.uuid4()),
        "type": "message",
        "text": text,
        "user": ALICE,
        "ts": ts,
        "team": TEAM,
        "blocks": [
            {
                "type": "rich_text",
                "block_id": "Ya1b",
                "elements": [
                    {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}
                ],
            }
        ],
        "channel": CHANNEL,
        "event_ts": ts,
        "channel_type": "channel",
        **extra,
    }


async def post(
    url: str, body: bytes, headers: dict[str, str] | None = None, **sign: Any
) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers or slack_headers(body, **sign)) as resp,
    ):
        return resp.status, await resp.text()


def route(ingress, integration_id: object) -> str:
    return f"{ingress.url}/webhooks/slack/{integration_id}"


async def send(ingress, integration: Integration, payload: dict[str, Any], **sign: Any) -> str:
    """Post a signed Events API payload and insist on a 200; returns the answer's text."""
    status, text = await post(route(ingress, integration.id), orjson.dumps(payload), **sign)
    assert status == 200, text
    return text


async def inbound(ingress, *, expect: int, settle: float = 1.0) -> list[MessageInbound]:
    events = await ingress.events(ingress.topics.inbound, expect=expect, settle=settle)
    assert all(isinstance(e, MessageInbound) for e in events)
    return events  # type: ignore[return-value]


async def only_sentinel(ingress, integration: Integration) -> None:
    """Publish one plain message and check it is the only event on the topic: whatever
    was sent before it was not published (and had time to arrive if it had been)."""
    await send(ingress, integration, envelope(user_message("sentinel", new_ts())))
    events = await inbound(ingress, expect=1)
    assert [e.text for e in events] == ["sentinel"]


def ignored(kind: str) -> float:
    labels = {"channel": "slack", "kind": kind}
    return REGISTRY.get_sample_value("switchboard_ingress_ignored_updates_total", labels) or 0.0


def rejected(reason: str) -> float:
    labels = {"channel": "slack", "reason": reason}
    return REGISTRY.get_sample_value("switchboard_ingress_rejections_total", labels) or 0.0


# -- the handshake ------------------------------------------------------------------------------


async def test_url_verification_is_answered_with_the_challenge(ingress, slack) -> None:
    challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    payload = {
        "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl",
        "challenge": challenge,
        "type": "url_verification",
    }
    assert await send(ingress, slack, payload) == challenge

    body = orjson.dumps(payload)
    status, _ = await post(route(ingress, slack.id), body, secret="not-the-signing-secret")
    assert status == 401  # the challenge is only answered after the signature check
    await only_sentinel(ingress, slack)


# -- messages -----------------------------------------------------------------------------------


async def test_channel_message_becomes_message_inbound(ingress, slack) -> None:
    ts = new_ts()
    payload = envelope(user_message("Hello world", ts, user_profile={"real_name": "Alice"}))
    assert orjson.loads(await send(ingress, slack, payload)) == {"ok": True}

    [event] = await inbound(ingress, expect=1)
    assert event.type == "message.inbound"
    assert (event.tenant_id, event.integration_id) == (slack.tenant_id, slack.id)
    assert event.channel == "slack"
    assert event.external_id == f"{CHANNEL}:{ts}"
    assert event.conversation_key == CHANNEL
    assert event.thread_id is None and event.reply_to is None
    assert event.sender_id == ALICE and event.sender_name == "Alice"
    assert event.text == "Hello world" and event.message_type == "text"
    assert event.sent_at == slack_time(ts)
    assert event.delivery_id == payload["event_id"]
    assert event.edited_at is None
    assert event.raw["event"]["ts"] == ts
    assert "token" not in event.raw  # Slack's verification token stays out of the event


async def test_threaded_reply_is_its_own_conversation(ingress, slack) -> None:
    parent, reply = new_ts(-60), new_ts()
    payload = envelope(user_message("a reply", reply, thread_ts=parent, parent_user_id=ALICE))
    await send(ingress, slack, payload)

    [event] = await inbound(ingress, expect=1)
    assert event.external_id == f"{CHANNEL}:{reply}"
    assert event.conversation_key == f"{CHANNEL}:{parent}"
    assert event.thread_id == parent
    assert event.reply_to == f"{CHANNEL}:{parent}"
    assert event.sent_at == slack_time(reply)


async def test_file_share_carries_its_files_as_attachments(ingress, slack) -> None:
    ts = new_ts()
    files = [
        {
            "id": "F0S43PZDF",
            "created": int(time.time()),
            "name": "diagram.png",
            "title": "diagram",
            "mimetype": "image/png",
            "filetype": "png",
            "size": 24377,
            "mode": "hosted",
            "url_private": "https://files.slack.com/files-pri/T0SWITCHB1-F0S43PZDF/diagram.png",
            "url_private_download": "https://files.slack.com/files-pri/T0SWITCHB1-F0S43PZDF/download/diagram.png",
        }
    ]
    message = user_message("", ts, subtype="file_share", files=files, upload=False)
    await send(ingress, slack, envelope(message))

    [event] = await inbound(ingress, expect=1)
    assert event.message_type == "image" and event.text is None
    [attachment] = event.attachments
    assert attachment.kind == "image" and attachment.media_id == "F0S43PZDF"
    assert attachment.file_name == "diagram.png" and attachment.size_bytes == 24377
    assert attachment.url == files[0]["url_private_download"]


async def test_app_mention_and_message_for_one_ts_publish_one_event(ingress, slack) -> None:
    ts = new_ts()
    text = f"<@{OUR_BOT_USER}> is it everything a river should be?"
    message = envelope(user_message(text, ts), event_id="Ev0MESSAGE1")
    mention = envelope(
        {
            "type": "app_mention",
            "user": ALICE,
            "text": text,
            "ts": ts,
            "channel": CHANNEL,
            "event_ts": ts,
        },
        event_id="Ev0MENTION1",
    )
    await send(ingress, slack, mention)
    await send(ingress, slack, message)

    [event] = await inbound(ingress, expect=1, settle=2.0)
    assert event.external_id == f"{CHANNEL}:{ts}" and event.text == text
    assert event.delivery_id == "Ev0MENTION1"  # the first delivery wins


async def test_message_changed_is_an_edit_of_the_original(ingress, slack) -> None:
    ts, edit_ts = new_ts(-30), new_ts()
    await send(ingress, slack, envelope(user_message("Hello wrold", ts)))
    original = user_message("Hello wrold", ts)
    changed = {
        "type": "message",
        "subtype": "message_changed",
        "hidden": True,
        "message": {
            **{k: original[k] for k in ("client_msg_id", "type", "user", "team", "ts")},
            "text": "Hello world",
            "edited": {"user": ALICE, "ts": edit_ts},
        },
        "channel": CHANNEL,
        "previous_message": {
            k: original[k] for k in ("client_msg_id", "type", "text", "user", "ts", "team")
        },
        "event_ts": edit_ts,
        "ts": edit_ts,
        "channel_type": "channel",
    }
    edit = envelope(changed)
    await send(ingress, slack, edit)
    await send(ingress, slack, edit, retry=1)  # Slack's retry of the edit

    first, second = await inbound(ingress, expect=2, settle=2.0)
    assert second.external_id == first.external_id == f"{CHANNEL}:{ts}"
    assert second.event_id != first.event_id
    assert (first.text, first.edited_at) == ("Hello wrold", None)
    assert second.text == "Hello world"
    assert second.edited_at == slack_time(edit_ts)
    assert second.sent_at == slack_time(ts)
    assert second.conversation_key == CHANNEL


async def test_retry_with_the_same_event_is_published_once(ingress, slack) -> None:
    payload = envelope(user_message("are you there?", new_ts()))
    await send(ingress, slack, payload)
    # Slack re-sends the same payload, signed again with a fresh timestamp.
    await send(ingress, slack, payload, retry=1)
    await send(ingress, slack, payload, retry=2)

    [event] = await inbound(ingress, expect=1, settle=2.0)
    assert event.delivery_id == payload["event_id"]


# -- acknowledged but not published ---------------------------------------------------------


async def test_other_bots_messages_are_ignored(ingress, slack) -> None:
    before = ignored("bot_message")
    bot_message = {
        "type": "message",
        "subtype": "bot_message",
        "ts": new_ts(),
        "text": "Pushing is the answer",
        "bot_id": "BB12033",
        "username": "github",
        "icons": {},
        "channel": CHANNEL,
        "event_ts": new_ts(),
        "channel_type": "channel",
    }
    modern_bot = {
        "type": "message",
        "text": "build passed",
        "user": "U0OTHERBOT",
        "bot_id": "B0OTHERBOT",
        "app_id": "A0OTHERAPP",
        "bot_profile": {"id": "B0OTHERBOT", "app_id": "A0OTHERAPP", "name": "ci"},
        "ts": new_ts(),
        "channel": CHANNEL,
        "channel_type": "channel",
    }
    for event in (bot_message, modern_bot):
        assert orjson.loads(await send(ingress, slack, envelope(event))) == {"ok": True}
    assert ignored("bot_message") == before + 2
    await only_sentinel(ingress, slack)


async def test_our_own_apps_messages_are_ignored(ingress, slack) -> None:
    before = ignored("own_message")
    ts = new_ts()
    our_reply = {
        "type": "message",
        "text": "Hi! How can I help?",
        "user": OUR_BOT_USER,
        "bot_id": OUR_BOT_ID,
        "app_id": OUR_APP,
        "bot_profile": {"id": OUR_BOT_ID, "app_id": OUR_APP, "name": "switchboard"},
        "ts": ts,
        "thread_ts": new_ts(-10),
        "channel": CHANNEL,
        "channel_type": "channel",
    }
    # Posted by our app with a user token: no bot_id, but our app_id.
    as_user = user_message("posted by the app for a person", new_ts(), app_id=OUR_APP)
    # Our bot user speaking, with only the bot user id to recognise it.
    bot_user = user_message("from our bot user", new_ts(), user=OUR_BOT_USER)
    # An edit of our own message (chat.update).
    our_edit = {
        "type": "message",
        "subtype": "message_changed",
        "hidden": True,
        "message": {**our_reply, "text": "edited", "edited": {"user": OUR_BOT_USER, "ts": ts}},
        "channel": CHANNEL,
        "ts": new_ts(),
    }
    for event in (our_reply, as_user, bot_user, our_edit):
        await send(ingress, slack, envelope(event))
    assert ignored("own_message") == before + 4
    await only_sentinel(ingress, slack)


async def test_other_event_types_and_subtypes_are_acknowledged_only(ingress, slack) -> None:
    reaction = {
        "type": "reaction_added",
        "user": ALICE,
        "reaction": "thumbsup",
        "item_user": "U0G9QF9C6",
        "item": {"type": "message", "channel": CHANNEL, "ts": new_ts(-5)},
        "event_ts": new_ts(),
    }
    join = {
        "type": "message",
        "subtype": "channel_join",
        "ts": new_ts(),
        "user": ALICE,
        "text": f"<@{ALICE}> has joined the channel",
        "channel": CHANNEL,
        "channel_type": "channel",
    }
    deleted = {
        "type": "message",
        "subtype": "message_deleted",
        "hidden": True,
        "channel": CHANNEL,
        "ts": new_ts(),
        "deleted_ts": new_ts(-5),
    }
    unfurl_ts = new_ts(-5)
    unfurl = {  # a link preview added to a message: no "edited", same text
        "type": "message",
        "subtype": "message_changed",
        "hidden": True,
        "message": {**user_message("see https://example.com", unfurl_ts), "attachments": []},
        "previous_message": user_message("see https://example.com", unfurl_ts),
        "channel": CHANNEL,
        "ts": new_ts(),
    }
    kinds = ["reaction_added", "channel_join", "message_deleted", "message_changed_unedited"]
    before = {kind: ignored(kind) for kind in kinds}
    for event in (reaction, join, deleted, unfurl):
        assert orjson.loads(await send(ingress, slack, envelope(event))) == {"ok": True}
    assert {kind: ignored(kind) - before[kind] for kind in kinds} == dict.fromkeys(kinds, 1)
    await only_sentinel(ingress, slack)


# -- interactivity ------------------------------------------------------------------------------


async def test_button_click_becomes_a_callback(ingress, slack) -> None:
    message_ts, action_ts = new_ts(-60), new_ts()
    payload = {
        "type": "block_actions",
        "team": {"id": TEAM, "domain": "switchboard"},
        "user": {"id": ALICE, "username": "alice", "name": "alice", "team_id": TEAM},
        "api_app_id": OUR_APP,
        "token": "9s8d9as89d8as9d8as989",
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": CHANNEL,
            "is_ephemeral": False,
        },
        "trigger_id": "12321423423.333649436676.d8c1bb837935619ccad0f624c448ffb3",
        "channel": {"id": CHANNEL, "name": "support"},
        "message": {"type": "message", "user": OUR_BOT_USER, "ts": message_ts, "text": "Pick"},
        "response_url": "https://hooks.slack.com/actions/T0SWITCHB1/1/abc",
        "actions": [
            {
                "action_id": "WaXA",
                "block_id": "=qXel",
                "text": {"type": "plain_text", "text": "Yes", "emoji": True},
                "value": "answer:yes",
                "type": "button",
                "action_ts": action_ts,
            }
        ],
    }
    body = urllib.parse.urlencode({"payload": orjson.dumps(payload).decode()}).encode()
    headers = slack_headers(body, content_type="application/x-www-form-urlencoded")
    for _ in range(2):  # the second is a retry
        status, text = await post(route(ingress, slack.id), body, headers)
        assert (status, text) == (200, "")

    [event] = await inbound(ingress, expect=1, settle=2.0)
    assert event.message_type == "callback" and event.callback_data == "answer:yes"
    assert event.sender_id == ALICE and event.conversation_key == CHANNEL
    assert event.reply_to == f"{CHANNEL}:{message_ts}"
    assert event.sent_at == slack_time(action_ts)
    assert "token" not in event.raw


# -- refusals -----------------------------------------------------------------------------------


async def test_forged_signature_is_refused_and_nothing_published(ingress, slack) -> None:
    before = rejected("bad_signature")
    body = orjson.dumps(envelope(user_message("forged", new_ts())))
    headers = slack_headers(body)
    headers["X-Slack-Signature"] = "v0=" + "a" * 64
    status, text = await post(route(ingress, slack.id), body, headers)
    assert status == 401 and orjson.loads(text)["error"] == "bad_signature"

    unsigned = {"Content-Type": "application/json"}
    status, text = await post(route(ingress, slack.id), body, unsigned)
    assert status == 401 and orjson.loads(text)["error"] == "bad_signature"

    # The signed body is tampered with after signing.
    tampered = body.replace(b"forged", b"FORGED")
    status, _ = await post(route(ingress, slack.id), tampered, slack_headers(body))
    assert status == 401
    assert rejected("bad_signature") == before + 3

    audit = await ingress.events(ingress.topics.audit, expect=3)
    assert all(isinstance(e, AuditEvent) for e in audit)
    assert {e.metadata["reason"] for e in audit} == {"bad_signature"}  # type: ignore[attr-defined]
    assert {e.tenant_id for e in audit} == {slack.tenant_id}
    await only_sentinel(ingress, slack)


async def test_signature_with_another_secret_is_refused(ingress, slack) -> None:
    body = orjson.dumps(envelope(user_message("wrong secret", new_ts())))
    status, text = await post(
        route(ingress, slack.id), body, secret="0123456789abcdef0123456789abcdef"
    )
    assert status == 401 and orjson.loads(text)["error"] == "bad_signature"
    await only_sentinel(ingress, slack)


async def test_stale_timestamp_is_refused_even_when_validly_signed(ingress, slack) -> None:
    body = orjson.dumps(envelope(user_message("replayed", new_ts(-360))))
    six_minutes_ago = int(time.time()) - 360
    status, text = await post(route(ingress, slack.id), body, timestamp=six_minutes_ago)
    assert status == 401 and orjson.loads(text)["error"] == "stale_timestamp"

    in_the_future = int(time.time()) + 360
    status, text = await post(route(ingress, slack.id), body, timestamp=in_the_future)
    assert status == 401 and orjson.loads(text)["error"] == "stale_timestamp"
    await only_sentinel(ingress, slack)


async def test_unknown_integration_is_404(ingress, slack) -> None:
    body = orjson.dumps(envelope(user_message("hello?", new_ts())))
    for integration_id in (uuid.uuid4(), "not-a-uuid"):
        status, text = await post(route(ingress, integration_id), body)
        assert status == 404 and orjson.loads(text)["error"] == "unknown_integration"


async def test_telegram_integration_on_the_slack_route_is_404(ingress, make_integration) -> None:
    telegram = await make_integration(
        "telegram", {"bot_token": "123456:ABC-DEF1234ghIkl", "secret_token": "s3cr3t-t0ken"}
    )
    body = orjson.dumps(envelope(user_message("hello?", new_ts())))
    status, text = await post(route(ingress, telegram.id), body)
    assert status == 404 and orjson.loads(text)["error"] == "unknown_integration"


async def test_malformed_or_foreign_bodies_are_400(ingress, slack) -> None:
    bodies = [
        b'{"type": "event_callback", "event": {',  # cut short
        b"not json at all",
        b"[1, 2, 3]",  # JSON, not Slack's envelope
        b'{"event": {"type": "message"}}',  # no envelope type
        orjson.dumps({**envelope(user_message("x", new_ts())), "event": "message"}),
        orjson.dumps(envelope(user_message("x", "yesterday"))),  # not a Slack ts
    ]
    for body in bodies:
        status, text = await post(route(ingress, slack.id), body)
        assert status == 400, (body, text)
    form = urllib.parse.urlencode({"payload": "{not json"}).encode()
    headers = slack_headers(form, content_type="application/x-www-form-urlencoded")
    status, _ = await post(route(ingress, slack.id), form, headers)
    assert status == 400
    await only_sentinel(ingress, slack)


async def test_body_over_the_limit_is_413(ingress, slack) -> None:
    body = orjson.dumps(envelope(user_message("x" * (MAX_BODY + 1), new_ts())))
    status, text = await post(route(ingress, slack.id), body)
    assert status == 413 and orjson.loads(text)["error"] == "too_large"
    await only_sentinel(ingress, slack)


# -- the adapter on its own -------------------------------------------------------------------


def _request(body: bytes, headers: dict[str, str]) -> WebhookRequest:
    integration = Integration(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        channel="slack",
        name="unit",
        status="active",
        credentials=dict(CREDENTIALS),
    )
    return WebhookRequest(
        integration=integration,
        method="POST",
        headers=headers,
        query={},
        body=body,
        received_at=datetime.now(UTC),
    )


def test_verify_uses_the_clock_it_is_given() -> None:
    body = orjson.dumps(envelope(user_message("from the past", "1355517523.000005")))
    headers = slack_headers(body, timestamp=1355517523)
    SlackAdapter().verify(_request(body, headers), now=1355517523 + 299)
    with pytest.raises(Rejected) as stale:
        SlackAdapter().verify(_request(body, headers), now=1355517523 + 301)
    assert (stale.value.status, stale.value.reason) == (401, "stale_timestamp")
    with pytest.raises(Rejected) as narrow:
        SlackAdapter(timestamp_tolerance_s=60).verify(_request(body, headers), now=1355517523 + 61)
    assert narrow.value.reason == "stale_timestamp"


def test_slack_ts_keeps_microseconds() -> None:
    assert slack_time("1355517523.000005") == datetime(2012, 12, 14, 20, 38, 43, 5, tzinfo=UTC)
    assert slack_time("1355517523") == datetime(2012, 12, 14, 20, 38, 43, tzinfo=UTC)
