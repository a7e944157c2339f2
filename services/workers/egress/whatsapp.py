"""Replies through the WhatsApp Cloud API (Graph ``/{version}/{phone_number_id}/messages``).

The recipient is the event's ``recipient_id`` (the user's ``wa_id``, also the
conversation key) and ``reply_to`` a wamid, sent as ``context.message_id``. Quick
replies are rendered natively: 1-3 become reply buttons, 4-10 an interactive list
(WhatsApp allows no more rows). Titles longer than WhatsApp allows are shortened with
an ellipsis, since they are only labels; a payload (the button or row id that comes back)
is never altered, so one that is too long, or more than ten options, fails the message as
``invalid_message``. The platform id of a sent message is its wamid.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import aiohttp
import orjson

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

MAX_BUTTONS = 3
BUTTON_TITLE_MAX = 20
BUTTON_ID_MAX = 256
MAX_ROWS = 10
ROW_TITLE_MAX = 24
ROW_ID_MAX = 200
INTERACTIVE_BODY_MAX = 1024
TEXT_BODY_MAX = 4096
#: The list's opening button; an integration may set ``list_button`` in its settings.
DEFAULT_LIST_BUTTON = "Options"
#: Graph error codes that clear by themselves: throughput (130429), pair rate (131056),
#: app/account call limits (4, 80007), service trouble (1, 2, 131000, 131016, 133004),
#: throughput upgrade in progress (131057).
TRANSIENT_CODES = frozenset({1, 2, 4, 80007, 130429, 131000, 131016, 131056, 131057, 133004})


class InvalidMessage(ValueError):
    """The outbound event cannot be expressed as a WhatsApp message."""


async def send(
    message: MessageOutbound,
    integration: Integration,
    *,
    session: aiohttp.ClientSession,
    api_base: str,
    api_version: str,
) -> Outcome:
    """Send one reply; every failure is returned as an outcome, never raised."""
    secrets = integration.credentials.values()
    try:
        body = build_body(message, list_button=integration.settings.get("list_button"))
    except InvalidMessage as exc:
        return Permanent("invalid_message", str(exc))
    phone_number_id = integration.credentials["phone_number_id"]
    url = f"{api_base.rstrip('/')}/{api_version}/{phone_number_id}/messages"
    headers = {
        "Authorization": f"Bearer {integration.credentials['access_token']}",
        "Content-Type": "application/json",
    }
    try:
        async with session.post(url, data=orjson.dumps(body), headers=headers) as response:
            raw = await response.read()
            status, retry_after = response.status, response.headers.get("Retry-After")
    except TimeoutError:
        return Retry("timed out waiting for WhatsApp")
    except aiohttp.ClientError as exc:
        return Retry(redact(f"{type(exc).__name__}: {exc}", secrets).rstrip(": "))
    return _outcome_of(status, raw, parse_retry_after(retry_after), secrets)


def build_body(message: MessageOutbound, *, list_button: str | None = None) -> dict[str, Any]:
    """The Cloud API request body for an outbound event."""
    if not message.text:
        raise InvalidMessage("a WhatsApp reply needs text (attachments are not sent yet)")
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": message.recipient_id,
    }
    if message.reply_to:
        body["context"] = {"message_id": message.reply_to}
    replies = message.quick_replies
    if not replies:
        if len(message.text) > TEXT_BODY_MAX:
            raise InvalidMessage(f"text is {len(message.text)} characters; max {TEXT_BODY_MAX}")
        return {**body, "type": "text", "text": {"body": message.text}}
    if len(message.text) > INTERACTIVE_BODY_MAX:
        raise InvalidMessage(
            f"text with quick replies is {len(message.text)} characters; max {INTERACTIVE_BODY_MAX}"
        )
    if len(replies) <= MAX_BUTTONS:
        _check_ids([r.payload for r in replies], BUTTON_ID_MAX)
        action: dict[str, Any] = {
            "buttons": [
                {
                    "type": "reply",
                    "reply": {"id": r.payload, "title": _cut(r.title, BUTTON_TITLE_MAX)},
                }
                for r in replies
            ]
        }
        kind = "button"
    elif len(replies) <= MAX_ROWS:
        _check_ids([r.payload for r in replies], ROW_ID_MAX)
        action = {
            "button": _cut(list_button or DEFAULT_LIST_BUTTON, BUTTON_TITLE_MAX),
            "sections": [
                {
                    "rows": [
                        {"id": r.payload, "title": _cut(r.title, ROW_TITLE_MAX)} for r in replies
                    ]
                }
            ],
        }
        kind = "list"
    else:
        raise InvalidMessage(f"{len(replies)} quick replies; WhatsApp lists hold {MAX_ROWS}")
    interactive = {"type": kind, "body": {"text": message.text}, "action": action}
    return {**body, "type": "interactive", "interactive": interactive}


def _check_ids(payloads: list[str], limit: int) -> None:
    for number, payload in enumerate(payloads, start=1):
        if len(payload) > limit:
            raise InvalidMessage(
                f"quick reply {number}'s payload is {len(payload)} characters; max {limit}"
            )
    if len(set(payloads)) != len(payloads):
        raise InvalidMessage("quick reply payloads must be unique on WhatsApp")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _outcome_of(
    status: int, raw: bytes, retry_after: float | None, secrets: Iterable[str]
) -> Outcome:
    try:
        data = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    if 200 <= status < 300:
        messages = data.get("messages") or []
        if messages and isinstance(messages[0], dict) and messages[0].get("id"):
            return Delivered(str(messages[0]["id"]))
        return Retry(f"WhatsApp answered {status} without a message id")
    error = data.get("error") if isinstance(data.get("error"), dict) else {}
    code = error.get("code")
    details = (error.get("error_data") or {}).get("details")
    text = "; ".join(str(p) for p in (error.get("message"), details) if p) or "no error body"
    reason = redact(f"WhatsApp answered {status} (code {code}): {text}", secrets)
    if status == 429 or status >= 500 or code in TRANSIENT_CODES:
        return Retry(reason, retry_after)
    return Permanent(str(code) if code is not None else f"http_{status}", reason)
