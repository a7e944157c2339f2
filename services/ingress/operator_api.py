"""The operator HTTP API on the ingress: human handoff over HTTP, beside the CLI.

Mounted only when ``SWITCHBOARD_ADMIN_TOKEN`` is set (``up`` generates one into
``.data/admin.token``); every call needs ``Authorization: Bearer <token>``. The token is
cross-tenant, like the CLI: give it to operators' tools, never to a browser.

    GET  /admin/v1/conversations/{id}            status and flow position
    POST /admin/v1/conversations/{id}/handoff    {"reason": "..."} silence the bot
    POST /admin/v1/conversations/{id}/messages   {"text": "..."} an operator's message
    POST /admin/v1/conversations/{id}/release    give the conversation back to the bot
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.conversations import MAX_TEXT, ConversationAdmin
from shared.integrations import InvalidInput, NotFound
from shared.settings import Settings

CONVERSATIONS: web.AppKey[ConversationAdmin] = web.AppKey("conversations", ConversationAdmin)
PREFIX = "/admin/v1/conversations/{id}"


class _Handoff(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=500)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_TEXT)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def mount_operator_api(app: web.Application, settings: Settings) -> None:
    """Add the routes when an admin token is configured; without one they do not exist."""
    if settings.admin_token is None:
        return
    token = settings.admin_token.get_secret_value().encode()

    def route(
        action: Callable[[ConversationAdmin, uuid.UUID, web.Request], Awaitable[dict[str, Any]]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token):
                return _error(401, "a valid operator bearer token is required")
            try:
                conversation_id = uuid.UUID(request.match_info["id"])
            except ValueError:
                return _error(404, "no such conversation")
            try:
                return web.json_response(
                    await action(request.app[CONVERSATIONS], conversation_id, request),
                    dumps=_dumps,
                )
            except NotFound as exc:
                return _error(404, str(exc))
            except InvalidInput as exc:
                return _error(400, str(exc))

        return handle

    async def body(request: web.Request, model: type[BaseModel]) -> Any:
        raw = await request.read()
        try:
            return model.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidInput(problems) from None

    async def show(admin: ConversationAdmin, cid: uuid.UUID, _: web.Request) -> dict[str, Any]:
        return await admin.show(cid)

    async def handoff(admin: ConversationAdmin, cid: uuid.UUID, r: web.Request) -> dict[str, Any]:
        return await admin.handoff(cid, (await body(r, _Handoff)).reason)

    async def message(admin: ConversationAdmin, cid: uuid.UUID, r: web.Request) -> dict[str, Any]:
        return await admin.send(cid, (await body(r, _Message)).text)

    async def release(admin: ConversationAdmin, cid: uuid.UUID, _: web.Request) -> dict[str, Any]:
        return await admin.release(cid)

    app.router.add_get(PREFIX, route(show))
    app.router.add_post(PREFIX + "/handoff", route(handoff))
    app.router.add_post(PREFIX + "/messages", route(message))
    app.router.add_post(PREFIX + "/release", route(release))
