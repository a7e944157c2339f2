"""Each platform's real client (PTB, slack-sdk, aiohttp) against its local stand-in."""

from __future__ import annotations

import uuid

import aiohttp
import pytest

from services.workers.egress import Delivered, Outcome, Permanent, Retry, open_clients
from services.workers.egress import slack as slack_egress
from services.workers.egress import telegram as telegram_egress
from services.workers.egress import whatsapp as whatsapp_egress
from services.workers.egress.slack import SlackClients
from services.workers.egress.telegram import TelegramBots
from shared.events import MessageOutbound, QuickReply
from shared.integrations import Integration
from shared.settings import load_settings
from tests.integration.egress.conftest import (
    PHONE_NUMBER_ID,
    SLACK_TOKEN,
    TELEGRAM_TOKEN,
    WHATSAPP_TOKEN,
    integration,
)
from tests.standins import SlackStandin, TelegramStandin, WhatsAppStandin

CLOSED_PORT_URL = "http://127.0.0.1:9"  # discard port: nothing listens on loopback


def outbound(
    integration: Integration, conversation_key: str, *, recipient_id: str = "u1", **fields: object
) -> MessageOutbound:
    return MessageOutbound(
        tenant_id=integration.tenant_id,
        integration_id=integration.id,
        channel=integration.channel,
        conversation_key=conversation_key,
        message_id=str(uuid.uuid4()),
        recipient_id=recipient_id,
        **{"text": "Hello there", **fields},  # type: ignore[arg-type]
    )


def options(*titles: str) -> tuple[QuickReply, ...]:
    return tuple(QuickReply(title=t, payload=f"pick:{t.lower()}") for t in titles)


def assert_no_secret(outcome: Outcome, integration: Integration) -> None:
    text = repr(outcome).lower()  # SDKs may re-case an error's text
    for secret in integration.credentials.values():
        assert len(secret) >= 6, "test credentials must be long enough to be recognisable"
        assert secret.lower() not in text


# --- Telegram ------------------------------------------------------------------------


async def test_telegram_reply_lands_in_its_chat_topic_and_reply(
    telegram_api: TelegramStandin, telegram_bots: TelegramBots, telegram_integration: Integration
) -> None:
    message = outbound(
        telegram_integration, "-1001234", reply_to="-1001234:77", thread_id="5", text="Hi Ada"
    )
    outcome = await telegram_egress.send(message, telegram_integration, bots=telegram_bots)

    assert outcome == Delivered("-1001234:1001")
    [call] = telegram_api.requests
    assert call.path == f"/bot{TELEGRAM_TOKEN}/sendMessage"
    assert call.credential == TELEGRAM_TOKEN
    assert call.body["chat_id"] == "-1001234"
    assert call.body["text"] == "Hi Ada"
    assert call.body["message_thread_id"] == "5"
    assert call.body["reply_parameters"] == {"message_id": 77, "allow_sending_without_reply": True}
    assert "reply_markup" not in call.body


async def test_telegram_quick_replies_are_an_inline_keyboard(
    telegram_api: TelegramStandin, telegram_bots: TelegramBots, telegram_integration: Integration
) -> None:
    message = outbound(telegram_integration, "4242", quick_replies=options("Yes", "No"))
    outcome = await telegram_egress.send(message, telegram_integration, bots=telegram_bots)

    assert isinstance(outcome, Delivered)
    keyboard = telegram_api.requests[0].body["reply_markup"]["inline_keyboard"]
    assert keyboard == [
        [{"text": "Yes", "callback_data": "pick:yes"}],
        [{"text": "No", "callback_data": "pick:no"}],
    ]


async def test_telegram_payload_over_64_bytes_fails_before_sending(
    telegram_api: TelegramStandin, telegram_bots: TelegramBots, telegram_integration: Integration
) -> None:
    too_long = (QuickReply(title="Long", payload="é" * 33),)  # 66 bytes in UTF-8
    message = outbound(telegram_integration, "4242", quick_replies=too_long)
    outcome = await telegram_egress.send(message, telegram_integration, bots=telegram_bots)

    assert isinstance(outcome, Permanent) and outcome.code == "invalid_message"
    assert "66 bytes" in outcome.reason
    assert telegram_api.requests == []


async def test_telegram_flood_control_is_retried_after_its_time(
    telegram_api: TelegramStandin, telegram_bots: TelegramBots, telegram_integration: Integration
) -> None:
    telegram_api.fail_next(429, retry_after=3)
    outcome = await telegram_egress.send(
        outbound(telegram_integration, "4242"), telegram_integration, bots=telegram_bots
    )
    assert isinstance(outcome, Retry)
    assert outcome.retry_after_s == 3.0
    assert_no_secret(outcome, telegram_integration)


