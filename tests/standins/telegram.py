"""A stand-in for the Telegram Bot API: ``POST /bot<token>/<method>`` as Telegram answers it.

``sendMessage`` checks what Telegram checks that matters here (a known token, a chat,
non-empty text, callback data of 1-64 bytes, chats that blocked the bot) and answers
``{"ok": true, "result": Message}``; errors are ``{"ok": false, "error_code",
"description"[, "parameters"]}`` with the same HTTP status, as Telegram sends them.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.standins.base import Failure, Standin

#: Fields the Bot API takes as JSON-serialized objects when a request is form-encoded.
_JSON_FIELDS = ("reply_markup", "reply_parameters", "entities", "link_preview_options")
_DEFAULT_DESCRIPTIONS = {
    400: "Bad Request: chat not found",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    500: "Internal Server Error",
    502: "Bad Gateway",
}


@dataclass
class TelegramStandin(Standin):
    """Known bot tokens in ``tokens``; chats in ``blocked_chats`` have blocked the bot."""

    blocked_chats: set[str] = field(default_factory=set)
    _message_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1001))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        token, method = request.match_info["token"], request.match_info["method"]
        body = await _parse(request)
        self.record(request, body, token)
        failure = await self.scripted()
        if failure is not None:
            return _failure(failure)
        if token not in self.tokens:
            return _error(401, "Unauthorized")
        if method != "sendMessage":
            return _error(404, "Not Found: method not found")
        return self._send_message(token, body)

    def _send_message(self, token: str, body: dict[str, Any]) -> web.Response:
        chat_id, text = str(body.get("chat_id", "")), body.get("text")
        if not chat_id:
            return _error(400, "Bad Request: chat_id is empty")
        if not text:
            return _error(400, "Bad Request: message text is empty")
        if chat_id in self.blocked_chats:
            return _error(403, "Forbidden: bot was blocked by the user")
        markup = body.get("reply_markup")
        for row in (markup or {}).get("inline_keyboard", []):
            for button in row:
                data = button.get("callback_data")
                if data is not None and not 1 <= len(data.encode()) <= 64:
                    return _error(400, "Bad Request: BUTTON_DATA_INVALID")
        numeric = chat_id.lstrip("-").isdigit()
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "from": {
                "id": int(token.partition(":")[0]) if token.partition(":")[0].isdigit() else 1,
                "is_bot": True,
                "first_name": "Stand-in",
                "username": "standin_bot",
            },
            "chat": {
                "id": int(chat_id) if numeric else -100999,
                "type": "supergroup" if chat_id.startswith("-") or not numeric else "private",
            },
            "date": int(time.time()),
            "text": text,
        }
        if markup:
            message["reply_markup"] = markup
        if body.get("message_thread_id"):
            message["message_thread_id"] = int(body["message_thread_id"])
            message["is_topic_message"] = True
        return web.json_response({"ok": True, "result": message}, dumps=_dumps)


async def _parse(request: web.Request) -> dict[str, Any]:
    """The call's parameters, whether sent as JSON, form or multipart (as PTB does)."""
    if request.content_type == "application/json":
        data = await request.json(loads=orjson.loads)
        return data if isinstance(data, dict) else {}
    form = await request.post()
    body: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
    for name in _JSON_FIELDS:
        if name in body:
            body[name] = orjson.loads(body[name])
    return body


def _failure(failure: Failure) -> web.Response:
    description = failure.description or _DEFAULT_DESCRIPTIONS.get(failure.status, "Error")
    parameters = None
    headers = {}
    if failure.retry_after is not None:
        parameters = {"retry_after": int(failure.retry_after)}
        headers["Retry-After"] = str(int(failure.retry_after))
        if failure.description is None:
            description = f"Too Many Requests: retry after {int(failure.retry_after)}"
    return _error(failure.status, description, parameters, headers)


def _error(
    status: int,
    description: str,
    parameters: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
