"""The widget page in a real headless Chromium, against the real ingress and broker."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.ingress.widget_sockets import push
from shared.events import MessageInbound
from shared.settings import Settings

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 15


@pytest.fixture
def ingress_settings(ingress_settings: Settings) -> Settings:
    """Three messages per visitor, then the rate limit (refilled once a minute)."""
    return ingress_settings.model_copy(
        update={"widget_rate_limit_burst": 3, "widget_rate_limit_per_minute": 1}
    )


@pytest.fixture
async def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[object]:
    """A headless Chromium driven by selenium (synchronous, so called in a thread)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = (
            f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "1")  # Selenium Manager must never download anything
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = await asyncio.to_thread(webdriver.Chrome, options=options, service=service)
    try:
        yield driver
    finally:
        await asyncio.to_thread(driver.quit)


def _wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition, message=what)


async def wait_for(driver, condition, what: str):
    return await asyncio.to_thread(_wait, driver, condition, what)


def _outgoing(driver) -> list[tuple[str, str | None]]:
    from selenium.webdriver.common.by import By

    return [
        (el.text, el.get_attribute("data-state"))
        for el in driver.find_elements(By.CSS_SELECTOR, "#sb-log .sb-out")
    ]


def _incoming(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [el.text for el in driver.find_elements(By.CSS_SELECTOR, "#sb-log .sb-in")]


async def test_chat_in_a_real_browser(browser, ingress, make_integration) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    integration = await make_integration("widget", {"allowed_origins": "https://shop.example"})
    await asyncio.to_thread(driver.get, f"{ingress.url}/widget/{integration.id}/")
    await wait_for(
        driver,
        lambda d: d.find_element(By.ID, "sb-status").get_attribute("data-state") == "open",
        "the page's WebSocket to say hello",
    )
    root = await asyncio.to_thread(driver.find_element, By.ID, "sb-root")
    session_id = await asyncio.to_thread(root.get_attribute, "data-session-id")
    visitor_id = await asyncio.to_thread(root.get_attribute, "data-visitor-id")
    assert session_id and visitor_id

    # Typed and sent with the button.
    box = await asyncio.to_thread(driver.find_element, By.ID, "sb-input")
    await asyncio.to_thread(box.send_keys, "Hello from a real browser")
    send = await asyncio.to_thread(driver.find_element, By.ID, "sb-send")
    await asyncio.to_thread(send.click)
    await wait_for(
        driver,
        lambda d: _outgoing(d) == [("Hello from a real browser", "sent")],
        "the message to show in the log as sent",
    )

    [event] = await ingress.events(ingress.topics.inbound, expect=1, settle=0.2)
    assert isinstance(event, MessageInbound)
    assert event.channel == "widget"
    assert event.integration_id == integration.id
    assert event.text == "Hello from a real browser"
    assert event.conversation_key == session_id
    assert event.sender_id == visitor_id

    # A reply pushed by the server shows up, with its quick reply as a button.
    reply = {
        "type": "message",
        "text": "Hi! How can we help?",
        "quick_replies": [{"title": "Track my order", "payload": "track_order"}],
    }
    assert await push(ingress.app, integration.id, session_id, reply) == 1
    await wait_for(
        driver, lambda d: _incoming(d) == ["Hi! How can we help?"], "the pushed reply to show"
    )
    button = await wait_for(
        driver,
        lambda d: d.find_element(By.CSS_SELECTOR, "#sb-log .sb-quick button"),
        "the quick reply button",
    )
    assert await asyncio.to_thread(lambda: button.text) == "Track my order"
    await asyncio.to_thread(button.click)
    await wait_for(
        driver,
        lambda d: _outgoing(d)[1:] == [("Track my order", "sent")],
        "the quick reply's payload to be sent",
    )

    # The Enter key sends too.
    await asyncio.to_thread(box.send_keys, "and one more thing", Keys.ENTER)
    await wait_for(
        driver,
        lambda d: (
            _outgoing(d)
            == [
                ("Hello from a real browser", "sent"),
                ("Track my order", "sent"),
                ("and one more thing", "sent"),
            ]
        ),
        "the Enter-sent message to be sent",
    )
    events = await ingress.events(ingress.topics.inbound, expect=3)
    assert [e.text for e in sorted(events, key=lambda e: e.sent_at)] == [
        "Hello from a real browser",
        "track_order",
        "and one more thing",
    ]
    assert {e.conversation_key for e in events} == {session_id}

    # A fourth message is over the visitor's limit: the page says so politely.
    await asyncio.to_thread(box.send_keys, "too fast", Keys.ENTER)
    await wait_for(
        driver,
        lambda d: _outgoing(d)[-1] == ("too fast", "failed"),
        "the rate-limited message to be marked as not sent",
    )
    error = await asyncio.to_thread(driver.find_element, By.ID, "sb-error")
    assert await asyncio.to_thread(error.is_displayed)
    assert "too fast" in await asyncio.to_thread(lambda: error.text)
    assert len(await ingress.events(ingress.topics.inbound, expect=3, settle=0.2)) == 3

    # The same browser keeps its session and visitor across a reload.
    await asyncio.to_thread(driver.refresh)
    await wait_for(
        driver,
        lambda d: d.find_element(By.ID, "sb-status").get_attribute("data-state") == "open",
        "the reloaded page to reconnect",
    )
    root = await asyncio.to_thread(driver.find_element, By.ID, "sb-root")
    assert await asyncio.to_thread(root.get_attribute, "data-session-id") == session_id
    assert await asyncio.to_thread(root.get_attribute, "data-visitor-id") == visitor_id

    # No script error and no Content-Security-Policy violation on the way (the 429 is
    # logged by Chromium as a failed load; it is the one expected).
    console = await asyncio.to_thread(driver.get_log, "browser")
    errors = [e["message"] for e in console if e["level"] == "SEVERE"]
    assert [m for m in errors if "status of 429" not in m] == []
    assert len(errors) == 1


@pytest.fixture
def worker_settings(ingress_settings: Settings) -> Settings:
    return ingress_settings.model_copy(
        update={"worker_linger_ms": 20, "worker_session_timeout_ms": 6000}
    )


async def test_chat_with_a_flow_in_a_real_browser(
    browser, ingress, make_integration, worker_settings: Settings
) -> None:
    """The whole loop: page → ingress → agent (the demo flow) → egress → the page's socket."""
    from aiohttp import ClientSession
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from services.workers.agent.role import AGENT
    from services.workers.egress.role import run_member as run_egress
    from services.workers.persister.role import PERSISTER
    from shared.db.pool import connect
    from tests.integration.workers.conftest import running, wait_until
    from tests.support import activate_demo_flow

    driver = browser
    integration = await make_integration("widget", {"allowed_origins": "https://shop.example"})
    await activate_demo_flow(worker_settings, integration.tenant_id)

    stop = asyncio.Event()
    egress = asyncio.create_task(run_egress(worker_settings, stop))
    try:
        async with running(AGENT, worker_settings), running(PERSISTER, worker_settings):
            page = f"{ingress.url}/widget/{integration.id}/"
            await asyncio.to_thread(driver.get, page)
            await wait_for(
                driver,
                lambda d: d.find_element(By.ID, "sb-status").get_attribute("data-state") == "open",
                "the page's WebSocket to say hello",
            )
            box = await asyncio.to_thread(driver.find_element, By.ID, "sb-input")
            await asyncio.to_thread(box.send_keys, "hi", Keys.ENTER)
            await wait_for(
                driver,
                lambda d: _incoming(d) == ["Hello! I'm here to help. What can I do for you?"],
                "the flow's greeting",
            )
            await asyncio.to_thread(box.send_keys, "tell me about your products", Keys.ENTER)
            button = await wait_for(
                driver,
                lambda d: d.find_element(By.CSS_SELECTOR, "#sb-log .sb-quick button"),
                "the product category buttons",
            )
            assert _incoming(driver)[-1] == "Which product category interests you?"
            assert await asyncio.to_thread(lambda: button.text) == "🚀 AI Tools"
            await asyncio.to_thread(button.click)
            await wait_for(
                driver,
                lambda d: (
                    _incoming(d)[-2:]
                    == [
                        "Our AI tools build, train and deploy chatbots for you.",
                        "What email address should we send the details to?",
                    ]
                ),
                "the chosen category's answer and the next question",
            )

            # The page is closed when the answer to the next message comes: opened
            # again, it shows the replies it missed (stored by the persister).
            root = await asyncio.to_thread(driver.find_element, By.ID, "sb-root")
            session_id = await asyncio.to_thread(root.get_attribute, "data-session-id")
            await asyncio.to_thread(driver.get, "about:blank")
            async with (
                ClientSession() as http,
                http.post(
                    page + "messages",
                    # another visitor id: this one used up the page's rate limit
                    json={"session_id": session_id, "visitor_id": "v-2", "text": "a@b.co"},
                ) as resp,
            ):
                assert resp.status == 202
            conn = await connect(worker_settings.require_database_url())
            try:
                stored = "SELECT count(*) FROM channel_messages WHERE direction = 'outbound'"
                assert await wait_until(conn, stored, 6) == 6
            finally:
                await conn.close()
            await asyncio.to_thread(driver.get, page)
            await wait_for(
                driver,
                lambda d: (
                    _incoming(d)
                    == [
                        "Thanks! We'll write to a@b.co shortly.",
                        "Is there anything else I can help with?",
                    ]
                ),
                "the replies sent while the page was closed",
            )
    finally:
        stop.set()
        await asyncio.wait_for(egress, 30)
