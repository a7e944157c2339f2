"""The aiohttp side of webhook routes: turn a request into a WebhookRequest and answer it."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web

from services.ingress import metrics
from services.ingress.pipeline import (
    BrokerUnavailable,
    ChannelAdapter,
    Ingress,
    Rejected,
    WebhookRequest,
    now_utc,
)
from shared.errors import RetriableError
from shared.integrations import Integration

log = logging.getLogger(__name__)

INGRESS: web.AppKey[Ingress] = web.AppKey("ingress", Ingress)
POOL: web.AppKey[asyncpg.Pool] = web.AppKey("pool", asyncpg.Pool)
RETRY_AFTER_S = 5

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, refusing anything over ``limit`` bytes before reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise Rejected(413, "too_large", f"body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise Rejected(413, "too_large", f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def error_response(status: int, message: str, reason: str) -> web.Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else None
    return web.json_response(
        {"ok": False, "error": reason, "message": message}, status=status, headers=headers
    )


async def guarded(
    request: web.Request,
    channel: str,
    work: Callable[[list[Integration | None]], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Run one request with metrics, and turn failures into the right status code.

    ``work`` records the integration it resolved in the list it is given, so a
    rejection's audit event can name the tenant.
    """
    ingress = request.app[INGRESS]
    resolved: list[Integration | None] = [None]
    metrics.IN_FLIGHT.inc()
    try:
        response = await work(resolved)
        metrics.REQUESTS.labels(channel, "accepted").inc()
        return response
    except Rejected as rejection:
        metrics.REQUESTS.labels(channel, "rejected").inc()
        metrics.REJECTIONS.labels(channel, rejection.reason).inc()
        ingress.audit_rejection(
            channel,
            rejection,
            integration=resolved[0],
            integration_id=request.match_info.get("integration_id"),
            remote=request.remote,
        )
        return error_response(rejection.status, str(rejection), rejection.reason)
    except (BrokerUnavailable, RetriableError) as exc:
        metrics.REQUESTS.labels(channel, "unavailable").inc()
        log.warning("%s request answered 503: %s", channel, exc)
        return error_response(503, "temporarily unavailable, retry later", "unavailable")
    finally:
        metrics.IN_FLIGHT.dec()


def webhook_handler(adapter: ChannelAdapter) -> Handler:
    """POST handler for a platform webhook: lookup → size → verify → parse → publish → 200."""

    async def handle(request: web.Request) -> web.StreamResponse:
        ingress = request.app[INGRESS]

        async def work(resolved: list[Integration | None]) -> web.StreamResponse:
            integration = await ingress.lookup(
                request.match_info["integration_id"], adapter.channel
            )
            resolved[0] = integration
            body = await read_body(request, ingress.max_body_bytes)
            webhook = WebhookRequest(
                integration=integration,
                method=request.method,
                headers=request.headers,
                query=request.query,
                body=body,
                received_at=now_utc(),
                remote=request.remote,
            )
            adapter.verify(webhook, now=time.time())
            result = adapter.parse(webhook)
            for kind in result.ignored:
                metrics.IGNORED.labels(adapter.channel, kind).inc()
            await ingress.publish(adapter.channel, result.events)
            if isinstance(result.response, str):
                return web.Response(text=result.response)
            return web.json_response(
                result.response if result.response is not None else {"ok": True}
            )

        return await guarded(request, adapter.channel, work)

    return handle
