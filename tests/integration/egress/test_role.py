"""The egress role end to end: broker, PostgreSQL, platform stand-ins and the real SDKs.

Outbound events go in on ``messages.outbound``; the tests watch what the stand-ins
receive, the status / dead-letter / widget topics, and ``egress_deliveries``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import REGISTRY

from services.workers.egress.role import EGRESS, run_member
from services.workers.persister.role import PERSISTER
from services.workers.runtime import run_role
from shared.db.pool import connect
from shared.events import (
    DeadLetter,
    Envelope,
    MessageOutbound,
    MessageStatus,
    QuickReply,
    Topics,
    decode,
)
from shared.integrations import Integration, IntegrationStore
from shared.kafka import EventPublisher, create_producer
from shared.settings import Settings
from tests.integration.egress.conftest import (
    PHONE_NUMBER_ID,
    SLACK_TOKEN,
    TELEGRAM_TOKEN,
    WHATSAPP_TOKEN,
)
from tests.standins import SlackStandin, TelegramStandin, WhatsAppStandin
from tests.support import read_topic

#: Bounds for waiting on the pipeline: generous, since a loaded 2-core box is slow to
#: form four consumer groups; a passing run never waits this long.
TIMEOUT = 90.0


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture
def egress_settings(
    ingress_settings: Settings,
    telegram_api: TelegramStandin,
    slack_api: SlackStandin,
    whatsapp_api: WhatsAppStandin,
) -> Settings:
    return ingress_settings.model_copy(
        update={
            "worker_linger_ms": 50,
            "worker_session_timeout_ms": 6000,
            "telegram_api_base": telegram_api.url,
            "slack_api_base": slack_api.url,
            "whatsapp_api_base": whatsapp_api.url,
            "egress_retry_delays_s": (0.2, 0.5, 1.0),
            "egress_max_attempts": 3,
            "egress_http_timeout_s": 5.0,
        }
    )


@pytest.fixture
async def publish(egress_settings: Settings, topics: Topics) -> AsyncIterator[Callable[..., Any]]:
    """``await publish(*events)``: each acknowledged by the broker, in order."""
    producer = create_producer(egress_settings)
    await producer.start()
    publisher = EventPublisher(producer, topics)

    async def send(*events: Envelope) -> None:
        for event in events:
            await publisher.publish(event)

    yield send
    await producer.stop()


@pytest.fixture
async def db(egress_settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(egress_settings.require_database_url())
    yield conn
    await conn.close()


@pytest.fixture
async def telegram(make_integration) -> Integration:
    return await make_integration(
        "telegram", {"bot_token": TELEGRAM_TOKEN, "secret_token": "hook-secret"}
    )


@pytest.fixture
async def slack(make_integration) -> Integration:
    return await make_integration(
        "slack", {"signing_secret": "signing-secret", "bot_token": SLACK_TOKEN}
    )


@pytest.fixture
async def whatsapp(make_integration) -> Integration:
    return await make_integration(
        "whatsapp",
        {
            "app_secret": "app-secret",
            "verify_token": "verify-token",
            "access_token": WHATSAPP_TOKEN,
            "phone_number_id": PHONE_NUMBER_ID,
        },
    )


@pytest.fixture
async def widget(make_integration) -> Integration:
    return await make_integration("widget", {"allowed_origins": "https://shop.example"})


@contextlib.asynccontextmanager
async def running(*members: Callable[[asyncio.Event], Awaitable[None]]) -> AsyncIterator[Waiter]:
    """Role members in this event loop until the block ends; a crash fails the wait."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(member(stop)) for member in members]
    try:
        yield Waiter(tasks)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


def egress(settings: Settings) -> Callable[[asyncio.Event], Awaitable[None]]:
    return lambda stop: run_member(settings, stop)


def persister(settings: Settings) -> Callable[[asyncio.Event], Awaitable[None]]:
    return lambda stop: run_role(PERSISTER, settings, stop=stop)


