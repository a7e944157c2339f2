"""The web chat widget channel against the real ingress, PostgreSQL and broker.

Requests are built as the widget page builds them (JSON POSTs, a browser's Origin and
CORS preflight, a WebSocket per session).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientSession
from prometheus_client import REGISTRY

from services.ingress.adapters.widget import MAX_BODY_BYTES, MAX_TEXT_CHARS
from services.ingress.widget_sockets import SOCKETS, push
from shared.events import MessageInbound, derive_event_id
from shared.integrations import Integration
from shared.settings import Settings

SHOP = "https://shop.example"
ALSO_SHOP = "https://www.shop.example:8443"
EVIL = "https://evil.example"


@pytest.fixture
def ingress_settings(ingress_settings: Settings) -> Settings:
    """A small burst and a slow refill, so the rate limit is reached and stays reached."""
    return ingress_settings.model_copy(
        update={"widget_rate_limit_burst": 3, "widget_rate_limit_per_minute": 1}
    )


@pytest.fixture
async def widget(make_integration) -> Integration:
    return await make_integration("widget", {"allowed_origins": f"{SHOP}, {ALSO_SHOP}/"})


@pytest.fixture
async def http() -> Any:
    async with ClientSession() as session:
        yield session


def message(**overrides: Any) -> dict[str, Any]:
    body = {
        "session_id": f"s-{uuid.uuid4().hex}",
        "visitor_id": f"v-{uuid.uuid4().hex}",
        "text": "Hello, do you ship to Norway?",
        "client_message_id": uuid.uuid4().hex,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


async def post(
    http: ClientSession,
    url: str,
    body: Any,
    *,
    origin: str | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any], Any]:
    headers = {"Content-Type": "application/json"}
    if origin is not None:
        headers["Origin"] = origin
    kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
    async with http.post(url, headers=headers, **kwargs) as response:
        data = await response.json(content_type=None)
        return response.status, data, response.headers


def messages_url(ingress, integration_id: uuid.UUID | str) -> str:
    return f"{ingress.url}/widget/{integration_id}/messages"


def rejections(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "switchboard_ingress_rejections_total", {"channel": "widget", "reason": reason}
    )
    return value or 0.0


async def test_message_is_published(ingress, widget, http) -> None:
    body = message(text="  Hello, do you ship to Norway?\n")
    before = datetime.now(UTC)
    status, data, headers = await post(http, messages_url(ingress, widget.id), body, origin=SHOP)
    after = datetime.now(UTC)

    assert status == 202
    expected_id = derive_event_id(
        "widget", widget.id, body["session_id"], body["client_message_id"]
    )
    assert data == {
        "ok": True,
        "message_id": body["client_message_id"],
        "event_id": str(expected_id),
    }
    assert headers["Access-Control-Allow-Origin"] == SHOP
    assert "Origin" in headers.get("Vary", "")

    [event] = await ingress.events(ingress.topics.inbound, expect=1)
    assert isinstance(event, MessageInbound)
    assert event.event_id == expected_id
    assert event.tenant_id == widget.tenant_id
    assert event.integration_id == widget.id
    assert event.channel == "widget"
    assert event.conversation_key == body["session_id"]
    assert event.sender_id == body["visitor_id"]
    assert event.external_id == body["client_message_id"]
    assert event.text == "Hello, do you ship to Norway?"
    assert event.message_type == "text"
    assert before <= event.sent_at <= after
    assert event.raw == body


async def test_without_origin_or_client_message_id(ingress, widget, http) -> None:
    """A server-to-server call (no Origin) is fine; each call is then its own message."""
    session, visitor = "server-session", "crm:4711"
    answers = []
    for text in ("first", "x" * MAX_TEXT_CHARS):
        body = message(session_id=session, visitor_id=visitor, text=text, client_message_id=None)
        status, data, headers = await post(http, messages_url(ingress, widget.id), body)
        assert status == 202, data
        assert "Access-Control-Allow-Origin" not in headers
        answers.append(data)

    events = await ingress.events(ingress.topics.inbound, expect=2)
    assert len(events) == 2
    assert {e.external_id for e in events} == {a["message_id"] for a in answers}
    assert len({e.external_id for e in events}) == 2
    for event in events:
        uuid.UUID(event.external_id)
        assert event.conversation_key == session
        assert event.event_id == derive_event_id("widget", widget.id, session, event.external_id)
    assert sorted(len(e.text) for e in events) == [5, MAX_TEXT_CHARS]


async def test_resent_client_message_id_is_published_once(ingress, widget, http) -> None:
    body = message()
    first = await post(http, messages_url(ingress, widget.id), body, origin=SHOP)
    again = await post(http, messages_url(ingress, widget.id), body, origin=SHOP)
    assert first[0] == again[0] == 202
    assert first[1] == again[1]

    events = await ingress.events(ingress.topics.inbound, expect=1)
    assert len(events) == 1
    assert events[0].external_id == body["client_message_id"]


async def test_the_visitors_send_time_is_kept_when_plausible(ingress, widget, http) -> None:
    """A resend carries its first send time, so a late resend maps to the same stored row."""
    now = datetime.now(UTC)
    plausible = (now - timedelta(minutes=3)).replace(microsecond=123000)
    far_past = now - timedelta(days=2)
    bodies = [
        message(client_message_id="late-resend", sent_at=plausible.isoformat()),
        message(client_message_id="bad-clock", sent_at=far_past.isoformat()),
    ]
    for body in bodies:
        assert (await post(http, messages_url(ingress, widget.id), body))[0] == 202
    naive = message(client_message_id="naive", sent_at="2026-11-22T10:00:00")
    assert (await post(http, messages_url(ingress, widget.id), naive))[0] == 400

    events = {e.external_id: e for e in await ingress.events(ingress.topics.inbound, expect=2)}
    assert events["late-resend"].sent_at == plausible
    assert abs(events["bad-clock"].sent_at - datetime.now(UTC)) < timedelta(minutes=1)


async def test_same_client_message_id_in_another_session_is_another_message(
    ingress, widget, http
) -> None:
    shared_id = "msg-1"
    for session in ("session-a", "session-b"):
        body = message(session_id=session, client_message_id=shared_id)
        assert (await post(http, messages_url(ingress, widget.id), body))[0] == 202

    events = await ingress.events(ingress.topics.inbound, expect=2)
    assert {e.conversation_key for e in events} == {"session-a", "session-b"}
    assert len({e.event_id for e in events}) == 2


async def test_cors_preflight_for_allowed_origins(ingress, widget, http) -> None:
    for origin in (SHOP, ALSO_SHOP):
        async with http.options(
            messages_url(ingress, widget.id),
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        ) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == origin
            assert response.headers["Access-Control-Allow-Methods"] == "POST"
            assert response.headers["Access-Control-Allow-Headers"] == "Content-Type"
            assert int(response.headers["Access-Control-Max-Age"]) > 0


async def test_disallowed_origins_are_refused(ingress, widget, http) -> None:
    url = messages_url(ingress, widget.id)
    before = rejections("origin_not_allowed")
    for origin in (EVIL, "null", "http://shop.example", "https://shop.example.evil.example"):
        async with http.options(
            url, headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        ) as response:
            assert response.status == 403
            assert "Access-Control-Allow-Origin" not in response.headers
        status, data, headers = await post(http, url, message(), origin=origin)
        assert status == 403
        assert data["error"] == "origin_not_allowed"
        assert "Access-Control-Allow-Origin" not in headers
    assert rejections("origin_not_allowed") - before == 8

    assert await ingress.events(ingress.topics.inbound, expect=0) == []
    audits = await ingress.events(ingress.topics.audit, expect=8, settle=0.2)
    assert len(audits) == 8
    assert {a.metadata["reason"] for a in audits} == {"origin_not_allowed"}
    assert {a.tenant_id for a in audits} == {widget.tenant_id}


async def test_the_ingress_own_page_origin_is_allowed(ingress, widget, http) -> None:
    status, data, headers = await post(
        http, messages_url(ingress, widget.id), message(), origin=ingress.url
    )
    assert status == 202, data
    assert "Access-Control-Allow-Origin" not in headers  # same origin: no CORS needed
    assert len(await ingress.events(ingress.topics.inbound, expect=1)) == 1


async def test_rate_limit_per_visitor(ingress, widget, http) -> None:
    url = messages_url(ingress, widget.id)
    burst = ingress.settings.widget_rate_limit_burst
    before = rejections("rate_limited")
    for _ in range(burst):
        status, data, _ = await post(http, url, message(visitor_id="eager"), origin=SHOP)
        assert status == 202, data

    status, data, headers = await post(http, url, message(visitor_id="eager"), origin=SHOP)
    assert status == 429
    assert data["error"] == "rate_limited"
    assert int(headers["Retry-After"]) >= 1
    assert headers["Access-Control-Allow-Origin"] == SHOP  # so the page can read the 429
    assert rejections("rate_limited") - before == 1

    status, data, _ = await post(http, url, message(visitor_id="patient"), origin=SHOP)
    assert status == 202, data

    events = await ingress.events(ingress.topics.inbound, expect=burst + 1)
    assert len(events) == burst + 1
    assert sorted(e.sender_id for e in events) == ["eager"] * burst + ["patient"]


async def test_malformed_bodies_are_400(ingress, widget, http) -> None:
    url = messages_url(ingress, widget.id)
    cases: list[tuple[Any, bytes | None, str]] = [
        (None, b"{not json", "not valid JSON"),
        (None, b"", "not valid JSON"),
        (["a", "list"], None, "JSON object"),
        ({"visitor_id": "v", "text": "hi"}, None, "session_id is required"),
        ({"session_id": "s", "text": "hi"}, None, "visitor_id is required"),
        ({"session_id": "s", "visitor_id": "v"}, None, "text is required"),
        (message(text=42), None, "text"),
        (message(session_id=123), None, "session_id"),
        (message(text="   \n"), None, "text must not be empty"),
        (message(text="x" * (MAX_TEXT_CHARS + 1)), None, "at most 4096"),
        (message(visitor_id="has space"), None, "visitor_id must be 1 to 128"),
        (message(session_id="a/b"), None, "session_id must be 1 to 128"),
        (message(session_id="s" * 129), None, "session_id must be 1 to 128"),
        (message(client_message_id=""), None, "client_message_id must be 1 to 128"),
        (message(text="nul\x00byte"), None, "NUL"),
    ]
    for body, raw, expected in cases:
        status, data, headers = await post(http, url, body, raw=raw, origin=SHOP)
        assert status == 400, (body, raw, data)
        assert data["error"] == "malformed"
        assert expected in data["message"], data["message"]
        assert headers["Access-Control-Allow-Origin"] == SHOP
    assert await ingress.events(ingress.topics.inbound, expect=0) == []


async def test_oversized_body_is_413(ingress, widget, http) -> None:
    body = message(text="x" * MAX_BODY_BYTES)
    status, data, _ = await post(http, messages_url(ingress, widget.id), body)
    assert status == 413
    assert data["error"] == "too_large"
    assert await ingress.events(ingress.topics.inbound, expect=0) == []


async def test_unknown_or_foreign_integration_is_404(ingress, widget, make_integration, http):
    telegram = await make_integration("telegram", {"bot_token": "1:x", "secret_token": "s"})
    for integration_id in (uuid.uuid4(), "not-a-uuid", telegram.id):
        status, data, _ = await post(http, messages_url(ingress, integration_id), message())
        assert status == 404
        assert data["error"] == "unknown_integration"
        async with http.get(f"{ingress.url}/widget/{integration_id}/") as response:
            assert response.status == 404
    assert await ingress.events(ingress.topics.inbound, expect=0) == []


async def test_disabled_integration_is_404(ingress, widget, store, http) -> None:
    await store.disable(widget.id)
    await asyncio.sleep(ingress.settings.integration_cache_ttl_s + 0.1)
    status, data, _ = await post(http, messages_url(ingress, widget.id), message(), origin=SHOP)
    assert status == 404
    assert data["error"] == "disabled_integration"
    async with http.get(f"{ingress.url}/widget/{widget.id}/") as response:
        assert response.status == 404
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{ingress.url}/widget/{widget.id}/ws?session_id=s1")
    assert refused.value.status == 404
    assert await ingress.events(ingress.topics.inbound, expect=0) == []


async def test_chat_page_is_served(ingress, widget, http) -> None:
    async with http.get(f"{ingress.url}/widget/{widget.id}", allow_redirects=False) as response:
        assert response.status == 308
        assert response.headers["Location"] == f"{widget.id}/"
    async with http.get(f"{ingress.url}/widget/{widget.id}") as response:
        assert response.status == 200
        assert str(response.url).endswith(f"/widget/{widget.id}/")
        page = await response.text()
        csp = response.headers["Content-Security-Policy"]
    assert response.content_type == "text/html"
    for element in ('id="sb-log"', 'id="sb-input"', 'id="sb-send"'):
        assert element in page
    assert "__NONCE__" not in page
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in page
    assert f"frame-ancestors 'self' {SHOP} {ALSO_SHOP}" in csp
    assert "http://" not in page.split("<script")[1]  # no absolute URLs: relative to the page


async def test_websocket_hello_ack_and_push(ingress, widget, http) -> None:
    ws_url = f"{ingress.url}/widget/{widget.id}/ws?session_id=chat-1"
    async with (
        http.ws_connect(ws_url, origin=SHOP) as ws,
        http.ws_connect(ws_url) as second,
        http.ws_connect(ws_url.replace("chat-1", "chat-2")) as other,
    ):
        assert await ws.receive_json(timeout=5) == {"type": "hello", "session_id": "chat-1"}
        assert (await second.receive_json(timeout=5))["type"] == "hello"
        assert (await other.receive_json(timeout=5))["session_id"] == "chat-2"

        body = message(session_id="chat-1", client_message_id="c-1")
        status, data, _ = await post(http, messages_url(ingress, widget.id), body, origin=SHOP)
        assert status == 202, data
        assert await ws.receive_json(timeout=5) == {"type": "ack", "message_id": "c-1"}
        assert await second.receive_json(timeout=5) == {"type": "ack", "message_id": "c-1"}

        reply = {
            "type": "message",
            "text": "Yes, we ship to Norway.",
            "quick_replies": [{"title": "Track order", "payload": "track"}],
        }
        assert await push(ingress.app, widget.id, "chat-1", reply) == 2
        assert await ws.receive_json(timeout=5) == reply
        assert await second.receive_json(timeout=5) == reply
        assert await push(ingress.app, str(widget.id), "nobody", reply) == 0
        with pytest.raises(TimeoutError):
            await other.receive_json(timeout=0.2)  # another session hears nothing

        await second.close()
        # The server forgets the socket once its handler has seen the close.
        registry = ingress.app[SOCKETS]
        async with asyncio.timeout(5):
            while registry.count(widget.id, "chat-1") != 1:
                await asyncio.sleep(0.01)
        assert await push(ingress.app, widget.id, "chat-1", {"type": "message", "text": "x"}) == 1
        assert (await ws.receive_json(timeout=5))["text"] == "x"

    assert len(await ingress.events(ingress.topics.inbound, expect=1)) == 1


async def test_websocket_refusals(ingress, widget, http) -> None:
    base = f"{ingress.url}/widget/{widget.id}/ws"
    refusals = [
        (f"{base}?session_id=s1", EVIL, 403),
        (f"{base}", SHOP, 400),
        (f"{base}?session_id=bad%20id", SHOP, 400),
        (f"{ingress.url}/widget/{uuid.uuid4()}/ws?session_id=s1", SHOP, 404),
    ]
    for url, origin, expected in refusals:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, origin=origin)
        assert refused.value.status == expected, url
    async with http.get(f"{base}?session_id=s1") as response:  # not an upgrade
        assert response.status == 400
    assert ingress.app[SOCKETS].count(widget.id, "s1") == 0


async def test_replies_on_the_widget_topic_reach_the_socket_holder(ingress, widget, http) -> None:
    """Egress puts widget replies on a topic; this process holds the socket, pushes the
    reply and reports it delivered. A reply for a session nobody holds is only counted."""
    from shared.events import MessageOutbound, MessageStatus, QuickReply, encode
    from shared.kafka import create_producer

    ws_url = f"{ingress.url}/widget/{widget.id}/ws?session_id=chat-9"
    async with http.ws_connect(ws_url, origin=SHOP) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "hello"

        def reply(session: str, text: str) -> MessageOutbound:
            return MessageOutbound(
                tenant_id=widget.tenant_id,
                integration_id=widget.id,
                channel="widget",
                conversation_key=session,
                message_id=f"r-{session}",
                recipient_id="v-1",
                text=text,
                quick_replies=(QuickReply(title="Yes", payload="yes"),),
            )

        producer = create_producer(ingress.settings)
        await producer.start()
        try:
            # The reader starts from the end of the topic: publish until it has seen one.
            for _ in range(50):
                for event in (reply("nobody-here", "lost?"), reply("chat-9", "Hello there")):
                    await producer.send_and_wait(
                        ingress.topics.widget_replies, encode(event), key=event.kafka_key()
                    )
                with contextlib.suppress(TimeoutError):
                    frame = await ws.receive_json(timeout=0.3)
                    break
            else:
                raise AssertionError("no reply reached the socket")
        finally:
            await producer.stop()
    assert frame["type"] == "message" and frame["text"] == "Hello there"
    assert frame["message_id"] == "r-chat-9"
    assert frame["quick_replies"] == [{"title": "Yes", "payload": "yes"}]
    statuses = await ingress.events(ingress.topics.status, expect=1, timeout=10)
    assert statuses and all(isinstance(s, MessageStatus) for s in statuses)
    assert {(s.message_id, s.status) for s in statuses} == {("r-chat-9", "delivered")}


async def test_a_page_catches_up_on_replies_it_missed(ingress, widget, http, db_url) -> None:
    """Replies stored while no socket was open are served after a time, oldest first."""
    from datetime import UTC, datetime, timedelta

    from shared.db.pool import connect

    t0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    conn = await connect(db_url)
    try:
        for n, (session, direction) in enumerate(
            [("s-9", "outbound"), ("s-9", "inbound"), ("s-9", "outbound"), ("other", "outbound")]
        ):
            await conn.execute(
                "INSERT INTO channel_messages (tenant_id, integration_id, channel, direction,"
                " external_id, conversation_key, text, payload, sent_at)"
                " VALUES ($1, $2, 'widget', $3, $4, $5, $6, $7, $8)",
                widget.tenant_id,
                widget.id,
                direction,
                f"m-{n}",
                session,
                f"text {n}",
                {"quick_replies": [{"title": "Yes", "payload": "yes"}]} if n == 2 else {},
                t0 + timedelta(seconds=n),
            )
    finally:
        await conn.close()
    url = messages_url(ingress, widget.id)
    async with http.get(
        url, params={"session_id": "s-9", "after": t0.isoformat()}, headers={"Origin": SHOP}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == SHOP
        body = await resp.json()
    assert [(m["message_id"], m["text"], m["quick_replies"]) for m in body["messages"]] == [
        ("m-2", "text 2", [{"title": "Yes", "payload": "yes"}])
    ]
    async with http.get(url, params={"session_id": "s-9", "after": "2026-11-22T11:00:00Z"}) as resp:
        assert [m["message_id"] for m in (await resp.json())["messages"]] == ["m-0", "m-2"]
    for params in (
        {"session_id": "s-9"},
        {"session_id": "s-9", "after": "yesterday"},
        {"session_id": "s-9", "after": "2026-11-22T11:00:00"},
        {"session_id": "bad id!", "after": t0.isoformat()},
    ):
        async with http.get(url, params=params) as resp:
            assert resp.status == 400, params
    async with http.get(
        url, params={"session_id": "s-9", "after": t0.isoformat()}, headers={"Origin": EVIL}
    ) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
