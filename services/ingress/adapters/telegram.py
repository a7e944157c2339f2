"""telegram adapter (being written)."""

from __future__ import annotations

from aiohttp import web

from shared.settings import Settings


def register(app: web.Application, settings: Settings) -> None:
    """Mount this channel's routes."""
