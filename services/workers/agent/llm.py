"""The LLM port: an OpenAI-compatible chat-completions endpoint, configured per tenant.

Off unless a tenant turns it on (``switchboard llm set``). The configuration lives in
``tenants.settings -> 'llm'``; the API key in it is AES-GCM ciphertext made with
:class:`shared.crypto.CredentialCipher` and bound to the tenant, so it cannot be copied
onto another tenant's row. :meth:`LLMClient.reply` never raises for the endpoint's
trouble (timeout, connection refused, an error status, a body without an answer): it
returns None and the caller falls back to its canned answer.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
import asyncpg
import orjson
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from yarl import URL

from shared.crypto import CredentialCipher, CredentialsUnreadable
from shared.integrations import NotFound
from shared.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful customer support assistant. Answer briefly and politely. "
    "If you do not know the answer, say so and offer to connect the customer with a person."
)
_DEFAULT_TIMEOUT_S: float = Settings.model_fields["llm_timeout_s"].default

Role = Literal["user", "assistant"]

REQUESTS = Counter(
    "switchboard_llm_requests_total",
    "Chat-completion requests to tenants' LLM endpoints, by outcome.",
    ["outcome"],  # ok, timeout, connection_error, http_error, malformed, empty
)
LATENCY = Histogram(
    "switchboard_llm_request_seconds",
    "Time from sending a chat-completion request to its outcome.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60),
)


class LLMConfig(BaseModel):
    """A tenant's LLM endpoint; ``base_url`` is the API root (``http://host/v1``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    base_url: str
    model: str = Field(min_length=1, max_length=200)
    api_key: SecretStr | None = None
    system_prompt: str = Field(default=DEFAULT_SYSTEM_PROMPT, max_length=20_000)
    max_tokens: int = Field(default=300, ge=1, le=32_000)
    temperature: float = Field(default=0.3, ge=0, le=2)
    timeout_s: float = Field(default=_DEFAULT_TIMEOUT_S, gt=0, le=300)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = URL(value.strip())
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("base_url must be an http(s) URL such as http://host:8000/v1")
        return str(url).rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _blank_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value().strip() else None

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/chat/completions"


def _bound_to(tenant_id: uuid.UUID) -> str:
    return f"{tenant_id}/llm"


def _stored(config: LLMConfig, tenant_id: uuid.UUID, cipher: CredentialCipher) -> dict[str, Any]:
    """The jsonb form: everything but the key in clear, the key as bound ciphertext."""
    stored = config.model_dump(mode="json", exclude={"api_key"})
    if config.api_key is not None:
        blob = cipher.encrypt(
            {"api_key": config.api_key.get_secret_value()}, bound_to=_bound_to(tenant_id)
        )
        stored["api_key_encrypted"] = base64.b64encode(blob).decode()
        stored["api_key_key_id"] = cipher.key_id
    return stored


async def save_llm_config(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, config: LLMConfig, cipher: CredentialCipher
) -> None:
    """Store ``config`` in ``tenants.settings -> 'llm'`` (the API key encrypted)."""
    stored = orjson.dumps(_stored(config, tenant_id, cipher)).decode()
    done = await conn.execute(
        "UPDATE tenants SET settings = jsonb_set(settings, '{llm}', $2::text::jsonb) "
        "WHERE id = $1 AND deleted_at IS NULL",
        tenant_id,
        stored,
    )
    if done != "UPDATE 1":
        raise NotFound(f"no tenant {tenant_id}")


