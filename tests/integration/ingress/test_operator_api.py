"""The operator HTTP API: handoff, an operator's message and release, behind a bearer token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession
from pydantic import SecretStr

from shared.db.pool import connect
from shared.events import AuditEvent, MessageOutbound
from shared.settings import Settings

TOKEN = "operator-token-for-tests"


@pytest.fixture
def ingress_settings(ingress_settings: Settings) -> Settings:
    return ingress_settings.model_copy(update={"admin_token": SecretStr(TOKEN)})


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


async def _conversation(db_url: str, integration) -> str:
    conn = await connect(db_url)
    try:
        return str(
            await conn.fetchval(
                "INSERT INTO conversations (tenant_id, integration_id, channel, conversation_key,"
                " external_user_id) VALUES ($1, $2, 'telegram', '555', '555') RETURNING id",
                integration.tenant_id,
                integration.id,
            )
        )
    finally:
        await conn.close()


async def test_handoff_message_and_release_over_http(
    ingress, make_integration, http: ClientSession, db_url: str
) -> None:
    bot = await make_integration("telegram", {"bot_token": "1:x", "secret_token": "s"})
    cid = await _conversation(db_url, bot)
    base = f"{ingress.url}/admin/v1/conversations/{cid}"
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async with http.post(f"{base}/handoff", json={"reason": "angry customer"}, headers=auth) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["status"] == "handed_off"
    async with http.post(f"{base}/messages", json={"text": "Hi, Sam here."}, headers=auth) as r:
        assert r.status == 200, await r.text()
        message_id = (await r.json())["message_id"]
    async with http.get(base, headers=auth) as r:
        assert (await r.json())["status"] == "handed_off"
    async with http.post(f"{base}/release", headers=auth) as r:
        assert (await r.json())["status"] == "open"

    [sent] = await ingress.events(ingress.topics.outbound, expect=1)
    assert isinstance(sent, MessageOutbound)
    assert (sent.message_id, sent.text, sent.origin) == (message_id, "Hi, Sam here.", "operator")
    assert (sent.conversation_key, sent.recipient_id, sent.channel) == ("555", "555", "telegram")
    audit = await ingress.events(ingress.topics.audit, expect=3)
    actions = [
        e.action for e in audit if isinstance(e, AuditEvent) and e.actor_id == "http:operator"
    ]
    assert actions == [
        "conversation.handed_off",
        "conversation.operator_message",
        "conversation.released",
    ]


async def test_refusals_change_nothing(
    ingress, make_integration, http: ClientSession, db_url: str
) -> None:
    bot = await make_integration("telegram", {"bot_token": "1:x", "secret_token": "s"})
    cid = await _conversation(db_url, bot)
    base = f"{ingress.url}/admin/v1/conversations/{cid}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    cases = [
        ("POST", f"{base}/handoff", {}, {"Authorization": "Bearer wrong"}, 401),
        ("POST", f"{base}/handoff", {}, {}, 401),
        ("POST", f"{base}/messages", {"text": ""}, auth, 400),
        ("POST", f"{base}/messages", {"txt": "x"}, auth, 400),
        ("POST", f"{base}/messages", {"text": "x" * 5000}, auth, 400),
        ("GET", f"{ingress.url}/admin/v1/conversations/not-a-uuid", None, auth, 404),
        (
            "POST",
            f"{ingress.url}/admin/v1/conversations/00000000-0000-0000-0000-000000000000/release",
            None,
            auth,
            404,
        ),
    ]
    for method, url, body, headers, status in cases:
        async with http.request(method, url, json=body, headers=headers) as r:
            assert r.status == status, (url, body, await r.text())
            assert "error" in await r.json()
    async with http.get(base, headers=auth) as r:
        assert (await r.json())["status"] == "open"
    assert await ingress.events(ingress.topics.outbound, expect=0, settle=0.5) == []