class Waiter:
    def __init__(self, tasks: list[asyncio.Task[None]]) -> None:
        self.tasks = tasks

    async def until(self, condition: Callable[[], Awaitable[bool] | bool], what: str) -> None:
        """Poll ``condition`` until true; fails if a member died or TIMEOUT passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while True:
            for task in self.tasks:
                if task.done():
                    task.result()  # raises the member's error
                    raise AssertionError("a role member exited early")
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.1)


def outbound(
    integration: Integration, conversation_key: str, text: str = "Hello there", **fields: Any
) -> MessageOutbound:
    return MessageOutbound(
        tenant_id=integration.tenant_id,
        integration_id=integration.id,
        channel=integration.channel,
        conversation_key=conversation_key,
        message_id=fields.pop("message_id", None) or f"out-{uuid.uuid4()}",
        recipient_id=fields.pop("recipient_id", conversation_key),
        text=text,
        **fields,
    )


def options(*titles: str) -> tuple[QuickReply, ...]:
    return tuple(QuickReply(title=t, payload=f"pick:{t.lower()}") for t in titles)


async def events(settings: Settings, topic: str, *, expect: int, settle: float = 1.0) -> list[Any]:
    return await read_topic(
        settings.require_kafka(), topic, expect=expect, timeout=TIMEOUT, settle=settle
    )


async def row(db: asyncpg.Connection, message: MessageOutbound) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT * FROM egress_deliveries WHERE tenant_id = $1 AND integration_id = $2 "
        "AND message_id = $3",
        message.tenant_id,
        message.integration_id,
        message.message_id,
    )


async def status_of(db: asyncpg.Connection, message: MessageOutbound) -> str | None:
    found = await row(db, message)
    return found["status"] if found else None


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def statuses_of(found: list[Any], message: MessageOutbound) -> list[MessageStatus]:
    return [e for e in found if isinstance(e, MessageStatus) and e.message_id == message.message_id]


# --- each platform, natively --------------------------------------------------------


async def test_telegram_reply_with_quick_replies_is_sent_and_reported(
    egress_settings: Settings,
    topics: Topics,
    publish,
    db: asyncpg.Connection,
    telegram_api: TelegramStandin,
    telegram: Integration,
) -> None:
    message = outbound(
        telegram, "424242", "Pick one", reply_to="424242:77", quick_replies=options("Yes", "No")
    )
    await publish(message)
    async with running(egress(egress_settings)) as members:
        await members.until(lambda: len(telegram_api.requests) >= 1, "the Telegram call")
        found = await events(egress_settings, topics.status, expect=1)

    [call] = telegram_api.requests
    assert call.path == f"/bot{TELEGRAM_TOKEN}/sendMessage"
    assert call.body["chat_id"] == "424242"
    assert call.body["text"] == "Pick one"
    assert call.body["reply_parameters"] == {"message_id": 77, "allow_sending_without_reply": True}
    assert call.body["reply_markup"]["inline_keyboard"] == [
        [{"text": "Yes", "callback_data": "pick:yes"}],
        [{"text": "No", "callback_data": "pick:no"}],
    ]
    [sent] = found
    assert isinstance(sent, MessageStatus)
    assert (sent.message_id, sent.status, sent.attempt) == (message.message_id, "sent", 1)
    assert sent.platform_message_id == "424242:1001"
    assert (sent.tenant_id, sent.integration_id) == (telegram.tenant_id, telegram.id)
    assert sent.conversation_key == "424242" and sent.errors == ()
    stored = await row(db, message)
    assert stored is not None
    assert (stored["status"], stored["attempts"], stored["platform_message_id"]) == (
        "delivered",
        1,
        "424242:1001",
    )


async def test_slack_reply_goes_into_its_thread_with_block_buttons(
    egress_settings: Settings, topics: Topics, publish, slack_api: SlackStandin, slack: Integration
) -> None:
    message = outbound(
        slack, "C0123:1767225000.000100", "Pick one", quick_replies=options("Yes", "No")
    )
    await publish(message)
    async with running(egress(egress_settings)) as members:
        await members.until(lambda: len(slack_api.requests) >= 1, "the Slack call")
        found = await events(egress_settings, topics.status, expect=1)

    [call] = slack_api.requests
    assert call.path == "/api/chat.postMessage"
    assert call.credential == SLACK_TOKEN
    assert call.body["channel"] == "C0123"
    assert call.body["thread_ts"] == "1767225000.000100"
    section, actions = call.body["blocks"]
    assert section["text"]["text"] == "Pick one"
    assert [(b["type"], b["text"]["text"], b["value"]) for b in actions["elements"]] == [
        ("button", "Yes", "pick:yes"),
        ("button", "No", "pick:no"),
    ]
    [sent] = found
    assert (sent.status, sent.platform_message_id) == ("sent", "1767225600.000001")


async def test_whatsapp_quick_replies_are_interactive_buttons(
    egress_settings: Settings,
    topics: Topics,
    publish,
    whatsapp_api: WhatsAppStandin,
    whatsapp: Integration,
) -> None:
    message = outbound(whatsapp, "15551230000", "Pick one", quick_replies=options("Yes", "No"))
    await publish(message)
    async with running(egress(egress_settings)) as members:
        await members.until(lambda: len(whatsapp_api.requests) >= 1, "the WhatsApp call")
        found = await events(egress_settings, topics.status, expect=1)

    [call] = whatsapp_api.requests
    assert call.path == f"/v21.0/{PHONE_NUMBER_ID}/messages"
    assert call.body["to"] == "15551230000"
    interactive = call.body["interactive"]
    assert interactive["type"] == "button"
    assert [b["reply"] for b in interactive["action"]["buttons"]] == [
        {"id": "pick:yes", "title": "Yes"},
        {"id": "pick:no", "title": "No"},
    ]
    [sent] = found
    assert sent.status == "sent"
    assert sent.platform_message_id and sent.platform_message_id.startswith("wamid.")


async def test_widget_reply_goes_to_the_widget_replies_topic(
    egress_settings: Settings,
    topics: Topics,
    publish,
    db: asyncpg.Connection,
    widget: Integration,
) -> None:
    message = outbound(widget, "visitor-1", "Hi from the bot", quick_replies=options("Ok"))
    await publish(message)
    async with running(egress(egress_settings)) as members:
        await members.until(lambda: _is(status_of(db, message), "delivered"), "the widget reply")
        replies = await events(egress_settings, topics.widget_replies, expect=1)
        found = await events(egress_settings, topics.status, expect=1)

    assert replies == [message]
    [sent] = found
    assert (sent.status, sent.platform_message_id) == ("sent", message.message_id)


# --- transient failures, retries and order ------------------------------------------


async def test_flood_control_429_is_retried_after_its_time_and_delivered_once(
    egress_settings: Settings,
    topics: Topics,
    publish,
    db: asyncpg.Connection,
    telegram_api: TelegramStandin,
    telegram: Integration,
) -> None:
    telegram_api.fail_next(429, retry_after=1)
    message = outbound(telegram, "5005", "Are you there?")
    await publish(message)
    async with running(egress(egress_settings)) as members:
        await members.until(
            lambda: _is(status_of(db, message), "delivered"), "delivery after the 429"
        )
        found = await events(egress_settings, topics.status, expect=2)

    assert len(telegram_api.requests) == 2  # the refused call and the one that went through
    queued, sent = statuses_of(found, message)
    assert (queued.status, queued.attempt) == ("queued", 1)
    [error] = queued.errors
    assert error.code == "rate_limited"
    assert (sent.status, sent.attempt, sent.errors) == ("sent", 2, ())
    stored = await row(db, message)
    assert stored is not None and stored["attempts"] == 2


async def test_server_error_is_retried_through_a_retry_tier_then_delivered(
    egress_settings: Settings,
    topics: Topics,
    publish,
    whatsapp_api: WhatsAppStandin,
    whatsapp: Integration,
) -> None:
    whatsapp_api.fail_next(500)
    message = outbound(whatsapp, "15557770000", "Your order shipped")
    await publish(message)
    async with running(egress(egress_settings)) as members:
        await members.until(lambda: len(whatsapp_api.requests) >= 2, "the retried call")
        found = await events(egress_settings, topics.status, expect=2)
        retried = await events(egress_settings, topics.outbound_retry(0), expect=1, settle=0)

    assert [s.status for s in statuses_of(found, message)] == ["queued", "sent"]
    assert [r.message_id for r in retried] == [message.message_id]
    assert retried[0].attempt == 1
    assert [c.body["text"]["body"] for c in whatsapp_api.requests] == ["Your order shipped"] * 2


async def test_transient_failures_give_up_after_max_attempts(
    egress_settings: Settings,
    topics: Topics,
    publish,
    db: asyncpg.Connection,
    slack_api: SlackStandin,
    slack: Integration,
) -> None:
    slack_api.fail_next(503, times=10)
    message = outbound(slack, "C0999", "Anyone?")
    await publish(message)
    async with running(egress(egress_settings)) as members:
        await members.until(lambda: _is(status_of(db, message), "failed"), "the final failure")
        found = await events(egress_settings, topics.status, expect=3)
        [letter] = await events(egress_settings, topics.dlq, expect=1)

    assert len(slack_api.requests) == egress_settings.egress_max_attempts == 3
    assert [(s.status, s.attempt) for s in statuses_of(found, message)] == [
        ("queued", 1),
        ("queued", 2),
        ("failed", 3),
    ]
    assert statuses_of(found, message)[-1].errors[0].code == "retries_exhausted"
    assert isinstance(letter, DeadLetter)
    assert letter.error_class == "retries_exhausted"
    assert letter.source_topic.startswith(f"{topics.prefix}messages.outbound.retry.")
    assert letter.consumer_group is not None and "egress-retry-" in letter.consumer_group
    assert decode(letter.original_value).message_id == message.message_id  # type: ignore[attr-defined]


async def test_order_in_a_conversation_holds_across_a_retry(
    egress_settings: Settings,
    topics: Topics,
    publish,
    db: asyncpg.Connection,
    telegram_api: TelegramStandin,
    telegram: Integration,
) -> None:
    telegram_api.fail_next(502)
    first, second = outbound(telegram, "777", "first"), outbound(telegram, "777", "second")
    parked_before = sum(counter("switchboard_egress_parked_total", tier=str(n)) for n in range(3))
    await publish(first, second)  # before the role starts: one batch
    async with running(egress(egress_settings)) as members:
        await members.until(
            lambda: _is(status_of(db, second), "delivered"), "the second message's delivery"
        )
        found = await events(egress_settings, topics.status, expect=3)

    texts = [c.body["text"] for c in telegram_api.requests]
    assert texts == ["first", "first", "second"]  # failed, retried, then the one behind it
    parked_after = sum(counter("switchboard_egress_parked_total", tier=str(n)) for n in range(3))
    assert parked_after > parked_before  # the second waited behind the first's retry
    assert [s.status for s in statuses_of(found, first)] == ["queued", "sent"]
    assert [s.status for s in statuses_of(found, second)] == ["sent"]  # parking is no attempt


async def test_a_slow_chat_does_not_hold_up_another_conversation(
    egress_settings: Settings,
    publish,
    db: asyncpg.Connection,
    telegram_api: TelegramStandin,
    telegram: Integration,
) -> None:
    # One batch, and a client timeout far beyond the stall's test window.
    settings = egress_settings.model_copy(
        update={"reply_linger_ms": 1000, "egress_http_timeout_s": 120.0}
    )
    telegram_api.stall_next(300)  # whichever call arrives first hangs until released
    one, two = outbound(telegram, "1001", "one"), outbound(telegram, "1002", "two")
    await publish(one, two)
    async with running(egress(settings)) as members:

        async def one_delivered() -> bool:
            return "delivered" in {await status_of(db, one), await status_of(db, two)}

        await members.until(one_delivered, "the chat that is not stalled")
        assert len(telegram_api.requests) == 2
        assert sorted([await status_of(db, one), await status_of(db, two)]) == [
            "delivered",
            "pending",  # the stalled call is still in flight
        ]
        telegram_api.release_stalls()
        await members.until(
            lambda: _both(db, one, two, "delivered"), "the stalled chat after release"
        )
    assert len(telegram_api.requests) == 2


# --- permanent failures -------------------------------------------------------------


async def test_blocked_bot_is_dead_lettered_with_a_failed_status(
    egress_settings: Settings,
    topics: Topics,
    publish,
    db: asyncpg.Connection,
    telegram_api: TelegramStandin,
    telegram: Integration,
) -> None:
    telegram_api.blocked_chats.add("666")
    message = outbound(telegram, "666", "Hello?")
    await publish(message)
    async with running(egress(egress_settings)) as members:
        await members.until(lambda: _is(status_of(db, message), "failed"), "the failure")
        [letter] = await events(egress_settings, topics.dlq, expect=1)
        found = await events(egress_settings, topics.status, expect=1)

    assert len(telegram_api.requests) == 1  # a permanent failure is not retried
    assert isinstance(letter, DeadLetter)
    assert letter.error_class == "permanent"
    assert "403" in letter.reason and "blocked" in letter.reason.lower()
    assert letter.source_topic == topics.outbound
    assert letter.consumer_group == EGRESS.group_ids(egress_settings)[0]
    assert decode(letter.original_value) == message
    assert letter.original_key == message.kafka_key()
    [failed] = found
    assert (failed.status, failed.attempt) == ("failed", 1)
    assert failed.errors[0].code == "403"
    assert TELEGRAM_TOKEN not in letter.reason


async def test_unknown_and_disabled_integrations_fail_without_a_call(
    egress_settings: Settings,
    topics: Topics,
    publish,
    db: asyncpg.Connection,
    telegram_api: TelegramStandin,
    telegram: Integration,
    store: IntegrationStore,
    make_integration,
) -> None:
    disabled = await make_integration(
        "telegram", {"bot_token": TELEGRAM_TOKEN, "secret_token": "hook-secret"}
    )
    await store.disable(disabled.id)
    to_disabled = outbound(disabled, "31337", "nobody home")
    unknown = outbound(telegram, "31337", "from nowhere").model_copy(
        update={"integration_id": uuid.uuid4()}
    )
    await publish(to_disabled, unknown)
    async with running(egress(egress_settings)) as members:
        letters = await events(egress_settings, topics.dlq, expect=2)
        await members.until(lambda: _is(status_of(db, to_disabled), "failed"), "the failure")
        found = await events(egress_settings, topics.status, expect=2)

    assert telegram_api.requests == []
    assert sorted(letter.error_class for letter in letters) == ["permanent", "unknown_integration"]
    codes = {s.message_id: s.errors[0].code for s in found}
    assert codes == {
        to_disabled.message_id: "integration_disabled",
        unknown.message_id: "unknown_integration",
    }


# --- idempotency --------------------------------------------------------------------


async def test_a_redelivered_outbound_is_not_sent_twice(
    egress_settings: Settings,
    topics: Topics,
    publish,
    db: asyncpg.Connection,
    slack_api: SlackStandin,
    slack: Integration,
) -> None:
    message = outbound(slack, "C0555", "Only once")
    republished = message.model_copy(update={"event_id": uuid.uuid4()})  # the agent, again
    skipped_before = counter("switchboard_egress_duplicates_skipped_total", channel="slack")
    await publish(message)
    async with running(egress(egress_settings)) as members:
        await members.until(lambda: _is(status_of(db, message), "delivered"), "the delivery")
        await publish(message, republished)
        await members.until(
            lambda: (
                counter("switchboard_egress_duplicates_skipped_total", channel="slack")
                >= skipped_before + 2
            ),
            "both copies to be skipped",
        )
        found = await events(egress_settings, topics.status, expect=1, settle=2.0)

    assert len(slack_api.requests) == 1
    assert [s.status for s in statuses_of(found, message)] == ["sent"]


async def test_an_outcome_written_but_not_published_is_published_on_redelivery(
    egress_settings: Settings,
    topics: Topics,
    publish,
    db: asyncpg.Connection,
    telegram_api: TelegramStandin,
    telegram: Integration,
) -> None:
    message = outbound(telegram, "2020", "Sent before a crash")
    # What a crash between the platform's answer and the status publish leaves behind.
    await db.execute(
        "INSERT INTO egress_deliveries (tenant_id, integration_id, message_id, "
        "conversation_key, status, attempts, platform_message_id, reported) "
        "VALUES ($1, $2, $3, $4, 'delivered', 1, '2020:55', false)",
        message.tenant_id,
        message.integration_id,
        message.message_id,
        message.conversation_key,
    )
    await publish(message)
    async with running(egress(egress_settings)) as members:

        async def reported() -> bool:
            found = await row(db, message)
            return found is not None and found["reported"]

        await members.until(reported, "the outcome to be published")
        found = await events(egress_settings, topics.status, expect=1)

    assert telegram_api.requests == []  # published again, not sent again
    [sent] = found
    assert (sent.status, sent.platform_message_id, sent.attempt) == ("sent", "2020:55", 1)


async def test_blockers_park_until_due_a_lost_one_does_not_and_stop_keeps_parked_records(
    egress_settings: Settings,
    topics: Topics,
    publish,
    db: asyncpg.Connection,
    telegram_api: TelegramStandin,
    telegram: Integration,
) -> None:
    async def blocker(conversation_key: str, due_in: str) -> None:
        await db.execute(
            "INSERT INTO egress_deliveries (tenant_id, integration_id, message_id, "
            "conversation_key, status, attempts, next_attempt_at) "
            f"VALUES ($1, $2, $3, $4, 'retrying', 1, now() + interval '{due_in}')",
            telegram.tenant_id,
            telegram.id,
            f"earlier-{conversation_key}",
            conversation_key,
        )

    await blocker("3001", "1 hour")  # its retry comes in an hour: the next one waits
    await blocker("3002", "-2 hours")  # overdue for hours: its retry record is lost
    waiting, free = outbound(telegram, "3001", "behind"), outbound(telegram, "3002", "free")
    await publish(waiting, free)
    tier2 = topics.outbound_retry(2)
    async with running(egress(egress_settings)) as members:
        await members.until(lambda: _is(status_of(db, free), "delivered"), "the free chat")
        await members.until(
            lambda: (
                counter(
                    "switchboard_worker_records_consumed_total", role="egress-retry-2", topic=tier2
                )
                >= 1
            ),
            "the parked record to reach the last tier's loop",
        )
        # Leaving the block stops the member: it must not wait an hour for the record.

    assert [c.body["text"] for c in telegram_api.requests] == ["free"]
    stored = await row(db, waiting)
    assert stored is not None and (stored["status"], stored["attempts"]) == ("retrying", 0)
    # Parked, then handed back on stop (once more if the loop fetched the copy before
    # it stopped): the last copy is after the group's committed offset, kept for later.
    kept = await events(egress_settings, tier2, expect=2)
    assert len(kept) >= 2 and {r.message_id for r in kept} == {waiting.message_id}
    group = EGRESS.group_ids(egress_settings)[3]
    assert group.endswith("egress-retry-2")
    assert await uncommitted(egress_settings, group, tier2) == 1


# --- with the persister -------------------------------------------------------------


async def test_persister_stores_the_outbound_message_and_its_failed_status(
    egress_settings: Settings,
    publish,
    db: asyncpg.Connection,
    telegram_api: TelegramStandin,
    telegram: Integration,
) -> None:
    telegram_api.blocked_chats.add("4040")
    failing = outbound(telegram, "4040", "Hello?")
    fine = outbound(telegram, "4041", "Hi!")
    await publish(failing, fine)
    query = (
        "SELECT status FROM channel_messages WHERE tenant_id = $1 AND direction = 'outbound' "
        "AND external_id = $2"
    )
    async with running(egress(egress_settings), persister(egress_settings)) as members:

        async def stored(message: MessageOutbound, status: str) -> bool:
            return await db.fetchval(query, message.tenant_id, message.message_id) == status

        await members.until(lambda: stored(failing, "failed"), "the failed status in the DB")
        await members.until(lambda: stored(fine, "sent"), "the sent status in the DB")

    found = await db.fetchrow(
        "SELECT text, conversation_key, status_errors FROM channel_messages "
        "WHERE tenant_id = $1 AND external_id = $2",
        failing.tenant_id,
        failing.message_id,
    )
    assert (found["text"], found["conversation_key"]) == ("Hello?", "4040")
    assert [e["code"] for e in found["status_errors"]] == ["403"]
    platform_id = await db.fetchval(
        "SELECT platform_message_id FROM channel_messages "
        "WHERE tenant_id = $1 AND external_id = $2",
        fine.tenant_id,
        fine.message_id,
    )
    assert platform_id is not None and platform_id.startswith("4041:")


# --- helpers ------------------------------------------------------------------------


async def uncommitted(settings: Settings, group: str, topic: str) -> int:
    """Records of ``topic`` after ``group``'s committed offsets (what it has yet to do)."""
    # A consumer of the group that never subscribes: it only reads the group's offsets.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.require_kafka(), group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = await consumer._client._wait_on_metadata(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        ends = await consumer.end_offsets(tps)
        return sum([ends[tp] - (await consumer.committed(tp) or 0) for tp in tps])
    finally:
        await consumer.stop()


async def _is(value: Awaitable[str | None], expected: str) -> bool:
    return await value == expected


async def _both(
    db: asyncpg.Connection, a: MessageOutbound, b: MessageOutbound, status: str
) -> bool:
    return await status_of(db, a) == status and await status_of(db, b) == status
