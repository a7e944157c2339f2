"""The operational HTTP surface every long-running process exposes: health, readiness, metrics."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    generate_latest,
)

ReadinessCheck = Callable[[], Awaitable[None]]
_CHECKS: web.AppKey[dict[str, ReadinessCheck]] = web.AppKey("readiness_checks", dict)
MetricsRefresh = Callable[[], Awaitable[None]]
_REFRESH: web.AppKey[list[MetricsRefresh]] = web.AppKey("metrics_refresh", list)


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    failures: dict[str, str] = {}
    for name, check in request.app[_CHECKS].items():
        try:
            await check()
        except Exception as exc:  # a readiness probe reports, it never raises
            failures[name] = type(exc).__name__
    if failures:
        return web.json_response({"status": "unavailable", "failing": failures}, status=503)
    return web.json_response({"status": "ready"})


async def _metrics(request: web.Request) -> web.Response:
    for refresh in request.app.get(_REFRESH, ()):
        await refresh()
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def add_ops_routes(app: web.Application) -> None:
    """Mount /healthz, /readyz and /metrics; components register checks with add_readiness."""
    app[_CHECKS] = {}
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)


def add_metrics_refresh(app: web.Application, refresh: MetricsRefresh) -> None:
    """Run ``refresh`` before each scrape (for values read from elsewhere, e.g. the broker)."""
    app.setdefault(_REFRESH, []).append(refresh)


def add_readiness(app: web.Application, name: str, check: ReadinessCheck) -> None:
    """Make /readyz fail while ``check`` raises."""
    app[_CHECKS][name] = check


def configure_logging(level: str) -> None:
    """One log format for every process; never log bodies, signatures or credentials."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))
