"""A stand-in for an OpenAI-compatible LLM server: ``POST /v1/chat/completions``.

Answers ``{"id", "object": "chat.completion", "model", "choices": [{"index": 0,
"message": {"role": "assistant", "content": ...}, "finish_reason": "stop"}], "usage"}``
with ``answer`` as the content (by default it echoes the last user message). When
``tokens`` is set, a request without one of them as bearer token gets 401 as OpenAI
answers it. Besides the shared ``fail_next``/``stall_next``, ``garbage_next()`` answers
the next call with 200 and a body that is not a completion, ``answer_next(text)`` with
one particular content.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.standins.base import Failure, Standin, bearer


@dataclass
class LLMStandin(Standin):
    """Accepts any bearer token when ``tokens`` is empty."""

    answer: str | None = None
    _next: deque[str | bytes] = field(default_factory=deque)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def answer_next(self, text: str) -> None:
        """Answer the next call with this content (may be empty)."""
        self._next.append(text)

    def garbage_next(self, body: bytes = b"<html>Service warming up</html>") -> None:
        """Answer the next call with HTTP 200 and this body instead of a completion."""
        self._next.append(body)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        token = bearer(request)
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self.record(request, body if isinstance(body, dict) else {}, token)
        failure = await self.scripted()
        if failure is not None:
            return _error(failure.status, failure)
        if self.tokens and token not in self.tokens:
            return _error(401, Failure(401, error="invalid_api_key"))
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, Failure(400, description="'messages' is a required property"))
        scripted = self._next.popleft() if self._next else None
        if isinstance(scripted, bytes):
            return web.Response(body=scripted, content_type="text/html")
        content = scripted if scripted is not None else self._default(body["messages"])
        return web.json_response(self._completion(body, content), dumps=_dumps)

    def _default(self, messages: list[Any]) -> str:
        if self.answer is not None:
            return self.answer
        said = [m.get("content", "") for m in messages if m.get("role") == "user"]
        return f"You said: {said[-1] if said else ''}"

    def _completion(self, body: dict[str, Any], content: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-standin-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "standin"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }


def _error(status: int, failure: Failure) -> web.Response:
    error = {
        "message": failure.description or f"stand-in error {status}",
        "type": "invalid_request_error" if status < 500 else "server_error",
        "code": failure.error,
    }
    headers = {"Retry-After": str(int(failure.retry_after))} if failure.retry_after else None
    return web.json_response({"error": error}, status=status, headers=headers, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
