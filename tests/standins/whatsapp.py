"""A stand-in for the WhatsApp Cloud API: ``POST /<version>/<phone_number_id>/messages``.

Checks the bearer token and phone number id, and the body as the Cloud API does for
text, reply-button and list messages (counts, lengths, unique ids), answering
``{"messaging_product": "whatsapp", "contacts": [...], "messages": [{"id": "wamid..."}]}``;
errors are Graph's ``{"error": {"message", "type", "code", "error_data", "fbtrace_id"}}``.
"""

from __future__ import annotations

import base64
import itertools
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.standins.base import Failure, Standin, bearer

#: The Graph error code a scripted HTTP status stands for by default.
_DEFAULT_CODES = {400: 131026, 401: 190, 403: 10, 429: 130429, 500: 131000, 503: 131016}
#: Titles of the Cloud API error codes tests script.
_TITLES = {
    4: "Application request limit reached",
    10: "Permission denied",
    100: "Invalid parameter",
    190: "Access token has expired",
    130429: "Rate limit hit",
    131000: "Something went wrong",
    131016: "Service unavailable",
    131026: "Message undeliverable",
    131047: "Re-engagement message",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
}


@dataclass
class WhatsAppStandin(Standin):
    """Access tokens in ``tokens``, business numbers in ``phone_number_ids``."""

    phone_number_ids: set[str] = field(default_factory=set)
    version: str = "v21.0"
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{version}/{phone_number_id}/messages", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        token = bearer(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = {}
        self.record(request, body if isinstance(body, dict) else {}, token)
        failure = await self.scripted()
        if failure is not None:
            return _failure(failure)
        if token is None or token not in self.tokens:
            return _error(401, 190, "Invalid OAuth access token - Cannot parse access token")
        phone_number_id = request.match_info["phone_number_id"]
        if request.match_info["version"] != self.version or phone_number_id not in (
            self.phone_number_ids
        ):
            return _error(
                400,
                100,
                f"Unsupported post request. Object with ID '{phone_number_id}' does not exist",
                subcode=33,
            )
        if problem := _check(body):
            return _error(400, 131009, "(#131009) Parameter value is not valid", details=problem)
        wamid = "wamid." + base64.b64encode(f"standin-{next(self._ids):08d}".encode()).decode()
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                "messages": [{"id": wamid}],
            },
            dumps=_dumps,
        )


def _check(body: Any) -> str | None:
    """What the Cloud API would refuse in a text or interactive message body."""
    if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
        return "messaging_product must be 'whatsapp'"
    if not body.get("to"):
        return "to is required"
    kind = body.get("type", "text")
    if kind == "text":
        text = (body.get("text") or {}).get("body")
        return None if text and len(text) <= 4096 else "text.body must be 1-4096 characters"
    if kind != "interactive":
        return f"type {kind!r} is not imitated by the stand-in"
    interactive = body.get("interactive") or {}
    text = (interactive.get("body") or {}).get("text")
    if not text or len(text) > 1024:
        return "interactive.body.text must be 1-1024 characters"
    action = interactive.get("action") or {}
    if interactive.get("type") == "button":
        buttons = action.get("buttons") or []
        if not 1 <= len(buttons) <= 3:
            return "action.buttons must hold 1 to 3 buttons"
        replies = [b.get("reply") or {} for b in buttons]
        if any(b.get("type") != "reply" for b in buttons):
            return "button type must be 'reply'"
        return _check_options(replies, title_max=20, id_max=256)
    if interactive.get("type") == "list":
        if not 1 <= len(action.get("button") or "") <= 20:
            return "action.button must be 1-20 characters"
        rows = [r for s in action.get("sections") or [] for r in s.get("rows") or []]
        if not 1 <= len(rows) <= 10:
            return "sections must hold 1 to 10 rows in all"
        return _check_options(rows, title_max=24, id_max=200)
    return "interactive.type must be 'button' or 'list' here"


def _check_options(options: list[dict[str, Any]], *, title_max: int, id_max: int) -> str | None:
    for option in options:
        if not 1 <= len(option.get("title") or "") <= title_max:
            return f"title must be 1-{title_max} characters"
        if not 1 <= len(option.get("id") or "") <= id_max:
            return f"id must be 1-{id_max} characters"
    if len({o["id"] for o in options}) != len(options):
        return "ids must be unique"
    return None


def _failure(failure: Failure) -> web.Response:
    code = failure.error if isinstance(failure.error, int) else None
    code = code or _DEFAULT_CODES.get(failure.status, 131000)
    message = failure.description or _TITLES.get(code, "Unknown error")
    headers = {"Retry-After": str(int(failure.retry_after))} if failure.retry_after else None
    return _error(failure.status, code, f"(#{code}) {message}", headers=headers)


def _error(
    status: int,
    code: int,
    message: str,
    *,
    subcode: int | None = None,
    details: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "AStandinTraceId",
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return web.json_response({"error": error}, status=status, headers=headers, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