@pytest.mark.parametrize("status", [500, 502])
async def test_telegram_server_errors_are_retried(
    status: int,
    telegram_api: TelegramStandin,
    telegram_bots: TelegramBots,
    telegram_integration: Integration,
) -> None:
    telegram_api.fail_next(status)
    outcome = await telegram_egress.send(
        outbound(telegram_integration, "4242"), telegram_integration, bots=telegram_bots
    )
    assert isinstance(outcome, Retry) and outcome.retry_after_s is None
    assert_no_secret(outcome, telegram_integration)


async def test_telegram_blocked_bot_and_unknown_chat_are_permanent(
    telegram_api: TelegramStandin, telegram_bots: TelegramBots, telegram_integration: Integration
) -> None:
    telegram_api.blocked_chats.add("4242")
    blocked = await telegram_egress.send(
        outbound(telegram_integration, "4242"), telegram_integration, bots=telegram_bots
    )
    telegram_api.fail_next(400, description="Bad Request: chat not found")
    unknown = await telegram_egress.send(
        outbound(telegram_integration, "999"), telegram_integration, bots=telegram_bots
    )

    assert blocked == Permanent("403", "Forbidden: bot was blocked by the user")
    assert unknown == Permanent("400", "Chat not found")  # PTB drops the "Bad Request: "


async def test_telegram_rejected_token_is_permanent_and_never_quoted(
    telegram_api: TelegramStandin, telegram_bots: TelegramBots
) -> None:
    revoked = integration(
        "telegram", {"bot_token": "7000002:AAF-revoked", "secret_token": "hook-secret"}
    )
    outcome = await telegram_egress.send(outbound(revoked, "4242"), revoked, bots=telegram_bots)
    assert isinstance(outcome, Permanent) and outcome.code == "401"
    assert_no_secret(outcome, revoked)

    # Even when the platform echoes the token back, the outcome does not carry it.
    telegram_api.fail_next(400, description=f"Bad Request: token {TELEGRAM_TOKEN} is odd")
    valid = integration("telegram", {"bot_token": TELEGRAM_TOKEN, "secret_token": "hook-secret"})
    echoed = await telegram_egress.send(outbound(valid, "4242"), valid, bots=telegram_bots)
    assert isinstance(echoed, Permanent) and "***" in echoed.reason
    assert_no_secret(echoed, valid)


async def test_telegram_rotated_token_gets_a_new_bot(
    telegram_api: TelegramStandin, telegram_bots: TelegramBots, telegram_integration: Integration
) -> None:
    await telegram_egress.send(
        outbound(telegram_integration, "1"), telegram_integration, bots=telegram_bots
    )
    telegram_api.tokens.add("7000001:AAF-rotated-token")
    rotated = telegram_integration.model_copy(
        update={
            "credentials": {"bot_token": "7000001:AAF-rotated-token", "secret_token": "hook-secret"}
        }
    )
    outcome = await telegram_egress.send(outbound(rotated, "1"), rotated, bots=telegram_bots)
    assert isinstance(outcome, Delivered)
    assert [r.credential for r in telegram_api.requests] == [
        TELEGRAM_TOKEN,
        "7000001:AAF-rotated-token",
    ]


async def test_telegram_timeout_and_refused_connection_are_retried(
    telegram_api: TelegramStandin, telegram_integration: Integration
) -> None:
    telegram_api.stall_next(30)
    slow = TelegramBots(telegram_api.url, timeout_s=0.3)
    unreachable = TelegramBots(CLOSED_PORT_URL, timeout_s=2.0)
    try:
        message = outbound(telegram_integration, "4242")
        timed_out = await telegram_egress.send(message, telegram_integration, bots=slow)
        refused = await telegram_egress.send(message, telegram_integration, bots=unreachable)
    finally:
        await slow.aclose()
        await unreachable.aclose()
    assert timed_out == Retry("Timed out")
    assert isinstance(refused, Retry) and "ConnectError" in refused.reason
    assert_no_secret(timed_out, telegram_integration)
    assert_no_secret(refused, telegram_integration)


# --- Slack ---------------------------------------------------------------------------


