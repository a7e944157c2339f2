"""The widget's open WebSockets by (integration, session), so replies can be pushed to them.

In-process only: with several ingress processes a session's sockets live in the
process that accepted them, so whoever pushes must reach that process.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import WSCloseCode, web
from prometheus_client import Gauge

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 5.0
MAX_SOCKETS_PER_SESSION = 16

OPEN_SOCKETS = Gauge(
    "switchboard_ingress_widget_sockets",
    "Widget WebSockets open right now.",
    multiprocess_mode="livesum",
)

SessionKey = tuple[str, str]


def session_key(integration_id: uuid.UUID | str, session_id: str) -> SessionKey:
    return (str(uuid.UUID(str(integration_id))), session_id)


class SocketRegistry:
    """Open sockets per widget session; several per session (tabs, reconnects) are fine."""

    def __init__(self) -> None:
        self._sockets: dict[SessionKey, set[web.WebSocketResponse]] = {}
        self._tasks: set[asyncio.Task[int]] = set()

    def count(self, integration_id: uuid.UUID | str, session_id: str) -> int:
        return len(self._sockets.get(session_key(integration_id, session_id), ()))

    def add(
        self, integration_id: uuid.UUID | str, session_id: str, ws: web.WebSocketResponse
    ) -> None:
        sockets = self._sockets.setdefault(session_key(integration_id, session_id), set())
        if ws not in sockets:
            sockets.add(ws)
            OPEN_SOCKETS.inc()

    def discard(
        self, integration_id: uuid.UUID | str, session_id: str, ws: web.WebSocketResponse
    ) -> None:
        key = session_key(integration_id, session_id)
        sockets = self._sockets.get(key)
        if sockets is None or ws not in sockets:
            return
        sockets.discard(ws)
        OPEN_SOCKETS.dec()
        if not sockets:
            del self._sockets[key]

    async def send(
        self, integration_id: uuid.UUID | str, session_id: str, payload: Mapping[str, Any]
    ) -> int:
        """Send ``payload`` as one JSON text frame to each of the session's sockets."""
        text = orjson.dumps(payload).decode()  # fails before sending anything
        sockets = list(self._sockets.get(session_key(integration_id, session_id), ()))
        if not sockets:
            return 0
        delivered = await asyncio.gather(*(_send_one(ws, text) for ws in sockets))
        return sum(delivered)

    def send_soon(
        self, integration_id: uuid.UUID | str, session_id: str, payload: Mapping[str, Any]
    ) -> None:
        """Send in the background, so a slow socket never delays an HTTP answer."""
        if not self.count(integration_id, session_id):
            return
        task = asyncio.create_task(self.send(integration_id, session_id, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close_all(self) -> None:
        """Close every socket (shutdown), so their handlers return."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=SEND_TIMEOUT_S)
        sockets = [ws for group in self._sockets.values() for ws in group]
        await asyncio.gather(
            *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for ws in sockets),
            return_exceptions=True,
        )


async def _send_one(ws: web.WebSocketResponse, text: str) -> bool:
    if ws.closed:
        return False
    try:
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await ws.send_str(text)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        log.info("widget socket send failed: %s", type(exc).__name__)
        return False
    return True


def reply_frame(
    message_id: str, text: str | None, quick_replies: list[dict[str, str]], sent_at: str
) -> dict[str, Any]:
    """What the widget page receives for one reply, pushed or fetched after a reconnect."""
    return {
        "type": "message",
        "message_id": message_id,
        "text": text,
        "quick_replies": quick_replies,
        "sent_at": sent_at,
    }


SOCKETS: web.AppKey[SocketRegistry] = web.AppKey("widget_sockets", SocketRegistry)


async def push(
    app: web.Application,
    integration_id: uuid.UUID | str,
    session_id: str,
    payload: dict[str, Any],
) -> int:
    """Deliver ``payload`` to every open socket of a widget session; how many got it."""
    registry = app.get(SOCKETS)
    if registry is None:
        return 0
    return await registry.send(integration_id, session_id, payload)
