"""A stand-in for the Slack Web API: ``POST /api/<method>`` as Slack answers it.

Slack answers most errors with HTTP 200 and ``{"ok": false, "error": ...}``; a rate
limit is HTTP 429 with ``Retry-After`` and ``"error": "ratelimited"``; server trouble is a
5xx with an HTML page. ``chat.postMessage`` checks the bearer token, the channel (when
``channels`` is set), that there is text or blocks, and Block Kit's limits on sections,
actions and buttons, answering ``{"ok": true, "channel", "ts", "message"}``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from tests.standins.base import Failure, Standin, bearer

BOT_USER = "U0STANDIN"
BOT_ID = "B0STANDIN"


@dataclass
class SlackStandin(Standin):
    """Bot tokens in ``tokens``; when ``channels`` is set, other channels are not found."""

    channels: set[str] | None = None
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/{method}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        token = bearer(request)
        raw = await request.read()
        if request.content_type == "application/json":
            body = orjson.loads(raw) if raw else {}
        else:
            body = dict(parse_qsl(raw.decode()))
        self.record(request, body, token)
        failure = await self.scripted()
        if failure is not None:
            return _failure(failure)
        if token is None:
            return _error("not_authed")
        if token not in self.tokens:
            return _error("invalid_auth")
        if request.match_info["method"] != "chat.postMessage":
            return _error("unknown_method")
        return self._post_message(body)

    def _post_message(self, body: dict[str, Any]) -> web.Response:
        channel = body.get("channel")
        if not channel or (self.channels is not None and channel not in self.channels):
            return _error("channel_not_found")
        blocks = body.get("blocks")
        if isinstance(blocks, str):
            blocks = orjson.loads(blocks)
        if not body.get("text") and not blocks:
            return _error("no_text")
        if blocks and (problem := _check_blocks(blocks)):
            return _error("invalid_blocks", messages=[f"[ERROR] {problem}"])
        ts = f"1767225600.{next(self._ts):06d}"
        message: dict[str, Any] = {
            "type": "message",
            "user": BOT_USER,
            "bot_id": BOT_ID,
            "text": body.get("text", ""),
            "ts": ts,
        }
        if blocks:
            message["blocks"] = blocks
        if body.get("thread_ts"):
            message["thread_ts"] = body["thread_ts"]
        return web.json_response(
            {"ok": True, "channel": channel, "ts": ts, "message": message}, dumps=_dumps
        )


def _check_blocks(blocks: list[dict[str, Any]]) -> str | None:
    """Block Kit's limits that a chat.postMessage with buttons can break."""
    if len(blocks) > 50:
        return "no more than 50 items allowed [json-pointer:/blocks]"
    action_ids: set[str] = set()
    for i, block in enumerate(blocks):
        if block.get("type") == "section" and len(block["text"]["text"]) > 3000:
            return f"must be less than 3001 characters [json-pointer:/blocks/{i}/text/text]"
        if block.get("type") != "actions":
            continue
        elements = block.get("elements", [])
        if not 1 <= len(elements) <= 25:
            return f"must have 1 to 25 elements [json-pointer:/blocks/{i}/elements]"
        for j, button in enumerate(elements):
            where = f"/blocks/{i}/elements/{j}"
            if len(button["text"]["text"]) > 75:
                return f"must be less than 76 characters [json-pointer:{where}/text/text]"
            if len(button.get("value", "")) > 2000:
                return f"must be less than 2001 characters [json-pointer:{where}/value]"
            if button.get("action_id") in action_ids:
                return f"action_id already exists [json-pointer:{where}/action_id]"
            action_ids.add(button.get("action_id"))
    return None


def _failure(failure: Failure) -> web.Response:
    if failure.status == 429:
        headers = {"Retry-After": str(int(failure.retry_after or 1))}
        return _error("ratelimited", status=429, headers=headers)
    if failure.status >= 500:
        page = f"<html><body><h1>{failure.status} Server Error</h1></body></html>"
        return web.Response(status=failure.status, text=page, content_type="text/html")
    return _error(str(failure.error or "invalid_request"), status=failure.status)


def _error(
    error: str,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    messages: list[str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error": error}
    if messages:
        body["response_metadata"] = {"messages": messages}
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
