"""The web chat widget: our own HTTP + WebSocket API, and the page that uses it.

Routes under ``/widget/{integration_id}/``: the page (``GET``), ``POST messages`` (one
``message.inbound`` per call, idempotent on ``client_message_id``) with its CORS
preflight, and ``ws`` where replies are pushed (see :mod:`services.ingress.widget_sockets`).
Browsers are held to the integration's ``allowed_origins`` (or the page we serve);
each visitor is rate limited.
"""

from __future__ import annotations

import math
import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
from aiohttp import WSMsgType, web
from pydantic import AwareDatetime, BaseModel, ConfigDict, StringConstraints, ValidationError

from services.ingress.pipeline import AdapterResult, Rejected, WebhookRequest, now_utc
from services.ingress.webhooks import INGRESS, POOL, guarded, read_body
from services.ingress.widget_sockets import (
    MAX_SOCKETS_PER_SESSION,
    SOCKETS,
    SocketRegistry,
    push,
    reply_frame,
)
from shared.events import Channel, MessageInbound, derive_event_id
from shared.integrations import Integration, split_origins
from shared.ratelimit import RateLimiter
from shared.settings import Settings

__all__ = ["WidgetAdapter", "WidgetMessage", "check_origin", "push", "register"]

#: Widget bodies are a few kilobytes; refuse more before parsing.
MAX_BODY_BYTES = 32 * 1024
MAX_TEXT_CHARS = 4096
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"

WidgetId = Annotated[
    str, StringConstraints(strict=True, min_length=1, max_length=128, pattern=ID_PATTERN)
]
WidgetText = Annotated[
    str,
    StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=MAX_TEXT_CHARS),
]
_ID_RULE = "1 to 128 letters, digits or '_', '-', '.', ':'"
_ID_ERRORS = {"string_pattern_mismatch", "string_too_short", "string_too_long"}


class WidgetMessage(BaseModel):
    """What the widget POSTs for one typed message."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    session_id: WidgetId
    visitor_id: WidgetId
    text: WidgetText
    client_message_id: WidgetId | None = None
    # When the visitor first sent it; a resend carries the same time, so the stored row
    # (keyed by the platform timestamp) is the same however late the resend comes.
    sent_at: AwareDatetime | None = None


#: A client clock is trusted only this far from ours.
CLIENT_CLOCK_PAST = timedelta(minutes=10)
CLIENT_CLOCK_FUTURE = timedelta(minutes=1)


def message_time(claimed: datetime | None, received_at: datetime) -> datetime:
    """The client's send time when plausible, else the time we received it."""
    if claimed is None:
        return received_at
    if received_at - CLIENT_CLOCK_PAST <= claimed <= received_at + CLIENT_CLOCK_FUTURE:
        return claimed.astimezone(UTC)
    return received_at


def describe(exc: ValidationError) -> str:
    """A client-readable account of what is wrong, naming fields and never echoing values."""
    problems = []
    for err in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "body"
        if err["type"] == "missing":
            problems.append(f"{field} is required")
        elif field != "text" and err["type"] in _ID_ERRORS:
            problems.append(f"{field} must be {_ID_RULE}")
        elif field == "text" and err["type"] == "string_too_short":
            problems.append("text must not be empty")
        else:
            problems.append(f"{field}: {err['msg']}")
    return "; ".join(problems)


def allowed_origins(integration: Integration) -> list[str]:
    return [o.lower() for o in split_origins(integration.credentials.get("allowed_origins", ""))]


def check_origin(integration: Integration, origin: str | None, *, own_origin: str) -> bool:
    """Whether a browser request may proceed; True when CORS headers must be added.

    No Origin (a server) and our own page's origin need no CORS headers; an origin in
    ``allowed_origins`` gets them; any other origin is refused with 403.
    """
    if origin is None:
        return False
    normalized = origin.strip().rstrip("/").lower()
    if normalized in allowed_origins(integration):
        return True
    if normalized == own_origin.lower():
        return False
    raise Rejected(403, "origin_not_allowed", "this origin may not use this widget")