async def test_slack_reply_goes_into_its_thread(
    slack_api: SlackStandin, slack_clients: SlackClients, slack_integration: Integration
) -> None:
    threaded = outbound(slack_integration, "C0123:1767225000.000100", thread_id="1767225000.000100")
    top_level = outbound(slack_integration, "C0123", reply_to="C0123:1767225000.000200")

    first = await slack_egress.send(threaded, slack_integration, clients=slack_clients)
    second = await slack_egress.send(top_level, slack_integration, clients=slack_clients)

    assert first == Delivered("1767225600.000001")
    assert second == Delivered("1767225600.000002")
    one, two = slack_api.requests
    assert one.path == "/api/chat.postMessage"
    assert one.credential == SLACK_TOKEN
    assert one.body == {
        "channel": "C0123",
        "text": "Hello there",
        "thread_ts": "1767225000.000100",
    }
    assert two.body == {"channel": "C0123", "text": "Hello there"}


async def test_slack_quick_replies_are_block_buttons(
    slack_api: SlackStandin, slack_clients: SlackClients, slack_integration: Integration
) -> None:
    message = outbound(slack_integration, "C0123", quick_replies=options("Yes", "No"))
    outcome = await slack_egress.send(message, slack_integration, clients=slack_clients)

    assert isinstance(outcome, Delivered)
    body = slack_api.requests[0].body
    assert body["text"] == "Hello there"  # the notification fallback
    section, actions = body["blocks"]
    assert section == {"type": "section", "text": {"type": "mrkdwn", "text": "Hello there"}}
    assert actions["type"] == "actions"
    assert [(b["type"], b["text"]["text"], b["value"]) for b in actions["elements"]] == [
        ("button", "Yes", "pick:yes"),
        ("button", "No", "pick:no"),
    ]


async def test_slack_many_quick_replies_split_into_actions_blocks(
    slack_api: SlackStandin, slack_clients: SlackClients, slack_integration: Integration
) -> None:
    many = tuple(QuickReply(title=f"Option {i} " + "x" * 80, payload=f"p{i}") for i in range(30))
    message = outbound(slack_integration, "C0123", quick_replies=many)
    outcome = await slack_egress.send(message, slack_integration, clients=slack_clients)

    assert isinstance(outcome, Delivered)  # the stand-in enforces Block Kit's limits
    blocks = slack_api.requests[0].body["blocks"]
    assert [len(b["elements"]) for b in blocks if b["type"] == "actions"] == [25, 5]


async def test_slack_rate_limit_is_retried_after_its_time(
    slack_api: SlackStandin, slack_clients: SlackClients, slack_integration: Integration
) -> None:
    slack_api.fail_next(429, retry_after=7)
    outcome = await slack_egress.send(
        outbound(slack_integration, "C0123"), slack_integration, clients=slack_clients
    )
    assert isinstance(outcome, Retry) and outcome.retry_after_s == 7.0
    assert "ratelimited" in outcome.reason
    assert_no_secret(outcome, slack_integration)


@pytest.mark.parametrize("status", [500, 503])
async def test_slack_server_errors_are_retried(
    status: int,
    slack_api: SlackStandin,
    slack_clients: SlackClients,
    slack_integration: Integration,
) -> None:
    slack_api.fail_next(status)
    outcome = await slack_egress.send(
        outbound(slack_integration, "C0123"), slack_integration, clients=slack_clients
    )
    assert isinstance(outcome, Retry) and outcome.retry_after_s is None


async def test_slack_unknown_channel_and_bad_token_are_permanent(
    slack_api: SlackStandin, slack_clients: SlackClients, slack_integration: Integration
) -> None:
    slack_api.channels = {"C0123"}
    missing = await slack_egress.send(
        outbound(slack_integration, "C0999"), slack_integration, clients=slack_clients
    )
    slack_api.fail_next(200, error="not_in_channel")
    outside = await slack_egress.send(
        outbound(slack_integration, "C0123"), slack_integration, clients=slack_clients
    )
    slack_api.fail_next(403, error="account_inactive")
    inactive = await slack_egress.send(
        outbound(slack_integration, "C0123"), slack_integration, clients=slack_clients
    )
    revoked = integration("slack", {"signing_secret": "x" * 8, "bot_token": "xoxb-revoked-9"})
    bad_auth = await slack_egress.send(outbound(revoked, "C0123"), revoked, clients=slack_clients)

    assert isinstance(missing, Permanent) and missing.code == "channel_not_found"
    assert isinstance(outside, Permanent) and outside.code == "not_in_channel"
    assert isinstance(inactive, Permanent) and inactive.code == "account_inactive"
    assert isinstance(bad_auth, Permanent) and bad_auth.code == "invalid_auth"
    assert_no_secret(bad_auth, revoked)
    assert slack_api.requests[-1].credential == "xoxb-revoked-9"