async def remove_llm_config(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> bool:
    """Turn the tenant's LLM off, forgetting its endpoint and key; whether one was set."""
    had = await conn.fetchval(
        "SELECT settings ? 'llm' FROM tenants WHERE id = $1 AND deleted_at IS NULL", tenant_id
    )
    if had is None:
        raise NotFound(f"no tenant {tenant_id}")
    if had:
        await conn.execute(
            "UPDATE tenants SET settings = settings - 'llm' WHERE id = $1", tenant_id
        )
    return bool(had)


async def load_llm_config(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, cipher: CredentialCipher | None
) -> LLMConfig | None:
    """The tenant's LLM configuration, or None when it has none or it is turned off.

    A stored configuration that cannot be used (unreadable key, invalid fields) is
    logged and treated as off, so the agent keeps answering without it.
    """
    raw = await conn.fetchval(
        "SELECT (settings -> 'llm')::text FROM tenants WHERE id = $1 AND deleted_at IS NULL",
        tenant_id,
    )
    if raw is None:
        return None
    stored = orjson.loads(raw)
    if not isinstance(stored, dict) or not stored.get("enabled", True):
        return None
    fields = {k: v for k, v in stored.items() if k not in ("api_key_encrypted", "api_key_key_id")}
    try:
        if "api_key_encrypted" in stored:
            if cipher is None:
                raise CredentialsUnreadable("no SWITCHBOARD_SECRET_KEY to decrypt it")
            try:
                blob = base64.b64decode(stored["api_key_encrypted"], validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise CredentialsUnreadable("the stored ciphertext is not base64") from None
            fields["api_key"] = cipher.decrypt(blob, bound_to=_bound_to(tenant_id))["api_key"]
        return LLMConfig.model_validate(fields)
    except CredentialsUnreadable as exc:
        log.warning("tenant %s: LLM api key unreadable (%s); LLM off", tenant_id, exc)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        log.warning("tenant %s: stored LLM settings invalid (%s); LLM off", tenant_id, problems)
    return None


def build_messages(
    config: LLMConfig,
    user_text: str,
    history: Sequence[tuple[Role, str]] = (),
    context: Sequence[str] = (),
) -> list[dict[str, str]]:
    """The chat messages sent: system prompt (with the knowledge context), history, user."""
    system = config.system_prompt
    passages = [c.strip() for c in context if c.strip()]
    if passages:
        system += "\n\nUse this information from the knowledge base when it helps:\n" + (
            "\n".join(f"- {p}" for p in passages)
        )
    messages = [{"role": "system", "content": system}]
    for role, text in history:
        if role not in ("user", "assistant"):
            raise ValueError(f"history role must be 'user' or 'assistant', not {role!r}")
        messages.append({"role": role, "content": text})
    messages.append({"role": "user", "content": user_text})
    return messages


class LLMClient:
    """Calls tenants' chat-completion endpoints over one HTTP session.

    ``async with LLMClient() as llm: text = await llm.reply(config, user_text=...)``;
    pass ``session`` to share one (it is then not closed here).
    """

    def __init__(self, session: aiohttp.ClientSession | None = None) -> None:
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    async def reply(
        self,
        config: LLMConfig,
        *,
        user_text: str,
        history: Sequence[tuple[Role, str]] = (),
        context: Sequence[str] = (),
    ) -> str | None:
        """The model's answer to ``user_text``, or None when there is none to give."""
        body = {
            "model": config.model,
            "messages": build_messages(config, user_text, history, context),
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
        }
        headers = {"Content-Type": "application/json"}
        if config.api_key is not None:
            headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        started = time.monotonic()
        outcome, detail, answer = "ok", "", None
        try:
            async with self._http().post(
                config.endpoint,
                data=orjson.dumps(body),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=config.timeout_s),
            ) as response:
                raw = await response.read()
                if not 200 <= response.status < 300:
                    outcome, detail = "http_error", f"HTTP {response.status}"
                else:
                    answer = _answer(raw)
                    if answer is None:
                        outcome, detail = "malformed", "no choices[0].message.content"
                    elif not answer:
                        outcome, detail, answer = "empty", "empty content", None
        except TimeoutError:
            outcome, detail = "timeout", f"no answer within {config.timeout_s:g} s"
        except aiohttp.ClientError as exc:
            outcome, detail = "connection_error", type(exc).__name__
        finally:
            elapsed = time.monotonic() - started
            REQUESTS.labels(outcome).inc()
            LATENCY.observe(elapsed)
        if answer is None:
            log.warning(
                "LLM %s at %s gave no reply: %s (%s)",
                config.model,
                URL(config.base_url).with_user(None).with_query(None),
                outcome,
                detail,
            )
        return answer


def _answer(raw: bytes) -> str | None:
    """``choices[0].message.content`` stripped, or None when the body has no such text."""
    try:
        content = orjson.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return content.strip() if isinstance(content, str) else None
