"""What every platform stand-in shares: a request log, scripted failures, a lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy


@dataclass(frozen=True)
class Recorded:
    """One request a stand-in received; ``credential`` is the token it presented."""

    method: str
    path: str
    headers: dict[str, str]  # without Authorization: see ``credential``
    body: dict[str, Any]
    credential: str | None


@dataclass(frozen=True)
class Failure:
    """A scripted failure: the HTTP status and what the platform would say with it."""

    status: int
    retry_after: float | None = None
    error: str | int | None = None
    description: str | None = None


@dataclass
class Standin:
    """An aiohttp app imitating one platform API; subclasses add the routes."""

    tokens: set[str] = field(default_factory=set)
    requests: list[Recorded] = field(default_factory=list)
    _script: deque[Failure | float] = field(default_factory=deque)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _server: TestServer | None = None

    def fail_next(
        self,
        status: int,
        *,
        retry_after: float | None = None,
        error: str | int | None = None,
        description: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` API calls with this failure instead of handling them."""
        for _ in range(times):
            self._script.append(Failure(status, retry_after, error, description))

    def stall_next(self, seconds: float) -> None:
        """Hold the next API call this long (or until the stand-in stops) before answering."""
        self._script.append(seconds)

    def release_stalls(self) -> None:
        """Let every stalled call (and any stall still scripted) answer now."""
        self._release.set()

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:PORT`` (no trailing slash)."""
        assert self._server is not None, "stand-in is not running"
        return str(self._server.make_url("")).rstrip("/")

    def app(self) -> web.Application:
        raise NotImplementedError

    async def scripted(self) -> Failure | None:
        """This call's scripted step: a failure to answer with, or None to handle it
        normally (after the stall, when the step is one)."""
        if not self._script:
            return None
        step = self._script.popleft()
        if isinstance(step, Failure):
            return step
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._release.wait(), step)
        return None

    def record(self, request: web.Request, body: dict[str, Any], credential: str | None) -> None:
        headers = _without_auth(request.headers)
        self.requests.append(Recorded(request.method, request.path, headers, body, credential))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        """Serve on 127.0.0.1 (an ephemeral port) until the block ends."""
        self._release = asyncio.Event()
        self._server = TestServer(self.app(), host="127.0.0.1")
        await self._server.start_server()
        try:
            yield self
        finally:
            self._release.set()
            await self._server.close()
            self._server = None


def bearer(request: web.Request) -> str | None:
    """The bearer token of a request, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _without_auth(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() != "authorization"}