async def test_slack_timeout_and_refused_connection_are_retried(
    slack_api: SlackStandin, slack_integration: Integration
) -> None:
    slack_api.stall_next(30)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as short:
        timed_out = await slack_egress.send(
            outbound(slack_integration, "C0123"),
            slack_integration,
            clients=SlackClients(slack_api.url, session=short),
        )
        refused = await slack_egress.send(
            outbound(slack_integration, "C0123"),
            slack_integration,
            clients=SlackClients(CLOSED_PORT_URL, session=short),
        )
    assert timed_out == Retry("timed out waiting for Slack")
    assert isinstance(refused, Retry) and "Cannot connect" in refused.reason
    assert_no_secret(timed_out, slack_integration)
    assert_no_secret(refused, slack_integration)


# --- WhatsApp ------------------------------------------------------------------------


async def send_whatsapp(
    api: WhatsAppStandin,
    http: aiohttp.ClientSession,
    integration: Integration,
    message: MessageOutbound,
) -> Outcome:
    return await whatsapp_egress.send(
        message, integration, session=http, api_base=api.url, api_version="v21.0"
    )


async def test_whatsapp_text_reply_with_context(
    whatsapp_api: WhatsAppStandin, http: aiohttp.ClientSession, whatsapp_integration: Integration
) -> None:
    message = outbound(
        whatsapp_integration, "15551230000", recipient_id="15551230000", reply_to="wamid.IN1"
    )
    outcome = await send_whatsapp(whatsapp_api, http, whatsapp_integration, message)

    assert isinstance(outcome, Delivered) and outcome.platform_message_id.startswith("wamid.")
    [call] = whatsapp_api.requests
    assert call.path == f"/v21.0/{PHONE_NUMBER_ID}/messages"
    assert call.credential == WHATSAPP_TOKEN
    assert call.headers["Content-Type"] == "application/json"
    assert call.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15551230000",
        "context": {"message_id": "wamid.IN1"},
        "type": "text",
        "text": {"body": "Hello there"},
    }


async def test_whatsapp_up_to_three_quick_replies_are_buttons(
    whatsapp_api: WhatsAppStandin, http: aiohttp.ClientSession, whatsapp_integration: Integration
) -> None:
    replies = (*options("Yes", "No"), QuickReply(title="Talk to a human, please", payload="human"))
    message = outbound(whatsapp_integration, "15551230000", quick_replies=replies)
    outcome = await send_whatsapp(whatsapp_api, http, whatsapp_integration, message)

    assert isinstance(outcome, Delivered)
    interactive = whatsapp_api.requests[0].body["interactive"]
    assert interactive["type"] == "button"
    assert interactive["body"] == {"text": "Hello there"}
    assert [b["reply"] for b in interactive["action"]["buttons"]] == [
        {"id": "pick:yes", "title": "Yes"},
        {"id": "pick:no", "title": "No"},
        {"id": "human", "title": "Talk to a human, pl…"},  # 20 characters
    ]


async def test_whatsapp_more_than_three_quick_replies_are_a_list(
    whatsapp_api: WhatsAppStandin, http: aiohttp.ClientSession
) -> None:
    lister = integration(
        "whatsapp",
        {
            "app_secret": "app-secret",
            "verify_token": "verify-token",
            "access_token": WHATSAPP_TOKEN,
            "phone_number_id": PHONE_NUMBER_ID,
        },
        list_button="Choose",
    )
    message = outbound(lister, "15551230000", quick_replies=options("A", "B", "C", "D", "E"))
    outcome = await send_whatsapp(whatsapp_api, http, lister, message)

    assert isinstance(outcome, Delivered)
    interactive = whatsapp_api.requests[0].body["interactive"]
    assert interactive["type"] == "list"
    assert interactive["action"]["button"] == "Choose"
    [section] = interactive["action"]["sections"]
    assert [r["id"] for r in section["rows"]] == [f"pick:{c}" for c in "abcde"]


async def test_whatsapp_more_than_ten_quick_replies_fail_before_sending(
    whatsapp_api: WhatsAppStandin, http: aiohttp.ClientSession, whatsapp_integration: Integration
) -> None:
    message = outbound(
        whatsapp_integration, "1555", quick_replies=options(*(f"O{i}" for i in range(11)))
    )
    outcome = await send_whatsapp(whatsapp_api, http, whatsapp_integration, message)
    assert isinstance(outcome, Permanent) and outcome.code == "invalid_message"
    assert whatsapp_api.requests == []


