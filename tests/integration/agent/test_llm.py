"""The LLM port against a local OpenAI-compatible stand-in, and its per-tenant config."""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from pydantic import SecretStr, ValidationError

from services.workers.agent.llm import (
    LLMClient,
    LLMConfig,
    load_llm_config,
    remove_llm_config,
    save_llm_config,
)
from shared.crypto import CredentialCipher, new_key
from tests.standins import LLMStandin

API_KEY = "sk-standin-very-secret-key-0123456789"
MakeTenant = Callable[[], Awaitable[uuid.UUID]]


@pytest.fixture
async def llm_api() -> AsyncIterator[LLMStandin]:
    async with LLMStandin(tokens={API_KEY}).running() as standin:
        yield standin


@pytest.fixture
async def llm() -> AsyncIterator[LLMClient]:
    async with LLMClient() as client:
        yield client


def config_for(standin: LLMStandin, **overrides: object) -> LLMConfig:
    fields: dict[str, object] = {
        "base_url": f"{standin.url}/v1",
        "model": "shop-assistant-7b",
        "api_key": API_KEY,
        "system_prompt": "You are the assistant of Acme Shoes.",
        "timeout_s": 5.0,
    }
    return LLMConfig.model_validate(fields | overrides)


async def test_reply_sends_prompt_context_history_and_key(
    llm_api: LLMStandin, llm: LLMClient
) -> None:
    llm_api.answer_next("  We ship to Canada in 5-7 days.  ")
    answer = await llm.reply(
        config_for(llm_api, max_tokens=120, temperature=0.1),
        user_text="Do you ship to Canada?",
        history=[("user", "hi"), ("assistant", "Hello! How can I help?")],
        context=["Shipping: we deliver to the US, Canada and the EU.", "  "],
    )
    assert answer == "We ship to Canada in 5-7 days."
    [request] = llm_api.requests
    assert (request.method, request.path, request.credential) == (
        "POST",
        "/v1/chat/completions",
        API_KEY,
    )
    body = request.body
    assert (body["model"], body["max_tokens"], body["temperature"]) == (
        "shop-assistant-7b",
        120,
        0.1,
    )
    system, *rest = body["messages"]
    assert system["role"] == "system"
    assert system["content"].startswith("You are the assistant of Acme Shoes.")
    assert "- Shipping: we deliver to the US, Canada and the EU." in system["content"]
    assert rest == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Do you ship to Canada?"},
    ]


async def test_no_key_sends_no_authorization(llm: LLMClient) -> None:
    async with LLMStandin().running() as open_api:
        answer = await llm.reply(config_for(open_api, api_key=None), user_text="ping")
    assert answer == "You said: ping"
    assert open_api.requests[0].credential is None


async def test_timeout_gives_none(llm_api: LLMStandin, llm: LLMClient) -> None:
    # The stand-in holds the call for a minute; only the client's timeout ends it.
    llm_api.stall_next(60)
    assert await llm.reply(config_for(llm_api, timeout_s=0.3), user_text="hello?") is None
    assert len(llm_api.requests) == 1
    assert await llm.reply(config_for(llm_api), user_text="again") == "You said: again"


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(lambda s: s.fail_next(500), id="500"),
        pytest.param(lambda s: s.fail_next(429, retry_after=3), id="429"),
        pytest.param(lambda s: s.garbage_next(), id="html-200"),
        pytest.param(lambda s: s.garbage_next(b'{"choices": []}'), id="no-choices"),
        pytest.param(lambda s: s.garbage_next(b'{"choices": [{"message": {}}]}'), id="no-text"),
        pytest.param(lambda s: s.answer_next("   "), id="empty-content"),
    ],
)
async def test_unusable_answers_give_none_and_log_without_the_key(
    llm_api: LLMStandin,
    llm: LLMClient,
    script: Callable[[LLMStandin], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    script(llm_api)
    with caplog.at_level(logging.WARNING, logger="services.workers.agent.llm"):
        assert await llm.reply(config_for(llm_api), user_text="hello") is None
    assert "gave no reply" in caplog.text
    assert API_KEY not in caplog.text
    # The next call is served normally: nothing is stuck.
    assert await llm.reply(config_for(llm_api), user_text="hi") == "You said: hi"


async def test_wrong_key_and_unreachable_server_give_none(
    llm_api: LLMStandin, llm: LLMClient
) -> None:
    assert await llm.reply(config_for(llm_api, api_key="sk-wrong"), user_text="x") is None
    async with LLMStandin().running() as gone:
        closed = gone.url
    assert await llm.reply(config_for(llm_api, base_url=f"{closed}/v1"), user_text="x") is None


def test_config_is_validated_and_never_shows_the_key() -> None:
    config = LLMConfig(base_url="http://llm.internal:8000/v1/", model="m", api_key=API_KEY)
    assert config.endpoint == "http://llm.internal:8000/v1/chat/completions"
    assert API_KEY not in repr(config) and API_KEY not in str(config.model_dump())
    assert LLMConfig(base_url="http://h/v1", model="m", api_key=" ").api_key is None
    with pytest.raises(ValidationError, match="base_url"):
        LLMConfig(base_url="ftp://h", model="m")
    with pytest.raises(ValidationError):
        LLMConfig(base_url="http://h/v1", model="")


async def test_config_round_trip_with_the_key_encrypted_at_rest(
    worker_conn: asyncpg.Connection, make_tenant: MakeTenant
) -> None:
    cipher = CredentialCipher(base64.b64decode(new_key()))
    tenant, other = await make_tenant(), await make_tenant()
    assert await load_llm_config(worker_conn, tenant, cipher) is None

    config = LLMConfig(
        base_url="http://llm.internal:8000/v1",
        model="shop-assistant-7b",
        api_key=SecretStr(API_KEY),
        system_prompt="Be brief.",
        max_tokens=200,
        temperature=0.5,
        timeout_s=7.5,
    )
    await save_llm_config(worker_conn, tenant, config, cipher)
    assert await load_llm_config(worker_conn, tenant, cipher) == config
    assert await load_llm_config(worker_conn, other, cipher) is None

    raw = await worker_conn.fetchval("SELECT settings::text FROM tenants WHERE id = $1", tenant)
    assert API_KEY not in raw
    assert "shop-assistant-7b" in raw and "api_key_encrypted" in raw

    # The ciphertext is bound to its tenant: copied onto another tenant it is unreadable.
    await worker_conn.execute(
        "UPDATE tenants SET settings = (SELECT settings FROM tenants WHERE id = $1) WHERE id = $2",
        tenant,
        other,
    )
    assert await load_llm_config(worker_conn, other, cipher) is None
    # So is it with another key; the configuration is then treated as off.
    assert await load_llm_config(worker_conn, tenant, CredentialCipher(b"k" * 32)) is None

    assert await remove_llm_config(worker_conn, tenant) is True
    assert await load_llm_config(worker_conn, tenant, cipher) is None
    assert await remove_llm_config(worker_conn, tenant) is False


async def test_disabled_or_keyless_config(
    worker_conn: asyncpg.Connection, make_tenant: MakeTenant
) -> None:
    cipher = CredentialCipher(base64.b64decode(new_key()))
    tenant = await make_tenant()
    keyless = LLMConfig(base_url="http://localhost:11434/v1", model="llama3")
    await save_llm_config(worker_conn, tenant, keyless, cipher)
    assert await load_llm_config(worker_conn, tenant, None) == keyless

    await save_llm_config(
        worker_conn, tenant, keyless.model_copy(update={"enabled": False}), cipher
    )
    assert await load_llm_config(worker_conn, tenant, cipher) is None