class WidgetAdapter:
    """Turns a widget POST into one ``message.inbound``; pure, no aiohttp.

    The widget is our own unsigned, public API: instead of a signature, browsers are
    held to the integration's origins by :func:`check_origin` before the body is read.
    """

    channel: Channel = "widget"

    def parse(self, request: WebhookRequest) -> AdapterResult:
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise Rejected(400, "malformed", "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise Rejected(400, "malformed", "body must be a JSON object")
        try:
            message = WidgetMessage.model_validate(body)
        except ValidationError as exc:
            raise Rejected(400, "malformed", describe(exc)) from None
        if "\x00" in message.text:
            raise Rejected(400, "malformed", "text must not contain NUL characters")
        integration = request.integration
        external_id = message.client_message_id or str(uuid.uuid4())
        event = MessageInbound(
            event_id=derive_event_id(self.channel, integration.id, message.session_id, external_id),
            tenant_id=integration.tenant_id,
            integration_id=integration.id,
            channel=self.channel,
            conversation_key=message.session_id,
            external_id=external_id,
            sender_id=message.visitor_id,
            text=message.text,
            message_type="text",
            sent_at=message_time(message.sent_at, request.received_at),
            raw=body,
        )
        return AdapterResult(
            events=(event,),
            response={"ok": True, "message_id": external_id, "event_id": str(event.event_id)},
        )


PAGE_FILE = Path(__file__).with_name("widget_page.html")
HISTORY_LIMIT = 50
_HISTORY_SQL = f"""
SELECT external_id, text, payload -> 'quick_replies' AS quick_replies, sent_at
FROM channel_messages
WHERE tenant_id = $1 AND integration_id = $2 AND conversation_key = $3
  AND direction = 'outbound' AND sent_at > $4
ORDER BY sent_at
LIMIT {HISTORY_LIMIT}
"""
PREFLIGHT_MAX_AGE_S = 600
WS_HEARTBEAT_S = 25.0
_CSP_SOURCE = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")

VisitorKey = tuple[uuid.UUID, str]
LIMITER: web.AppKey[RateLimiter[VisitorKey]] = web.AppKey("widget_limiter", RateLimiter)


def own_origin(request: web.Request) -> str:
    """The origin our own page has: scheme (as the client saw it behind a proxy) + host."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    scheme = forwarded if forwarded in ("http", "https") else request.scheme
    return f"{scheme}://{request.host}"


def cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": "Retry-After",
        "Vary": "Origin",
    }


class _Outcome:
    """What a route's work learned that its final answer needs, even a refusal."""

    cors_origin: str | None = None
    retry_after_s: int | None = None

    def finish(self, response: web.StreamResponse) -> web.StreamResponse:
        if self.cors_origin and not response.prepared:
            response.headers.update(cors_headers(self.cors_origin))
        if self.retry_after_s is not None and response.status == 429:
            response.headers["Retry-After"] = str(self.retry_after_s)
        return response


def register(app: web.Application, settings: Settings) -> None:
    """Mount the widget's page, message, preflight and WebSocket routes."""
    adapter = WidgetAdapter()
    registry = SocketRegistry()
    app[SOCKETS] = registry
    app[LIMITER] = RateLimiter(
        rate_per_s=settings.widget_rate_limit_per_minute / 60,
        burst=settings.widget_rate_limit_burst,
    )
    page = PAGE_FILE.read_text(encoding="utf-8")

    async def close_sockets(app: web.Application) -> None:
        await registry.close_all()

    app.on_shutdown.append(close_sockets)

    async def lookup(request: web.Request, resolved: list[Integration | None]) -> Integration:
        integration = await request.app[INGRESS].lookup(
            request.match_info["integration_id"], adapter.channel
        )
        resolved[0] = integration
        return integration

    def browser_check(request: web.Request, integration: Integration, outcome: _Outcome) -> None:
        origin = request.headers.get("Origin")
        if check_origin(integration, origin, own_origin=own_origin(request)):
            outcome.cors_origin = origin

    async def post_message(request: web.Request) -> web.StreamResponse:
        ingress = request.app[INGRESS]
        outcome = _Outcome()

        async def work(resolved: list[Integration | None]) -> web.StreamResponse:
            integration = await lookup(request, resolved)
            browser_check(request, integration, outcome)
            body = await read_body(request, min(ingress.max_body_bytes, MAX_BODY_BYTES))
            webhook = WebhookRequest(
                integration=integration,
                method=request.method,
                headers=request.headers,
                query=request.query,
                body=body,
                received_at=now_utc(),
                remote=request.remote,
            )
            result = adapter.parse(webhook)
            event: MessageInbound = result.events[0]  # type: ignore[assignment]
            wait_s = request.app[LIMITER].acquire((integration.id, event.sender_id))
            if wait_s > 0:
                outcome.retry_after_s = max(1, math.ceil(wait_s))
                raise Rejected(429, "rate_limited", "too many messages, slow down")
            await ingress.publish(adapter.channel, result.events)
            registry.send_soon(
                integration.id,
                event.conversation_key,
                {"type": "ack", "message_id": event.external_id},
            )
            return web.json_response(result.response, status=202)

        return outcome.finish(await guarded(request, adapter.channel, work))

    async def history(request: web.Request) -> web.StreamResponse:
        """Replies stored after ``after`` (ISO time), for a page that was not connected."""
        outcome = _Outcome()

        async def work(resolved: list[Integration | None]) -> web.StreamResponse:
            integration = await lookup(request, resolved)
            browser_check(request, integration, outcome)
            session_id = request.query.get("session_id", "")
            if not re.fullmatch(ID_PATTERN, session_id):
                raise Rejected(400, "malformed", f"session_id must be {_ID_RULE}")
            try:
                after = datetime.fromisoformat(request.query.get("after", ""))
            except ValueError:
                raise Rejected(400, "malformed", "after must be an ISO 8601 time") from None
            if after.tzinfo is None:
                raise Rejected(400, "malformed", "after must carry a time zone")
            rows = await request.app[POOL].fetch(
                _HISTORY_SQL, integration.tenant_id, integration.id, session_id, after
            )
            messages = [
                reply_frame(
                    r["external_id"], r["text"], r["quick_replies"] or [], r["sent_at"].isoformat()
                )
                for r in rows
            ]
            return web.json_response({"messages": messages})

        return outcome.finish(await guarded(request, adapter.channel, work))

    async def preflight(request: web.Request) -> web.StreamResponse:
        outcome = _Outcome()

        async def work(resolved: list[Integration | None]) -> web.StreamResponse:
            integration = await lookup(request, resolved)
            browser_check(request, integration, outcome)
            headers = {
                "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": "Content-Type",
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
            }
            return web.Response(status=204, headers=headers)

        return outcome.finish(await guarded(request, adapter.channel, work))

    async def websocket(request: web.Request) -> web.StreamResponse:
        session: dict[str, Any] = {}

        async def work(resolved: list[Integration | None]) -> web.StreamResponse:
            integration = await lookup(request, resolved)
            browser_check(request, integration, _Outcome())
            session_id = request.query.get("session_id", "")
            if not re.fullmatch(ID_PATTERN, session_id):
                raise Rejected(400, "malformed", f"session_id must be {_ID_RULE}")
            if registry.count(integration.id, session_id) >= MAX_SOCKETS_PER_SESSION:
                raise Rejected(429, "too_many_sockets", "too many open sockets for this session")
            ws = web.WebSocketResponse(heartbeat=WS_HEARTBEAT_S, max_msg_size=4096)
            if not ws.can_prepare(request).ok:
                raise Rejected(400, "malformed", "expected a WebSocket upgrade")
            await ws.prepare(request)
            registry.add(integration.id, session_id, ws)
            session.update(integration_id=integration.id, session_id=session_id)
            return ws

        response = await guarded(request, adapter.channel, work)
        if not session or not isinstance(response, web.WebSocketResponse):
            return response
        try:
            await response.send_json({"type": "hello", "session_id": session["session_id"]})
            async for message in response:  # replies go out by push(); we only listen
                if message.type == WSMsgType.ERROR:
                    break
        except ConnectionError:
            pass
        finally:
            registry.discard(session["integration_id"], session["session_id"], response)
        return response

    async def chat_page(request: web.Request) -> web.StreamResponse:
        async def work(resolved: list[Integration | None]) -> web.StreamResponse:
            integration = await lookup(request, resolved)
            nonce = secrets.token_urlsafe(16)
            ancestors = " ".join(o for o in allowed_origins(integration) if _CSP_SOURCE.match(o))
            csp = (
                f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                f"frame-ancestors 'self' {ancestors}".rstrip()
            )
            return web.Response(
                text=page.replace("__NONCE__", nonce),
                content_type="text/html",
                headers={
                    "Content-Security-Policy": csp,
                    "Cache-Control": "no-store",
                    "Referrer-Policy": "no-referrer",
                    "X-Content-Type-Options": "nosniff",
                },
            )

        return await guarded(request, adapter.channel, work)

    async def to_page(request: web.Request) -> web.StreamResponse:
        try:
            integration_id = uuid.UUID(request.match_info["integration_id"])
        except ValueError:
            raise web.HTTPNotFound() from None
        # Relative, so it holds behind a proxy that mounts us under another path.
        raise web.HTTPPermanentRedirect(f"{integration_id}/")

    base = "/widget/{integration_id}"
    app.router.add_get(base, to_page)
    app.router.add_get(base + "/", chat_page)
    app.router.add_post(base + "/messages", post_message)
    app.router.add_get(base + "/messages", history)
    app.router.add_route("OPTIONS", base + "/messages", preflight)
    app.router.add_get(base + "/ws", websocket)
