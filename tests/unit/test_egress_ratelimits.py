"""Egress pacing per platform, driven by a fake clock whose sleep advances it."""

from __future__ import annotations

import uuid

import pytest

from services.workers.egress.ratelimits import EgressLimits
from shared.events import MessageOutbound
from shared.integrations import Integration
from shared.settings import Settings, load_settings


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


CREDENTIALS = {
    "telegram": {"bot_token": "123:secret", "secret_token": "s"},
    "slack": {"signing_secret": "s", "bot_token": "xoxb-1"},
    "whatsapp": {
        "app_secret": "a",
        "verify_token": "v",
        "access_token": "t",
        "phone_number_id": "555",
    },
    "widget": {"allowed_origins": "https://a.example"},
}


def make(channel: str, **credentials: str) -> Integration:
    return Integration(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        channel=channel,  # type: ignore[arg-type]
        name=channel,
        status="active",
        credentials={**CREDENTIALS[channel], **credentials},
    )


def reply(integration: Integration, conversation: str, recipient: str = "u") -> MessageOutbound:
    return MessageOutbound(
        tenant_id=integration.tenant_id,
        integration_id=integration.id,
        channel=integration.channel,
        conversation_key=conversation,
        message_id=str(uuid.uuid4()),
        recipient_id=recipient,
        text="hi",
    )


@pytest.fixture
def time_() -> FakeTime:
    return FakeTime()


def limits(time_: FakeTime, **overrides: object) -> EgressLimits:
    settings: Settings = load_settings(egress_conversation_burst=3, **overrides)
    return EgressLimits(settings, clock=time_.clock, sleep=time_.sleep)


async def waits(
    limits: EgressLimits, integration: Integration, *messages: MessageOutbound
) -> list[float]:
    return [round(await limits.wait_turn(integration, m), 6) for m in messages]


async def test_telegram_chat_gets_a_burst_then_one_per_second(time_: FakeTime) -> None:
    bot = make("telegram")
    paced = limits(time_)
    assert await waits(paced, bot, *[reply(bot, "42")] * 5) == [0, 0, 0, 1.0, 1.0]
    assert await waits(paced, bot, reply(bot, "43")) == [0]  # another chat is not held


async def test_telegram_group_is_paced_at_twenty_a_minute(time_: FakeTime) -> None:
    bot = make("telegram")
    paced = limits(time_)
    assert await waits(paced, bot, *[reply(bot, "-1001")] * 5) == [0, 0, 0, 3.0, 3.0]


async def test_telegram_bot_budget_is_shared_by_its_chats_not_by_other_bots(
    time_: FakeTime,
) -> None:
    bot, same_bot, other = make("telegram"), make("telegram"), make("telegram", bot_token="9:x")
    paced = limits(time_, egress_telegram_per_bot_per_s=2.0)
    assert await waits(paced, bot, reply(bot, "1"), reply(bot, "2")) == [0, 0]
    # Another integration of the same bot token draws from the same per-bot bucket.
    assert await waits(paced, same_bot, reply(same_bot, "3")) == [0.5]
    assert await waits(paced, other, reply(other, "1")) == [0]


async def test_slack_threads_share_their_channel_bucket(time_: FakeTime) -> None:
    app = make("slack")
    paced = limits(time_, egress_slack_per_channel_per_s=1.0)
    messages = [reply(app, "C1"), reply(app, "C1:1.2"), reply(app, "C1:3.4"), reply(app, "C1")]
    assert await waits(paced, app, *messages) == [0, 0, 0, 1.0]
    assert await waits(paced, app, reply(app, "C2")) == [0]


async def test_whatsapp_pair_rate_and_number_throughput(time_: FakeTime) -> None:
    number = make("whatsapp")
    paced = limits(time_, egress_whatsapp_per_number_per_s=4.0)
    same_user = [reply(number, "u1", "u1")] * 4
    assert await waits(paced, number, *same_user) == [0, 0, 0, 6.0]
    # The number's bucket (4/s, burst 4) refilled during that wait and lent the fourth
    # message one token: three more users go at once, the next waits a quarter second.
    others = [reply(number, f"u{i}", f"u{i}") for i in range(2, 7)]
    assert await waits(paced, number, *others) == [0, 0, 0, 0.25, 0.25]


async def test_a_pause_holds_the_integration_or_one_conversation(time_: FakeTime) -> None:
    app = make("slack")
    paced = limits(time_)
    paced.pause(app, 5.0)
    paced.pause(app, 2.0)  # never shortens
    assert await waits(paced, app, reply(app, "C1")) == [5.0]
    paced.pause(app, 4.0, conversation_key="C1")
    assert await waits(paced, app, reply(app, "C2")) == [0]
    assert await waits(paced, app, reply(app, "C1")) == [4.0]
    other = make("slack")
    paced.pause(app, 10.0)
    assert await waits(paced, other, reply(other, "C1")) == [0]


async def test_widget_is_not_paced(time_: FakeTime) -> None:
    widget = make("widget")
    paced = limits(time_)
    assert await waits(paced, widget, *[reply(widget, "s1")] * 10) == [0] * 10
    assert time_.sleeps == []