@pytest.mark.parametrize(
    ("status", "code", "retry_after"),
    [(429, 130429, 2.0), (400, 131056, None), (500, 131000, None), (503, 131016, None)],
)
async def test_whatsapp_rate_limits_and_server_errors_are_retried(
    status: int,
    code: int,
    retry_after: float | None,
    whatsapp_api: WhatsAppStandin,
    http: aiohttp.ClientSession,
    whatsapp_integration: Integration,
) -> None:
    whatsapp_api.fail_next(status, error=code, retry_after=retry_after)
    outcome = await send_whatsapp(
        whatsapp_api, http, whatsapp_integration, outbound(whatsapp_integration, "1555")
    )
    assert isinstance(outcome, Retry)
    assert outcome.retry_after_s == retry_after
    assert f"code {code}" in outcome.reason
    assert_no_secret(outcome, whatsapp_integration)


@pytest.mark.parametrize(
    ("status", "code"), [(400, 131026), (400, 131047), (400, 100), (403, 10), (401, 190)]
)
async def test_whatsapp_client_errors_are_permanent_with_the_graph_code(
    status: int,
    code: int,
    whatsapp_api: WhatsAppStandin,
    http: aiohttp.ClientSession,
    whatsapp_integration: Integration,
) -> None:
    whatsapp_api.fail_next(status, error=code)
    outcome = await send_whatsapp(
        whatsapp_api, http, whatsapp_integration, outbound(whatsapp_integration, "1555")
    )
    assert isinstance(outcome, Permanent) and outcome.code == str(code)


async def test_whatsapp_bad_token_is_permanent_and_never_quoted(
    whatsapp_api: WhatsAppStandin, http: aiohttp.ClientSession, whatsapp_integration: Integration
) -> None:
    expired = integration(
        "whatsapp",
        {**whatsapp_integration.credentials, "access_token": "EAAGexpiredAccessToken"},
    )
    outcome = await send_whatsapp(whatsapp_api, http, expired, outbound(expired, "1555"))
    assert isinstance(outcome, Permanent) and outcome.code == "190"
    assert whatsapp_api.requests[-1].credential == "EAAGexpiredAccessToken"

    whatsapp_api.fail_next(400, error=100, description=f"bad token {WHATSAPP_TOKEN}")
    echoed = await send_whatsapp(
        whatsapp_api, http, whatsapp_integration, outbound(whatsapp_integration, "1555")
    )
    assert isinstance(echoed, Permanent) and "***" in echoed.reason
    assert_no_secret(echoed, whatsapp_integration)


async def test_whatsapp_timeout_and_refused_connection_are_retried(
    whatsapp_api: WhatsAppStandin, whatsapp_integration: Integration
) -> None:
    whatsapp_api.stall_next(30)
    message = outbound(whatsapp_integration, "1555")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as short:
        timed_out = await send_whatsapp(whatsapp_api, short, whatsapp_integration, message)
        refused = await whatsapp_egress.send(
            message,
            whatsapp_integration,
            session=short,
            api_base=CLOSED_PORT_URL,
            api_version="v21.0",
        )
    assert timed_out == Retry("timed out waiting for WhatsApp")
    assert isinstance(refused, Retry) and "Cannot connect" in refused.reason
    assert_no_secret(refused, whatsapp_integration)


# --- All three through the settings' API bases ---------------------------------------


async def test_open_clients_sends_to_each_platform_from_settings(
    telegram_api: TelegramStandin,
    slack_api: SlackStandin,
    whatsapp_api: WhatsAppStandin,
    telegram_integration: Integration,
    slack_integration: Integration,
    whatsapp_integration: Integration,
) -> None:
    settings = load_settings(
        telegram_api_base=telegram_api.url,
        slack_api_base=slack_api.url,
        whatsapp_api_base=whatsapp_api.url,
    )
    widget = integration("widget", {"allowed_origins": "https://shop.example"})
    async with open_clients(settings) as clients:
        outcomes = [
            await clients.send(outbound(i, key), i)
            for i, key in (
                (telegram_integration, "4242"),
                (slack_integration, "C0123"),
                (whatsapp_integration, "1555"),
            )
        ]
        with pytest.raises(ValueError, match="widget"):
            await clients.send(outbound(widget, "session-1"), widget)
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert [len(api.requests) for api in (telegram_api, slack_api, whatsapp_api)] == [1, 1, 1]
    assert clients.session.closed
