"""Replies through the Slack Web API (``chat.postMessage``), with slack-sdk's AsyncWebClient.

Addressing follows the ingress: the conversation key is the channel id, or
``"channel:thread_ts"`` for a thread, and ``thread_id`` is ``thread_ts``; a reply goes to
that thread. Slack has no reply-to outside threads, so ``reply_to`` alone does not start
one. Quick replies become Block Kit buttons (``value`` = payload, the ingress reads it
back from ``block_actions``) under a section holding the text; ``text`` is always sent
too, as the notification fallback. The platform id of a sent message is its ``ts``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from services.workers.egress.outcome import (
    Delivered,
    Outcome,
    Permanent,
    Retry,
    parse_retry_after,
    redact,
)
from shared.events import MessageOutbound
from shared.integrations import Integration

SECTION_MAX_CHARS = 3000
BUTTON_TEXT_MAX_CHARS = 75
BUTTONS_PER_ACTIONS_BLOCK = 25
MAX_BLOCKS = 50
#: ``error`` values Slack documents as temporary for chat.postMessage.
TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


class InvalidMessage(ValueError):
    """The outbound event cannot be expressed as a Slack message."""


class SlackClients:
    """One AsyncWebClient per integration over one shared aiohttp session.

    The SDK's own retry handlers are off: retries belong to the egress retry topics,
    so one call is one attempt. The session's timeout bounds each call.
    """

    def __init__(
        self, api_base: str, *, session: aiohttp.ClientSession, max_clients: int = 4096
    ) -> None:
        self._base_url = f"{api_base.rstrip('/')}/api/"
        self._session = session
        self._clients: OrderedDict[str, AsyncWebClient] = OrderedDict()
        self._max_clients = max_clients

    def client(self, integration: Integration) -> AsyncWebClient:
        """The integration's client, rebuilt when its bot token changed."""
        key = str(integration.id)
        token = integration.credentials["bot_token"]
        client = self._clients.pop(key, None)
        if client is None or client.token != token.strip():
            client = AsyncWebClient(
                token=token, base_url=self._base_url, session=self._session, retry_handlers=[]
            )
        self._clients[key] = client
        while len(self._clients) > self._max_clients:
            self._clients.popitem(last=False)
        return client


async def send(
    message: MessageOutbound, integration: Integration, *, clients: SlackClients
) -> Outcome:
    """Send one reply; every failure is returned as an outcome, never raised."""
    secrets = integration.credentials.values()
    try:
        arguments = build_arguments(message)
    except InvalidMessage as exc:
        return Permanent("invalid_message", str(exc))
    try:
        response = await clients.client(integration).chat_postMessage(**arguments)
    except SlackApiError as exc:
        return _outcome_of_api_error(exc, secrets)
    except TimeoutError:
        return Retry("timed out waiting for Slack")
    except aiohttp.ClientError as exc:
        return Retry(redact(f"{type(exc).__name__}: {exc}", secrets).rstrip(": "))
    except SlackClientError as exc:
        return Permanent("client_error", redact(f"{type(exc).__name__}: {exc}", secrets))
    return Delivered(str(response["ts"]))


def build_arguments(message: MessageOutbound) -> dict[str, Any]:
    """``chat_postMessage`` keyword arguments for an outbound event."""
    if not message.text:
        raise InvalidMessage("a Slack reply needs text (attachments are not sent yet)")
    channel, _, key_thread = message.conversation_key.partition(":")
    arguments: dict[str, Any] = {"channel": channel, "text": message.text}
    thread_ts = message.thread_id or key_thread
    if thread_ts:
        arguments["thread_ts"] = thread_ts
    if message.quick_replies:
        arguments["blocks"] = _blocks(message)
    return arguments


def _blocks(message: MessageOutbound) -> list[dict[str, Any]]:
    text = message.text or ""
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text[i : i + SECTION_MAX_CHARS]}}
        for i in range(0, len(text), SECTION_MAX_CHARS)
    ]
    buttons = [
        {
            "type": "button",
            "action_id": f"quick_reply_{number}",
            "text": {"type": "plain_text", "text": _cut(reply.title, BUTTON_TEXT_MAX_CHARS)},
            "value": reply.payload,
        }
        for number, reply in enumerate(message.quick_replies)
    ]
    for start in range(0, len(buttons), BUTTONS_PER_ACTIONS_BLOCK):
        blocks.append(
            {
                "type": "actions",
                "block_id": f"quick_replies_{start // BUTTONS_PER_ACTIONS_BLOCK}",
                "elements": buttons[start : start + BUTTONS_PER_ACTIONS_BLOCK],
            }
        )
    if len(blocks) > MAX_BLOCKS:
        raise InvalidMessage(f"text and quick replies need {len(blocks)} blocks; max {MAX_BLOCKS}")
    return blocks


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _outcome_of_api_error(exc: SlackApiError, secrets: Iterable[str]) -> Outcome:
    response = exc.response
    status = response.status_code
    data = response.data if isinstance(response.data, dict) else {}
    error = str(data.get("error") or f"http_{status}")
    details = data.get("response_metadata", {}).get("messages") or []
    reason = redact("; ".join([f"Slack answered {status}: {error}", *map(str, details)]), secrets)
    if status == 429 or error == "ratelimited":
        return Retry(reason, parse_retry_after(response.headers.get("Retry-After")))
    if status >= 500 or error in TRANSIENT_ERRORS:
        return Retry(reason)
    return Permanent(error, reason)
